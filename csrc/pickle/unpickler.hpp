#pragma once
// A restricted pickle interpreter: reads the pickles torch.save and TorchScript
// archives write (protocols 2 to 5) into a Value tree and nothing else. It
// executes nothing and imports nothing: the few globals a checkpoint needs are
// recognised by name, TorchScript classes become opaque objects whose state is
// data, and every other global, opcode or construct is an error naming it.
// Every length, index and count is checked against the bytes that remain, and
// the memory the values take is bounded by the pickle's size. Torch-free.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "safetensors/source.hpp"
#include "value.hpp"

namespace safetensors::pickle {

/// Protocols accepted: torch.save writes 2 by default; 3 to 5 differ only in
/// opcodes for things a checkpoint does not hold.
inline constexpr int kMinProtocol = 2;
inline constexpr int kMaxProtocol = 5;
/// Widest integer accepted (LONG1/LONG4), in bytes: sizes and counts fit int64.
inline constexpr std::size_t kMaxIntegerBytes = 8;
/// Memory the values of one pickle may take (values, strings, container and
/// memo slots): this many bytes per byte of the pickle read so far, plus
/// kValueBytesFloor (never the bytes that follow it in the file). The pickles
/// of torch.save and TorchScript archives need 12 to 27; a stream of one-byte
/// opcodes that each make a value would need 128. Beyond: LimitExceeded.
inline constexpr std::uint64_t kValueBytesPerPickleByte = 48;
inline constexpr std::uint64_t kValueBytesFloor = 16 << 20;
/// What the allocator adds to each block it hands out (its header and
/// rounding), charged with every block that memory bounds count.
inline constexpr std::uint64_t kHeapBlockCost = 16;
/// The heap bytes a std::string of `n` characters holds: none within its
/// inline buffer, else its characters and terminator, rounded, and a block.
constexpr std::uint64_t string_heap_cost(std::uint64_t n) {
  return n < 16 ? 0 : (n + 1 + 15) / 16 * 16 + kHeapBlockCost;
}

/// Interprets one pickle starting at `data[offset]`, up to and including its
/// STOP opcode; `offset` is left just past it (the legacy format puts several
/// pickles back to back). `file` names the source in errors.
/// Throws Error(InvalidCheckpoint) for a malformed or refused pickle,
/// Error(UnsupportedDtype) for a storage type without a safetensors dtype,
/// Error(LimitExceeded) beyond the memory bound.
Pickle unpickle(std::string_view data, std::size_t& offset, const std::string& file);

/// Interprets a whole buffer that holds exactly one pickle.
Pickle unpickle(std::string_view data, const std::string& file);

/// The same from a source at `offset`: in place when it is mapped, else read
/// with positional reads in growing windows, so that only about the pickle's
/// bytes are read. Also throws what Source::read throws.
Pickle unpickle(const Source& source, std::uint64_t& offset);

}  // namespace safetensors::pickle
