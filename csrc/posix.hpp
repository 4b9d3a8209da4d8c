#pragma once
// Small POSIX helpers shared by the file code.

#include <sys/types.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <string_view>

namespace safetensors {

inline std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r returns the message (which may not be buf).
  const char* msg = ::strerror_r(err, buf, sizeof buf);
  return std::string(msg) + " (errno " + std::to_string(err) + ")";
}

/// Closes a descriptor unless released.
class FdGuard {
 public:
  explicit FdGuard(int fd) noexcept : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const noexcept { return fd_; }
  int release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

namespace detail {

/// Sixteen hex digits that differ between calls, processes and hosts with
/// overwhelming likelihood: part of temporary names, which are still created
/// exclusively.
std::string unique_token();

/// Takes an open-file-description lock on the whole of `fd` (flock(2) where
/// the system has none): exclusive needs `fd` open for writing, shared for
/// reading. Such locks conflict between two opens of a file even within one
/// process, are released when the last descriptor of the open goes, and work
/// across hosts on NFS. False with errno when not taken.
bool lock_file(int fd, bool exclusive, bool wait);

/// Creates `path` exclusively (O_CREAT | O_EXCL | `flags`, `mode` before the
/// umask) and locks it exclusively, for a file whose writer must be told
/// apart from a dead one's leftovers. -1 with errno on failure; EEXIST also
/// when a sweep removed the new name before the lock was taken, so callers
/// retry under another name. On a filesystem without locks the file is made
/// unlocked (and no sweep can lock, so none removes it).
int create_locked(const std::string& path, int flags, mode_t mode);

/// What a sweep found at a name in a folder.
enum class Leftover { Removed, InUse, Absent };

/// Removes the regular file `name` in the folder `dirfd` if no writer holds a
/// lock on it (see create_locked): its writer is gone. A file that cannot be
/// opened or locked counts as in use.
Leftover remove_if_unlocked(int dirfd, const char* name);
/// A writer's lock file as a sweep finds it, opened at `fd` (the caller closes
/// it; -1 when absent). `held`: its writer holds its lock, or it cannot be
/// locked or is not a regular file, so its writer counts as alive. Otherwise
/// `fd` holds a shared lock on it, which other sweeps may hold too: no writer
/// takes a lock it has let go again.
struct LockProbe {
  int fd = -1;
  bool absent = false;  // gone, or another file under the name, since it was listed
  bool held = false;
};
LockProbe probe_lock(int dirfd, const char* name);
/// The first `max` bytes of the file open at `fd`, which may be short.
std::string read_prefix(int fd, std::size_t max);
/// Removes `name` in `dirfd` if it still is the file open at `fd`.
void unlink_if_same(int dirfd, const char* name, int fd);
/// Flushes a folder's entries (renames, links) to disk. 0 or the errno.
int fsync_folder_errno(const std::string& folder);
/// The same, throwing Error(Io) naming the folder.
void fsync_folder(const std::string& folder);

}  // namespace detail

}  // namespace safetensors
