#pragma once
// The zip container torch.save writes, read without trusting it: every entry's
// name, size and position is checked against the file before anything is read,
// and no two entries (nor an entry and the central directory) share a byte.
// Torch-free.
//
// torch.save stores (never compresses) its entries, so an entry is a byte range
// of the file and the tensors can view it in place. Compressed entries (the
// code/ of a TorchScript archive) are listed, and inflated only on request, to
// at most a size the caller gives: a small file may not claim unbounded
// memory. Encrypted entries are refused.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "safetensors/source.hpp"

namespace safetensors::detail {

/// Most entries accepted: torch.save writes one per storage plus a handful, and
/// the bound keeps a hostile central directory from costing anything.
inline constexpr std::uint64_t kMaxZipEntries = 10'000'000;

/// One entry. A stored entry's bytes are [offset, offset + size) of the file;
/// a compressed one's are [offset, offset + compressed_size).
struct ZipEntry {
  std::string name;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;  ///< once inflated, as its headers declare it
  std::uint64_t compressed_size = 0;
  bool stored = true;     ///< false: compressed (TorchScript code entries), read by inflate only
  bool deflated = false;  ///< compressed with deflate, the one method inflate reads
};

/// True when the source begins with a zip local-file signature.
bool looks_like_zip(const Source& source);

class ZipArchive {
 public:
  /// Reads and validates the central directory. Throws Error naming the file.
  explicit ZipArchive(std::shared_ptr<Source> source);

  const std::vector<ZipEntry>& entries() const noexcept { return entries_; }
  /// The stored entry of that exact name, or nullptr; a compressed one is an error.
  const ZipEntry* find(std::string_view name) const;
  /// A copy of an entry's bytes (for the small ones: the pickle, the version).
  std::string read(const ZipEntry& entry) const;
  /// A deflated entry's bytes, or nullopt when it is not deflated, declares
  /// more than `max_size` bytes, or does not inflate to exactly its declared
  /// size (the output never passes it). Reads the compressed bytes piece by
  /// piece: memory is the output's and a piece.
  std::optional<std::string> inflate(const ZipEntry& entry, std::uint64_t max_size) const;
  const std::shared_ptr<Source>& source() const noexcept { return source_; }

 private:
  std::shared_ptr<Source> source_;
  std::vector<ZipEntry> entries_;  // sorted by name
};

}  // namespace safetensors::detail
