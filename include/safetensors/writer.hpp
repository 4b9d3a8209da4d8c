#pragma once
// Writing the format, torch-free: plan the header (order, offsets, padding)
// exactly as the reference writer does, then stream the data through a sink.
// An atomic file sink makes every save crash-safe.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
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

/// Appends `s` as a JSON string literal, escaped the way the reference writer
/// does (only `"`, `\` and control characters).
void append_json_string(std::string& out, std::string_view s);

/// Where bytes go.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual void write(const void* data, std::size_t n) = 0;
};

/// A sink that writes a file crash-safely: the bytes go to an unnamed (or
/// hidden temporary) file in the target's folder, which is flushed to disk and
/// renamed over the target by commit(). Until then the target is untouched; if
/// the object is destroyed without commit(), or the process dies, no trace is
/// left (an unnamed file vanishes with its descriptor; a hidden one is removed
/// by the next save into the folder).
///
/// The rules of every save:
/// - The path is replaced, never written through: a symlink there (a Hugging
///   Face cache's snapshot entry pointing into blobs/, dangling or not) becomes
///   the new regular file and its target is left as it was. A path naming a
///   folder, or a link to one, is refused.
/// - A new file gets 0666 & ~umask (or the folder's default ACL); a file that
///   replaces another keeps that one's permission bits (through a symlink, its
///   target's), never setuid, setgid or sticky.
/// - A hidden temporary file is locked (an open-file-description lock) by its
///   writer for as long as it exists; a save removes only the temporary files
///   in its folder that it can lock, so it never removes one another writer is
///   still writing, whatever host or PID namespace that writer runs in.
/// - With fsync, a failure to flush the file or its folder is an Error(Io): the
///   data may not be durable.
class AtomicFile final : public Sink {
 public:
  struct Options {
    bool fsync = true;  ///< flush data and folder to disk before/after rename
    /// The file whose permissions the new one takes, when it is not the target
    /// (a file saved under a temporary name to replace this one later); empty:
    /// the target.
    std::string replaces = {};
  };
  explicit AtomicFile(std::string path, Options options);
  explicit AtomicFile(std::string path) : AtomicFile(std::move(path), Options{}) {}
  ~AtomicFile() override;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// Writes (small pieces are buffered). Throws Error(Io); the target is then unchanged.
  void write(const void* data, std::size_t n) override;
  /// Flushes and renames over the target. Throws Error(Io) on failure: the
  /// target is unchanged unless committed() is true, when only flushing the
  /// folder failed (the new file is in place but may not survive a crash).
  void commit();
  /// Whether the new file has replaced the target.
  bool committed() const noexcept { return committed_; }
  const std::string& path() const noexcept { return path_; }

 private:
  static constexpr std::size_t kBufferSize = std::size_t{1} << 20;
  void flush();
  void write_fd(const void* data, std::size_t n);
  void discard() noexcept;
  std::string path_;
  Options options_;
  std::vector<char> buffer_;
  int fd_ = -1;
  std::string temp_path_;  // empty while the file is unnamed (O_TMPFILE)
  bool committed_ = false;
};

/// A sink into memory.
class BufferSink final : public Sink {
 public:
  void write(const void* data, std::size_t n) override;
  std::vector<std::uint8_t>& bytes() noexcept { return bytes_; }

 private:
  std::vector<std::uint8_t> bytes_;
};

}  // namespace safetensors
