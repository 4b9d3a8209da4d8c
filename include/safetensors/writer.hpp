#pragma once
// Planning a file, torch-free: the header (order, offsets, padding) exactly as
// the reference writer makes it, before a byte is written. save_file streams
// the data after it, crash-safely.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "safetensors/dtype.hpp"
#include "safetensors/header.hpp"

namespace safetensors {

/// What the writer needs to know of one tensor before writing it.
struct EntrySpec {
  std::string name;
  Dtype dtype = Dtype::U8;
  std::vector<std::uint64_t> shape;
};

/// The file to write: entries in data order with their offsets, and the padded
/// header. Computed before a byte is written, so a bad input fails early.
struct WritePlan {
  /// Indices into the input entries, in the order their data is written: by
  /// dtype (descending, reference order), then by name (byte-wise ascending).
  std::vector<std::size_t> order;
  /// `offsets[i]` is the [begin, end) of input entry i in the data buffer.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> offsets;
  /// The 8-byte length prefix followed by the space-padded JSON header.
  std::string header;
  /// Size of the data buffer.
  std::uint64_t data_size = 0;
  std::uint64_t file_size() const noexcept { return header.size() + data_size; }
};

/// Plans a file. Validates names (UTF-8, not "__metadata__", unique), metadata
/// (UTF-8), shapes (overflow, whole bytes) and the header limit. `file` names
/// the target in errors.
WritePlan plan_write(const std::vector<EntrySpec>& entries,
                     const std::optional<Metadata>& metadata, const std::string& file = "");

}  // namespace safetensors
