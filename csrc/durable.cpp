// Crash-safe writing: temporary and staged names, writers' locks, the sweep of
// what dead writers left, and AtomicFile.

#include "detail/durable.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string_view>

#include "safetensors/error.hpp"
#include "posix.hpp"

namespace safetensors::detail {

namespace {

// ---------------------------------------------------------------------------
// Names

constexpr std::string_view kTempMarker = ".tmp-";
constexpr std::string_view kStagedExtension = ".safetensors";
constexpr std::string_view kLockPrefix = ".saving-";
constexpr std::string_view kLockSuffix = ".lock";
constexpr std::size_t kTokenSize = 16;
constexpr std::size_t kSetIdSize = 32;

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool is_hex(std::string_view s, std::size_t size) {
  if (s.size() != size) return false;
  for (const char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::string parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_name(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string path_in(const std::string& folder, const std::string& name) {
  if (folder.empty()) return name;
  return folder.back() == '/' ? folder + name : folder + "/" + name;
}

// Sixteen hex digits that differ between calls, processes and hosts with
// overwhelming likelihood: part of names that are still created exclusively.
std::string unique_token() {
  static std::atomic<std::uint64_t> counter{0};
  // splitmix64 over what tells this call apart: the time, the process, the count.
  std::uint64_t x = static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) ^
                    (static_cast<std::uint64_t>(::getpid()) << 40) ^
                    (counter.fetch_add(1) * 0x9E3779B97F4A7C15ull);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(x));
  return text;
}

// A hidden name next to the target: ".<name>.tmp-<token>".
std::string temp_name_for(const std::string& path) {
  std::string dir = parent_dir(path);
  return (dir == "." && path.find('/') == std::string::npos ? std::string() : dir + "/") + "." +
         base_name(path) + std::string(kTempMarker) + unique_token();
}

// What a name in a folder is to a sweep: one of the names above, or no
// writer's (every other file in the folder is never taken for a leftover).
struct Leftover {
  enum Kind { None, Temporary, Staged, Lock } kind = None;
  std::string set;  // of a staged file or a lock
};

Leftover leftover_of(std::string_view name) {
  if (name.size() < 2 || name.front() != '.') return {};
  if (const std::size_t tail = kTempMarker.size() + kTokenSize;
      name.size() > 1 + tail && name.substr(name.size() - tail, kTempMarker.size()) == kTempMarker &&
      is_hex(name.substr(name.size() - kTokenSize), kTokenSize))
    return {Leftover::Temporary, {}};
  if (name.size() >= 1 + 1 + 1 + kSetIdSize + kStagedExtension.size() && ends_with(name, kStagedExtension)) {
    const std::string_view rest = name.substr(1, name.size() - 1 - kStagedExtension.size());
    const std::string_view id = rest.substr(rest.size() - kSetIdSize);
    if (rest[rest.size() - kSetIdSize - 1] == '.' && is_hex(id, kSetIdSize))
      return {Leftover::Staged, std::string(id)};
    return {};
  }
  if (name.size() == kLockPrefix.size() + kSetIdSize + 1 + kTokenSize + kLockSuffix.size() &&
      name.substr(0, kLockPrefix.size()) == kLockPrefix && ends_with(name, kLockSuffix)) {
    const std::string_view id = name.substr(kLockPrefix.size(), kSetIdSize);
    if (is_hex(id, kSetIdSize) && name[kLockPrefix.size() + kSetIdSize] == '-' &&
        is_hex(name.substr(kLockPrefix.size() + kSetIdSize + 1, kTokenSize), kTokenSize))
      return {Leftover::Lock, std::string(id)};
  }
  return {};
}

// ---------------------------------------------------------------------------
// Locks

// Takes an open-file-description lock on the whole of `fd` (flock(2) where
// the system has none): exclusive needs `fd` open for writing, shared for
// reading. Such locks conflict between two opens of a file even within one
// process, are released when the last descriptor of the open goes, and work
// across hosts on NFS. False with errno when not taken.
bool lock_file(int fd, bool exclusive, bool wait) {
  for (;;) {
#ifdef F_OFD_SETLK
    struct flock lock {};
    lock.l_type = exclusive ? F_WRLCK : F_RDLCK;
    lock.l_whence = SEEK_SET;  // l_start = l_len = 0: the whole file
    if (::fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &lock) == 0) return true;
#else
    if (::flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | (wait ? 0 : LOCK_NB)) == 0) return true;
#endif
    if (errno != EINTR) return false;
  }
}

// Creates `path` exclusively (O_CREAT | O_EXCL | `flags`, `mode` before the
// umask) and locks it exclusively. -1 with errno on failure; EEXIST also when a
// sweep removed the new name before the lock was taken, so callers retry under
// another name. On a filesystem without locks (ENOLCK, EOPNOTSUPP...) the file
// is made unlocked; a sweep cannot lock it either and keeps it.
int create_locked(const std::string& path, int flags, mode_t mode) {
  const int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_CLOEXEC | flags, mode);
  if (fd < 0) return -1;
  lock_file(fd, true, true);
  // A sweep may have opened, locked and removed the name between the open and
  // the lock: then the path is no longer this file.
  struct stat mine, named;
  if (::fstat(fd, &mine) != 0 || ::stat(path.c_str(), &named) != 0 || mine.st_dev != named.st_dev ||
      mine.st_ino != named.st_ino) {
    ::close(fd);
    errno = EEXIST;
    return -1;
  }
  return fd;
}

