#pragma once
// Where the writer's bytes go: memory, or a file replaced crash-safely.
// Torch-free. Internal.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace safetensors::detail {

/// Where bytes go.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual void write(const void* data, std::size_t n) = 0;
};

/// A sink that writes a file crash-safely, by the rules of every save
/// (save.hpp, above save_file): the bytes go to an unnamed (or hidden
/// temporary) file in the target's folder, which is flushed to disk and
/// renamed over the target by commit(). Until then the target is untouched; if
/// the object is destroyed without commit(), or the process dies, no trace is
/// left (an unnamed file vanishes with its descriptor; a hidden one is removed
/// by the next save into the folder, once it can lock it: its writer holds an
/// open-file-description lock on it for as long as it exists).
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

}  // namespace safetensors::detail
