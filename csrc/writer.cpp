// The torch-free writer: a plan that reproduces the reference writer's bytes,
// and sinks that put them in memory or, crash-safely, in a file.

#include "safetensors/writer.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "safetensors/error.hpp"
#include "checked.hpp"
#include "detail/sink.hpp"
#include "detail/text.hpp"
#include "posix.hpp"

namespace safetensors {

using detail::append_json_string;
using detail::is_valid_utf8;

void detail::append_json_string(std::string& out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  out += '"';
  std::size_t run = 0;  // start of the pending unescaped run
  for (std::size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 0xF];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

WritePlan plan_write(const std::vector<EntrySpec>& entries, const std::optional<Metadata>& metadata,
                     const std::string& file) {
  WritePlan plan;
  const std::size_t n = entries.size();

  std::vector<std::uint64_t> sizes(n);
  for (std::size_t i = 0; i < n; ++i) {
    const EntrySpec& e = entries[i];
    if (e.name == kMetadataKey)
      throw Error(ErrorCode::ReservedName, file, e.name,
                  "\"__metadata__\" is reserved for the metadata and cannot name a tensor");
    if (!is_valid_utf8(e.name))
      throw Error(ErrorCode::InvalidArgument, file, e.name, "tensor name is not valid UTF-8");
    if (e.shape.size() > kMaxRank)
      throw Error(ErrorCode::LimitExceeded, file, e.name,
                  "rank " + std::to_string(e.shape.size()) + " above the limit of " +
                      std::to_string(kMaxRank));
    std::uint64_t bits = 0;
    if (!checked_numel_bits(e.shape, dtype_bits(e.dtype), bits))
      throw Error(ErrorCode::ValidationOverflow, file, e.name, "size of the shape overflows 64 bits");
    if (bits % 8 != 0)
      throw Error(ErrorCode::MisalignedSlice, file, e.name,
                  std::to_string(bits) + " bits of " + std::string(dtype_name(e.dtype)) +
                      " are not a whole number of bytes");
    sizes[i] = bits / 8;
  }
  if (metadata)
    for (const auto& [key, value] : *metadata)
      if (!is_valid_utf8(key) || !is_valid_utf8(value))
        throw Error(ErrorCode::InvalidArgument, file, "",
                    "metadata key or value is not valid UTF-8 (key \"" + key + "\")");

  // The reference's order: dtype descending (declaration order), then name.
  plan.order.resize(n);
  for (std::size_t i = 0; i < n; ++i) plan.order[i] = i;
  std::sort(plan.order.begin(), plan.order.end(), [&](std::size_t a, std::size_t b) {
    if (entries[a].dtype != entries[b].dtype) return entries[a].dtype > entries[b].dtype;
    return entries[a].name < entries[b].name;
  });
  // Names are unique.
  {
    std::vector<std::string_view> names;
    names.reserve(n);
    for (const EntrySpec& e : entries) names.emplace_back(e.name);
    std::sort(names.begin(), names.end());
    auto dup = std::adjacent_find(names.begin(), names.end());
    if (dup != names.end())
      throw Error(ErrorCode::DuplicateKey, file, std::string(*dup), "two tensors have this name");
  }

  plan.offsets.resize(n);
  std::uint64_t offset = 0;
  for (std::size_t i : plan.order) {
    std::uint64_t end;
    if (__builtin_add_overflow(offset, sizes[i], &end))
      throw Error(ErrorCode::ValidationOverflow, file, entries[i].name,
                  "total size overflows 64 bits");
    plan.offsets[i] = {offset, end};
    offset = end;
  }
  plan.data_size = offset;

  std::string& h = plan.header;
  h.assign(kHeaderPrefixSize, '\0');
  h += '{';
  bool first = true;
  if (metadata) {
    h += "\"__metadata__\":{";
    bool first_kv = true;
    for (const auto& [key, value] : *metadata) {
      if (!first_kv) h += ',';
      first_kv = false;
      append_json_string(h, key);
      h += ':';
      append_json_string(h, value);
    }
    h += '}';
    first = false;
  }
  char num[24];
  auto append_u64 = [&](std::uint64_t v) {
    int len = std::snprintf(num, sizeof num, "%llu", static_cast<unsigned long long>(v));
    h.append(num, static_cast<std::size_t>(len));
  };
  for (std::size_t i : plan.order) {
    const EntrySpec& e = entries[i];
    if (!first) h += ',';
    first = false;
    append_json_string(h, e.name);
    h += ":{\"dtype\":\"";
    h += dtype_name(e.dtype);
    h += "\",\"shape\":[";
    for (std::size_t d = 0; d < e.shape.size(); ++d) {
      if (d) h += ',';
      append_u64(e.shape[d]);
    }
    h += "],\"data_offsets\":[";
    append_u64(plan.offsets[i].first);
    h += ',';
    append_u64(plan.offsets[i].second);
    h += "]}";
    if (h.size() > kHeaderPrefixSize + kMaxHeaderSize) break;  // reported below
  }
  h += '}';
  // Pad with spaces so the data starts 8-aligned.
  std::size_t json_len = h.size() - kHeaderPrefixSize;
  std::size_t padded = (json_len + 7) / 8 * 8;
  if (padded > kMaxHeaderSize)
    throw Error(ErrorCode::HeaderTooLarge, file, "",
                "header would exceed the limit of " + std::to_string(kMaxHeaderSize) + " bytes");
  h.append(padded - json_len, ' ');
  for (int b = 0; b < 8; ++b) h[b] = static_cast<char>((static_cast<std::uint64_t>(padded) >> (8 * b)) & 0xFF);
  return plan;
}

void detail::BufferSink::write(const void* data, std::size_t n) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  bytes_.insert(bytes_.end(), p, p + n);
}

// ---------------------------------------------------------------------------
// Locks, sweeps and folders

namespace detail {

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

int create_locked(const std::string& path, int flags, mode_t mode) {
  const int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_CLOEXEC | flags, mode);
  if (fd < 0) return -1;
  // A filesystem without locks (ENOLCK, EOPNOTSUPP...) leaves the file
  // unlocked; a sweep cannot lock it either and keeps it.
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

LockProbe probe_lock(int dirfd, const char* name) {
  LockProbe probe;
  probe.fd = ::openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (probe.fd < 0) {
    (errno == ENOENT ? probe.absent : probe.held) = true;
    return probe;
  }
  struct stat held, named;
  if (::fstat(probe.fd, &held) != 0 || !S_ISREG(held.st_mode) || !lock_file(probe.fd, false, false)) {
    probe.held = true;
    return probe;
  }
  // Still the file opened (not one created since under the same name)?
  probe.absent = ::fstatat(dirfd, name, &named, AT_SYMLINK_NOFOLLOW) != 0 || named.st_dev != held.st_dev ||
                 named.st_ino != held.st_ino;
  return probe;
}

std::string read_prefix(int fd, std::size_t max) {
  std::string content;
  struct stat st;
  if (::fstat(fd, &st) != 0) return content;
  content.assign(std::min<std::uint64_t>(static_cast<std::uint64_t>(st.st_size), max), '\0');
  std::size_t got = 0;
  for (ssize_t n; got < content.size(); got += static_cast<std::size_t>(n))
    if ((n = ::pread(fd, content.data() + got, content.size() - got, static_cast<off_t>(got))) <= 0) break;
  content.resize(got);
  return content;
}

void unlink_if_same(int dirfd, const char* name, int fd) {
  struct stat held, named;
  if (::fstat(fd, &held) == 0 && ::fstatat(dirfd, name, &named, AT_SYMLINK_NOFOLLOW) == 0 &&
      named.st_dev == held.st_dev && named.st_ino == held.st_ino)
    ::unlinkat(dirfd, name, 0);
}

Leftover remove_if_unlocked(int dirfd, const char* name) {
  const LockProbe probe = probe_lock(dirfd, name);
  FdGuard guard(probe.fd);
  if (probe.absent) return Leftover::Absent;
  if (probe.held) return Leftover::InUse;
  if (::unlinkat(dirfd, name, 0) != 0) return errno == ENOENT ? Leftover::Absent : Leftover::InUse;
  return Leftover::Removed;
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

namespace {

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

constexpr std::string_view kTempMarker = ".tmp-";
constexpr std::size_t kTokenSize = 16;

// A hidden name next to the target: ".<name>.tmp-<token>".
std::string temp_name_for(const std::string& path) {
  std::string dir = parent_dir(path);
  return (dir == "." && path.find('/') == std::string::npos ? std::string() : dir + "/") + "." +
         base_name(path) + std::string(kTempMarker) + detail::unique_token();
}

// Exactly the names temp_name_for makes: no other file is taken for one.
bool is_temp_name(std::string_view name) {
  const std::size_t tail = kTempMarker.size() + kTokenSize;
  if (name.size() <= 1 + tail || name.front() != '.') return false;
  if (name.substr(name.size() - tail, kTempMarker.size()) != kTempMarker) return false;
  for (const char c : name.substr(name.size() - kTokenSize))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// Removes the temporary files in `dir` of saves whose writer is gone (killed
// between naming its temporary file and renaming it): those no writer holds
// locked. Liveness is never judged from a pid, which means nothing on another
// host or in another PID namespace.
void remove_stale_temps(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;  // best effort: a leftover is harmless to this save
  while (const dirent* e = ::readdir(d))
    if (is_temp_name(e->d_name)) detail::remove_if_unlocked(::dirfd(d), e->d_name);
  ::closedir(d);
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
  remove_stale_temps(dir);
  // Created with 0666, so that the kernel applies the umask or the folder's
  // default ACL to a new file.
#ifdef O_TMPFILE
  fd_ = ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
  if (fd_ >= 0 && !can_name_unnamed(fd_)) {
    ::close(fd_);
    fd_ = -1;
  }
  if (fd_ >= 0) detail::lock_file(fd_, true, true);  // for the moment it has a name, in commit()
#endif
  if (fd_ < 0) {
    // No unnamed file here (some filesystems, no /proc): a hidden named one.
    for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
      temp_path_ = temp_name_for(path_);
      // Replacing: private until fchmod below gives it the old file's bits,
      // so others never read the new contents of a file they could not read.
      fd_ = detail::create_locked(temp_path_, O_WRONLY, replaces ? 0600 : 0666);
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
    if (const int err = detail::fsync_folder_errno(parent_dir(path_)))
      throw Error(ErrorCode::Io, path_, "",
                  "saved, but its folder cannot be flushed to disk: " + errno_text(err) +
                      "; the new file may not survive a crash");
}

}  // namespace detail

}  // namespace safetensors