// A writer's lock as a sweep finds it, opened at `fd` (-1 when absent).
// `held`: its writer holds its lock, or it cannot be locked or is not a regular
// file, so its writer counts as alive. Otherwise `fd` holds a shared lock on
// it, which other sweeps may hold too: no writer takes a lock it has let go.
struct LockProbe {
  std::shared_ptr<FdGuard> fd;
  bool absent = false;  // gone, or another file under the name, since it was listed
  bool held = false;
};

LockProbe probe_lock(int dirfd, const std::string& name) {
  LockProbe probe;
  const int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  const int open_errno = errno;  // before the allocation below can change it
  probe.fd = std::make_shared<FdGuard>(fd);
  if (fd < 0) {
    (open_errno == ENOENT ? probe.absent : probe.held) = true;
    return probe;
  }
  struct stat held, named;
  if (::fstat(fd, &held) != 0 || !S_ISREG(held.st_mode) || !lock_file(fd, false, false)) {
    probe.held = true;
    return probe;
  }
  // Still the file opened (not one created since under the same name)?
  probe.absent = ::fstatat(dirfd, name.c_str(), &named, AT_SYMLINK_NOFOLLOW) != 0 ||
                 named.st_dev != held.st_dev || named.st_ino != held.st_ino;
  return probe;
}

// The first `max` bytes of the file open at `fd`, which may be short.
std::string read_prefix(int fd, std::size_t max) {
  std::string content;
  struct stat st;
  if (fd < 0 || ::fstat(fd, &st) != 0) return content;
  content.assign(std::min<std::uint64_t>(static_cast<std::uint64_t>(st.st_size), max), '\0');
  std::size_t got = 0;
  for (ssize_t n; got < content.size(); got += static_cast<std::size_t>(n))
    if ((n = ::pread(fd, content.data() + got, content.size() - got, static_cast<off_t>(got))) <= 0) break;
  content.resize(got);
  return content;
}

