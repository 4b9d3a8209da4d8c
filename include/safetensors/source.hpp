#pragma once
// Random-access, read-only bytes: a memory-mapped file, a file read with
// positional reads, or a buffer. The format code reads through this interface
// only, so it never touches a file descriptor itself. Torch-free.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace safetensors {

/// How a file is read.
enum class Backend {
  /// A private (copy-on-write) memory mapping: zero-copy, nothing read until
  /// touched, in-place writes stay private to the process. Nothing is reserved
  /// for it (MAP_NORESERVE), so a file larger than RAM + swap maps; only under
  /// strict overcommit (vm.overcommit_memory = 2), where the kernel charges such
  /// a mapping in full, can a large file fail to map, with an Io error that
  /// says so and points to Pread. The default,
  /// except for loads that copy (LoadOptions::copy, load_state_dict's copy
  /// mode), which default to Pread: as fast, and no file pages mapped.
  Mmap,
  /// Positional reads (`pread`) into owned memory, no mapping: for network
  /// filesystems, unified-memory devices and files that may change under us.
  Pread,
};

class Source {
 public:
  virtual ~Source() = default;
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;

  /// Total size in bytes.
  std::uint64_t size() const noexcept { return size_; }
  /// The file's path, or "" for a buffer. Used in error messages.
  const std::string& path() const noexcept { return path_; }
  /// The bytes, when they are addressable memory (mapping or buffer); nullptr
  /// for the pread backend. Writable for mappings (copy-on-write).
  std::byte* data() const noexcept { return data_; }
  /// Copies [offset, offset+n) into dst. Throws Error(Io / FileChanged).
  virtual void read(std::uint64_t offset, void* dst, std::size_t n) const;

 protected:
  Source(std::string path, std::uint64_t size, std::byte* data)
      : path_(std::move(path)), size_(size), data_(data) {}

 private:
  std::string path_;
  std::uint64_t size_;
  std::byte* data_;
};

/// Opens a file with the given backend. Throws Error(Io) naming the file.
std::shared_ptr<Source> open_file(const std::string& path, Backend backend);

/// A source over a copy of the given bytes (aligned to 64 bytes).
std::shared_ptr<Source> copy_buffer(const void* data, std::size_t size);

}  // namespace safetensors
