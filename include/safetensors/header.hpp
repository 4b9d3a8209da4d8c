#pragma once
// The safetensors header: parsing and validation of the 8-byte length and the
// JSON that follows it. Torch-free, so it builds and fuzzes fast.
//
// Layout: [u64 little-endian N][N bytes of UTF-8 JSON][data buffer]. Every rule
// the reference implementation enforces is checked here, before any tensor is
// made; see README "Format rules" for the list.

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "safetensors/dtype.hpp"

namespace safetensors {

/// Size of the little-endian header-length prefix.
inline constexpr std::uint64_t kHeaderPrefixSize = 8;
/// Largest header accepted (the reference's MAX_HEADER_SIZE): bounds the memory a
/// hostile file can make us allocate before anything else is checked.
inline constexpr std::uint64_t kMaxHeaderSize = 100'000'000;
/// Largest rank accepted. The format has no limit; no model comes near it, and
/// LibTorch's kernels stop at 25 dimensions. It bounds per-tensor work.
inline constexpr std::size_t kMaxRank = 64;
/// Deepest JSON nesting accepted, counting the header's own object: unknown
/// fields may hold nested values. The reference's JSON parser stops at the same
/// depth (serde_json's recursion limit of 128); real headers are 3 deep.
inline constexpr std::size_t kMaxJsonDepth = 127;

/// The key that holds the string-to-string metadata; never a tensor name.
inline constexpr std::string_view kMetadataKey = "__metadata__";

/// Free-form string metadata (the `__metadata__` object), sorted by key.
using Metadata = std::map<std::string, std::string>;

/// One tensor entry of the header.
struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::U8;
  std::vector<std::uint64_t> shape;
  /// Byte range relative to the start of the data buffer; end is one past.
  std::uint64_t begin = 0;
  std::uint64_t end = 0;

  std::uint64_t nbytes() const noexcept { return end - begin; }
  /// Product of the shape (1 for a scalar). Validated not to overflow.
  std::uint64_t numel() const noexcept;
};

/// A parsed and validated header.
class Header {
 public:
  /// Tensors in file order (ascending data offset).
  // On a temporary Header (SafeOpen(p).header()), tensors() and metadata()
  // return copies and find() is not offered: they would point into it.
  const std::vector<TensorInfo>& tensors() const& noexcept { return tensors_; }
  std::vector<TensorInfo> tensors() const&& { return tensors_; }
  /// The tensor of that name, or nullptr.
  const TensorInfo* find(std::string_view name) const&;
  const TensorInfo* find(std::string_view name) const&& = delete;
  /// The metadata; empty when the file has none.
  const Metadata& metadata() const& noexcept { return metadata_; }
  Metadata metadata() const&& { return metadata_; }
  /// Whether the header had a `__metadata__` object (MLX writes `null`: false).
  bool has_metadata() const noexcept { return has_metadata_; }
  /// N, the JSON length (including any padding).
  std::uint64_t header_size() const noexcept { return header_size_; }
  /// File offset of the data buffer: 8 + N.
  std::uint64_t data_offset() const noexcept { return kHeaderPrefixSize + header_size_; }
  /// Length of the data buffer (the last tensor's end).
  std::uint64_t data_size() const noexcept { return data_size_; }
  /// Total file size: data_offset() + data_size().
  std::uint64_t file_size() const noexcept { return data_offset() + data_size_; }

 private:
  friend Header parse_header(std::string_view, std::uint64_t, const std::string&);
  std::vector<TensorInfo> tensors_;
  std::vector<std::uint32_t> by_name_;  // indices into tensors_, sorted by name
  Metadata metadata_;
  bool has_metadata_ = false;
  std::uint64_t header_size_ = 0;
  std::uint64_t data_size_ = 0;
};

/// Reads N from the 8-byte prefix and checks it against the file size (rules
/// HeaderTooSmall, HeaderTooLarge, InvalidHeaderLength). `available` is the number of
/// bytes the file (or buffer) holds in all. `file` names the source in errors.
std::uint64_t parse_header_length(const void* prefix, std::uint64_t available,
                                  const std::string& file);

/// Parses and validates the JSON header. `json` is the N bytes after the prefix;
/// `data_size` is the number of bytes after them (file size - 8 - N): the
/// tensors must cover it exactly. Throws safetensors::Error.
Header parse_header(std::string_view json, std::uint64_t data_size, const std::string& file);

/// Both steps over a whole in-memory file.
Header parse_header(const void* data, std::size_t size, const std::string& file = "");

}  // namespace safetensors