// Removes `name` in `dirfd` if it still is the file open at `fd`.
void unlink_if_same(int dirfd, const std::string& name, int fd) {
  struct stat held, named;
  if (::fstat(fd, &held) == 0 && ::fstatat(dirfd, name.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 &&
      named.st_dev == held.st_dev && named.st_ino == held.st_ino)
    ::unlinkat(dirfd, name.c_str(), 0);
}

// A writer's lock records the files its save may leave behind, should it die,
// that are not its staged files: see WriterLock::record.
constexpr std::size_t kMaxRecord = std::size_t{4} << 20;

// The names a lock records that `recordable` accepts; nothing when it has no
// record yet (it is empty), and nothing with `readable` false when its record
// is not one (being written).
std::vector<std::string> recorded_files(const std::string& record, const SavedFiles& saves, bool& readable) {
  std::vector<std::string> out;
  readable = record.empty();
  const nlohmann::json files = nlohmann::json::parse(record, nullptr, false);
  if (!files.is_array()) return out;
  readable = true;
  for (const nlohmann::json& file : files)
    if (file.is_string() && saves.recordable(file.get<std::string>())) out.push_back(file.get<std::string>());
  return out;
}

// Whether an unnamed file can be given a name at commit: linkat() through
// /proc/self/fd needs /proc (absent in some containers and chroots). The other
// way, AT_EMPTY_PATH, needs CAP_DAC_READ_SEARCH on older kernels and cannot be
// tried without giving the file a name.
bool can_name_unnamed(int fd) {
  char proc_path[64];
  std::snprintf(proc_path, sizeof proc_path, "/proc/self/fd/%d", fd);
  struct stat via_proc, direct;
  return ::stat(proc_path, &via_proc) == 0 && ::fstat(fd, &direct) == 0 && via_proc.st_dev == direct.st_dev &&
         via_proc.st_ino == direct.st_ino;
}

}  // namespace

// ---------------------------------------------------------------------------
// Names, locks and the sweep

std::string new_set_id() {
  std::random_device random;
  char id[33];
  std::snprintf(id, sizeof id, "%08x%08x%08x%08x", random(), random(), random(), random());
  return id;
}

std::string staged_name(const std::string& name, const std::string& set_id) {
  return "." + name.substr(0, name.size() - kStagedExtension.size()) + "." + set_id + std::string(kStagedExtension);
}

WriterLock::WriterLock(const std::string& folder, const std::string& set_id) {
  std::string name;
  for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
    name = std::string(kLockPrefix) + set_id + "-" + unique_token() + std::string(kLockSuffix);
    path_ = path_in(folder, name);
    fd_ = create_locked(path_, O_RDWR, 0666);
    if (fd_ < 0 && errno != EEXIST) break;
  }
  if (fd_ < 0)
    throw Error(ErrorCode::Io, folder, "", "cannot create the save's lock " + name + ": " + errno_text(errno));
}

WriterLock::~WriterLock() {
  ::unlink(path_.c_str());
  ::close(fd_);
}

// Written over the old record, then cut to size, it is the old record, the new
// one, or no JSON (which a sweep takes as unknown), never an empty one.
void WriterLock::record(const std::set<std::string>& files) {
  const std::string text = nlohmann::json(files).dump();
  if (::pwrite(fd_, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()) ||
      ::ftruncate(fd_, static_cast<off_t>(text.size())) != 0)
    throw Error(ErrorCode::Io, path_, "", "cannot write the save's lock: " + errno_text(errno));
}

