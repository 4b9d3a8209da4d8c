#pragma once
// A restricted pickle interpreter: reads the pickles torch.save writes
// (protocols 2 to 5) into a Value tree and nothing else. It executes nothing and
// imports nothing: the few globals a checkpoint needs are recognised by name,
// every other global, opcode or construct is an error naming it. Every length,
// index and count is checked against the bytes that remain, so the memory used
// is bounded by the pickle's size. Torch-free.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "value.hpp"

namespace safetensors::pickle {

/// Protocols accepted: torch.save writes 2 by default; 3 to 5 differ only in
/// opcodes for things a checkpoint does not hold.
inline constexpr int kMinProtocol = 2;
inline constexpr int kMaxProtocol = 5;
/// Widest integer accepted (LONG1/LONG4), in bytes: sizes and counts fit int64.
inline constexpr std::size_t kMaxIntegerBytes = 8;

/// Interprets one pickle starting at `data[offset]`, up to and including its
/// STOP opcode; `offset` is left just past it (the legacy format puts several
/// pickles back to back). `file` names the source in errors.
/// Throws Error(InvalidCheckpoint) for a malformed or refused pickle,
/// Error(UnsupportedDtype) for a storage type without a safetensors dtype.
Pickle unpickle(std::string_view data, std::size_t& offset, const std::string& file);

/// Interprets a whole buffer that holds exactly one pickle.
Pickle unpickle(std::string_view data, const std::string& file);

}  // namespace safetensors::pickle
