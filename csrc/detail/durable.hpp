#pragma once
// Crash-safe writing: the names a writer gives the files it has not finished,
// the locks that tell a live writer from a dead one, the sweep of what dead
// writers left, and the file that replaces its target only once complete.
// Torch-free. Internal.
//
// Every file a writer leaves if it dies is hidden and names its writer:
//   .<name>.tmp-<token>                 a temporary file (AtomicFile), locked itself
//   .<stem>.<set id>.safetensors        a file staged by the writers of one save,
//   .saving-<set id>-<token>.lock       covered by their locks, one per writer
// (a token is 16 hex digits, a set id 32). A writer is alive while it holds the
// lock: an open-file-description lock, which works across hosts on NFS and
// across PID namespaces, where a pid means nothing. A sweep removes the files
// of writers none of whose locks is held, and no other file.

#include <cstddef>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "detail/sink.hpp"

namespace safetensors::detail {

/// A random id naming one save: its staged files and its writers' locks carry
/// it (and its index and shards, as kShardSetKey).
std::string new_set_id();

/// The name under which the writers of save `set_id` stage the file `name`
/// (which ends in .safetensors, as the staged name does, since an index may
/// name it): `.<stem>.<set id>.safetensors`.
std::string staged_name(const std::string& name, const std::string& set_id);

/// The lock one writer of save `set_id` holds in its folder for as long as the
/// files it stages, or may leave, are not yet someone else's. It records those
/// that are not staged files (which carry the set id): see record().
class WriterLock {
 public:
  /// Creates `.saving-<set id>-<token>.lock` in `folder`, locked. Throws Error(Io).
  WriterLock(const std::string& folder, const std::string& set_id);
  /// Removes the lock: the writer's files are now someone else's, or gone.
  ~WriterLock();
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

  /// Records in the lock every file, besides its staged ones, that the save
  /// may leave if it dies, before it creates any: a later sweep removes those
  /// that neither the folder's contents nor a live writer's lock claims. A
  /// sweep reads the record at any moment and sees the old one or the new one
  /// (or, while it is written, none it can read). Throws Error(Io).
  void record(const std::set<std::string>& files);

 private:
  std::string path_;
  int fd_ = -1;
};

/// What only the caller knows of a folder's contents, which a sweep needs to
/// remove the files of dead saves (their staged files and what their locks
/// record).
struct SavedFiles {
  /// Whether a name a lock records may be a file of such a save (a name the
  /// caller would give one); other recorded names are passed over.
  std::function<bool(const std::string&)> recordable;
  /// The files that are no dead writer's any more, whatever their locks record:
  /// those the folder's contents use now. Read once, after the locks are probed
  /// (a writer that finished meanwhile put its files in use before it let go of
  /// its lock).
  std::function<std::set<std::string>()> in_use;
};

/// Removes from `folder` what writers that are gone left: temporary files no
/// writer holds locked and, given `saves`, the staged files of saves none of
/// whose writers holds its lock any more and the files their locks record,
/// except those in use and those a live writer's lock records; a dead writer's
/// lock goes once its files are gone, so that a sweep that dies (or cannot
/// remove one) leaves the rest recorded for the next. Best effort: what cannot
/// be removed is harmless to the caller.
void remove_dead_writers_files(const std::string& folder, const SavedFiles* saves = nullptr);

/// Flushes a folder's entries (renames, links) to disk. 0 or the errno.
int fsync_folder_errno(const std::string& folder);
/// The same, throwing Error(Io) naming the folder.
void fsync_folder(const std::string& folder);

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

}  // namespace safetensors::detail