// Staged files are never locked themselves: their writers' locks cover them.
// A set is live while a lock of one of its writers is held.
//
// A file a dead writer's lock records is someone else's once it is in use or a
// live writer's lock records it: a live writer records each name before it
// gives a file that name. The live writers' records are read last, just before
// the removals (a live writer that records and creates a file between that read
// and a removal is not seen); while one cannot be read (being written, or its
// lock cannot be opened) no recorded file is removed.
void remove_dead_writers_files(const std::string& folder, const SavedFiles* saves) {
  const std::unique_ptr<DIR, int (*)(DIR*)> listing(::opendir(folder.c_str()), ::closedir);
  DIR* d = listing.get();
  if (!d) return;
  const int dir = ::dirfd(d);
  // Files first, then locks: a writer locks before it stages, so every lock of
  // a staged file seen in the first pass exists throughout the second.
  std::vector<std::string> temporary;
  std::map<std::string, std::vector<std::string>> staged, locks;
  while (const dirent* e = ::readdir(d)) {
    Leftover found = leftover_of(e->d_name);
    if (found.kind == Leftover::Temporary) temporary.emplace_back(e->d_name);
    if (found.kind == Leftover::Staged && saves) staged[found.set].emplace_back(e->d_name);
  }
  if (saves) {
    ::rewinddir(d);
    while (const dirent* e = ::readdir(d)) {
      Leftover found = leftover_of(e->d_name);
      if (found.kind == Leftover::Lock) locks[found.set].emplace_back(e->d_name);
    }
  }
  // A temporary file is its own writer's lock.
  for (const std::string& name : temporary) {
    const LockProbe probe = probe_lock(dir, name);
    if (!probe.absent && !probe.held) unlink_if_same(dir, name, probe.fd->get());
  }
  if (!saves) return;

  struct Lock {
    std::string name;
    std::shared_ptr<FdGuard> fd;  // while a dead one is open, it is shared-locked
  };
  std::vector<Lock> live;                         // every lock of a live set
  std::map<std::string, std::vector<Lock>> dead;  // by set: a set is dead when none of its locks is held
  for (const auto& [set, names] : locks) {
    std::vector<Lock> found;
    bool held = false;
    for (const std::string& name : names) {
      LockProbe probe = probe_lock(dir, name);
      if (probe.absent) continue;
      held |= probe.held;
      found.push_back({name, std::move(probe.fd)});
    }
    if (held) {
      live.insert(live.end(), found.begin(), found.end());
    } else {
      dead[set] = std::move(found);
    }
  }
  for (const auto& [set, names] : staged)
    if (!locks.count(set)) dead[set];  // no lock at all: dead
  std::set<std::string> spared = saves->in_use();
  bool records_known = true;  // else no recorded file is removed this time
  for (const Lock& lock : live) {
    bool readable = lock.fd->get() >= 0;
    if (readable)
      for (std::string& file : recorded_files(read_prefix(lock.fd->get(), kMaxRecord), *saves, readable))
        spared.insert(std::move(file));
    records_known &= readable;
  }
  for (const auto& [set, set_locks] : dead) {
    // Its staged names carry its id: no live writer makes them.
    std::vector<std::string> files;
    if (const auto it = staged.find(set); it != staged.end()) files = it->second;
    bool complete = true;
    for (const Lock& lock : set_locks) {
      bool ignored = false;  // a dead writer's record that is no JSON (it died writing it) names nothing
      const std::vector<std::string> recorded =
          recorded_files(read_prefix(lock.fd->get(), kMaxRecord), *saves, ignored);
      if (records_known) {
        files.insert(files.end(), recorded.begin(), recorded.end());
      } else {
        complete &= recorded.empty();  // kept, with its lock, for a later sweep
      }
    }
    for (const std::string& file : files)
      if (!spared.count(file) && ::unlinkat(dir, file.c_str(), 0) != 0 && errno != ENOENT) complete = false;
    if (complete)
      for (const Lock& lock : set_locks) unlink_if_same(dir, lock.name, lock.fd->get());
  }
}

int fsync_folder_errno(const std::string& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  const int err = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return err;
}

void fsync_folder(const std::string& folder) {
  if (const int err = fsync_folder_errno(folder))
    throw Error(ErrorCode::Io, folder, "",
                "cannot flush the folder to disk: " + errno_text(err) + "; its files may not survive a crash");
}

// ---------------------------------------------------------------------------
// AtomicFile

AtomicFile::AtomicFile(std::string path, Options options)
    : path_(std::move(path)), options_(std::move(options)) {
  // stat() follows a symlink: a link to a folder is refused like the folder,
  // and a replaced link's permissions are its target's.
  struct stat st;
  if (::stat(path_.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw Error(ErrorCode::Io, path_, "", "cannot save: the path is a directory");
  const std::string& replaced = options_.replaces.empty() ? path_ : options_.replaces;
  const bool replaces = ::stat(replaced.c_str(), &st) == 0 && !S_ISDIR(st.st_mode);
  const mode_t kept_mode = replaces ? st.st_mode & 0777 : 0;

  std::string dir = parent_dir(path_);
  remove_dead_writers_files(dir);
  // Created with 0666, so that the kernel applies the umask or the folder's
  // default ACL to a new file.
#ifdef O_TMPFILE
  fd_ = ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
  if (fd_ >= 0 && !can_name_unnamed(fd_)) {
    ::close(fd_);
    fd_ = -1;
  }
  if (fd_ >= 0) lock_file(fd_, true, true);  // for the moment it has a name, in commit()
#endif
  if (fd_ < 0) {
    // No unnamed file here (some filesystems, no /proc): a hidden named one.
    for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
      temp_path_ = temp_name_for(path_);
      // Replacing: private until fchmod below gives it the old file's bits,
      // so others never read the new contents of a file they could not read.
      fd_ = create_locked(temp_path_, O_WRONLY, replaces ? 0600 : 0666);
      if (fd_ < 0 && errno != EEXIST) break;
    }
    if (fd_ < 0) {
      int err = errno;
      temp_path_.clear();
      throw Error(ErrorCode::Io, path_, "",
                  "cannot create a temporary file in " + dir + ": " + errno_text(err));
    }
  }
  if (replaces && ::fchmod(fd_, kept_mode) != 0) {
    int err = errno;
    discard();
    throw Error(ErrorCode::Io, path_, "", "cannot set permissions: " + errno_text(err));
  }
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  temp_path_.clear();
}

void AtomicFile::write(const void* data, std::size_t n) {
  if (fd_ < 0) throw Error(ErrorCode::Io, path_, "", "write after commit or failure");
  // Small pieces (headers, many small tensors) are gathered so that a file of
  // 100,000 tensors costs a few system calls, not 100,000; large ones go
  // straight from tensor memory to the file.
  if (n >= kBufferSize / 2) {
    flush();
    write_fd(data, n);
    return;
  }
  if (buffer_.size() + n > kBufferSize) flush();
  if (buffer_.capacity() < kBufferSize) buffer_.reserve(kBufferSize);
  const auto* p = static_cast<const char*>(data);
  buffer_.insert(buffer_.end(), p, p + n);
}

void AtomicFile::flush() {
  if (buffer_.empty()) return;
  write_fd(buffer_.data(), buffer_.size());
  buffer_.clear();
}

void AtomicFile::write_fd(const void* data, std::size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    std::size_t chunk = n < (std::size_t{1} << 30) ? n : (std::size_t{1} << 30);
    ssize_t put = ::write(fd_, p, chunk);
    if (put < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      discard();
      throw Error(ErrorCode::Io, path_, "",
                  std::string(err == ENOSPC ? "disk full: " : "write failed: ") + errno_text(err) +
                      "; the previous file is unchanged");
    }
    p += put;
    n -= static_cast<std::size_t>(put);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw Error(ErrorCode::Io, path_, "", "commit after failure");
  flush();
  auto fail = [&](const std::string& what) {
    int err = errno;
    discard();
    throw Error(ErrorCode::Io, path_, "",
                what + ": " + errno_text(err) + "; the previous file is unchanged");
  };
  if (options_.fsync && ::fsync(fd_) != 0) fail("cannot flush to disk");
  if (temp_path_.empty()) {
    // Give the unnamed file a hidden name, then rename it over the target
    // (linkat cannot replace an existing file).
    char proc_path[64];
    std::snprintf(proc_path, sizeof proc_path, "/proc/self/fd/%d", fd_);
    for (int attempt = 0; attempt < 100; ++attempt) {
      std::string name = temp_name_for(path_);
      if (::linkat(AT_FDCWD, proc_path, AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0) {
        temp_path_ = name;
        break;
      }
      if (errno != EEXIST) fail("cannot link the temporary file");
    }
    if (temp_path_.empty()) fail("cannot name the temporary file");
  }
  // Closing reports late write errors (NFS); a duplicate of the descriptor
  // keeps the lock, so no sweep takes the named file before the rename.
  FdGuard lock(::fcntl(fd_, F_DUPFD_CLOEXEC, 0));
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail("cannot close the temporary file");
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) fail("cannot rename over the target");
  temp_path_.clear();
  committed_ = true;
  // Make the rename itself durable.
  if (options_.fsync)
    if (const int err = fsync_folder_errno(parent_dir(path_)))
      throw Error(ErrorCode::Io, path_, "",
                  "saved, but its folder cannot be flushed to disk: " + errno_text(err) +
                      "; the new file may not survive a crash");
}

}  // namespace safetensors::detail
