#pragma once
// Helpers shared by the test suites: temporary folders, raw files, bitwise
// tensor comparison, a small filesystem of the test's own. What needs no
// GoogleTest and serves the benchmark too is in support/.

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <grp.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "safetensors/error.hpp"
#include "support/memory.hpp"

namespace safetensors::test {

namespace fs = std::filesystem;

/// A fresh folder under the system's temporary folder, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "safetensors-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  /// Names of the entries in the folder (to find stray temporary files).
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  fs::path path_;
};

/// While alive, writes that grow a file past `bytes` fail with EFBIG (SIGXFSZ
/// ignored): a disk that fills up in the middle of a save.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    if (::getrlimit(RLIMIT_FSIZE, &old_) != 0) throw std::runtime_error("getrlimit failed");
    old_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = old_;
    small.rlim_cur = bytes;
    if (::setrlimit(RLIMIT_FSIZE, &small) != 0) throw std::runtime_error("setrlimit failed");
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    ::signal(SIGXFSZ, old_handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  struct rlimit old_;
  void (*old_handler_)(int);
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// A file made by hand: the 8-byte little-endian length of `json`, `json`, `data`.
inline std::string make_file(const std::string& json, const std::string& data = "") {
  std::string out(8, '\0');
  std::uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + json + data;
}

inline std::string as_string(const std::vector<std::uint8_t>& bytes) {
  return std::string(bytes.begin(), bytes.end());
}

/// Same dtype, shape and bytes (NaN payloads included).
inline bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;  // data_ptr() may be null, which memcmp must not get
  at::Tensor ac = a.cpu().contiguous(), bc = b.cpu().contiguous();
  return std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0;
}

/// The ErrorCode of the safetensors::Error `f` throws; fails the test otherwise.
template <class F>
ErrorCode error_code_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-safetensors exception: " << e.what();
    throw;
  }
  ADD_FAILURE() << "did not throw";
  throw std::runtime_error("did not throw");
}

/// A real filesystem of `bytes` bytes (a tmpfs) for tests of a full or
/// read-only disk, mounted over a folder in a child process that has mount
/// (and, where the process lacks CAP_SYS_ADMIN, user) namespaces of its own,
/// so nothing outside the child sees it and no privilege is needed.
class SmallFilesystem {
 public:
  explicit SmallFilesystem(std::string folder) : folder_(std::move(folder)) {}
  const std::string& folder() const { return folder_; }
  std::string file(const std::string& name) const { return folder_ + "/" + name; }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(folder_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  /// Remounts the filesystem read-only; every later write fails with EROFS.
  void make_read_only() const {
    if (::mount(nullptr, folder_.c_str(), nullptr, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, nullptr) != 0)
      throw std::runtime_error(std::string("remount read-only: ") + std::strerror(errno));
  }
  /// Records a failed check; the parent reports it as a test failure.
  void expect(bool ok, const std::string& what) {
    if (!ok) failures_.push_back(what);
  }
  const std::vector<std::string>& failures() const { return failures_; }

 private:
  std::string folder_;
  std::vector<std::string> failures_;
};

namespace detail {

inline bool write_proc_file(const char* path, const std::string& text) {
  int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  return ok;
}

// In the child: private mounts (user namespace too when needed), then a tmpfs
// over `folder`. Returns why it could not, or nothing.
inline std::optional<std::string> mount_small_filesystem(const std::string& folder, std::size_t bytes) {
  if (::unshare(CLONE_NEWNS) != 0) {
    const uid_t uid = ::getuid();
    const gid_t gid = ::getgid();
    if (::unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0)
      return std::string("this kernel or sandbox gives no mount namespace (unshare: ") + std::strerror(errno) + ")";
    if (!write_proc_file("/proc/self/setgroups", "deny") ||
        !write_proc_file("/proc/self/uid_map", "0 " + std::to_string(uid) + " 1") ||
        !write_proc_file("/proc/self/gid_map", "0 " + std::to_string(gid) + " 1"))
      return std::string("cannot map the user namespace: ") + std::strerror(errno);
  }
  // Private, so the tmpfs cannot propagate to the parent's mounts. Inside a
  // chroot "/" is no mount point (EINVAL) and this cannot be made safe.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    return std::string("cannot make mounts private (\"/\" is no mount point in a chroot): ") + std::strerror(errno);
  const std::string options = "size=" + std::to_string(bytes) + ",mode=0755";
  if (::mount("tmpfs", folder.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) != 0)
    return std::string("cannot mount a tmpfs: ") + std::strerror(errno);
  return std::nullopt;
}

}  // namespace detail

namespace detail {

inline void write_all(int fd, const std::string& text) {
  for (std::size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
}

// Everything until end of file; closes `fd`.
inline std::string read_all(int fd) {
  std::string text;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

// Runs a child's checks; their failures, one per line.
inline std::string run_checks(const std::string& folder, const std::function<void(SmallFilesystem&)>& body) {
  SmallFilesystem checks(folder);
  try {
    body(checks);
  } catch (const std::exception& e) {
    checks.expect(false, std::string("threw: ") + e.what());
  }
  std::string report;
  for (const std::string& failure : checks.failures()) report += failure + '\n';
  return report;
}

// A child's failures (one per line) as failures of the calling test.
inline void add_failures(const std::string& report) {
  std::size_t start = 0;
  for (std::size_t end; (end = report.find('\n', start)) != std::string::npos; start = end + 1)
    ADD_FAILURE() << report.substr(start, end - start);
}

}  // namespace detail

/// Runs `body` in a child process with a `bytes`-byte tmpfs mounted over
/// `folder` (which must exist); the checks `body` records with
/// SmallFilesystem::expect, an exception it throws, or a crash are failures of
/// the calling test. Returns the reason when the system cannot give a child
/// its own mounts (an unprivileged container without user namespaces, a
/// chroot), so the caller can skip saying why.
inline std::optional<std::string> with_small_filesystem(const std::string& folder, std::size_t bytes,
                                                        const std::function<void(SmallFilesystem&)>& body) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::close(fds[0]);
    std::string report;
    int code = 0;
    if (std::optional<std::string> why = detail::mount_small_filesystem(folder, bytes)) {
      report = *why;
      code = 77;
    } else {
      report = detail::run_checks(folder, body);
    }
    detail::write_all(fds[1], report);
    ::_exit(code);
  }
  ::close(fds[1]);
  const std::string report = detail::read_all(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status)) {
    ADD_FAILURE() << "the child died of signal " << WTERMSIG(status) << " (" << ::strsignal(WTERMSIG(status)) << ")";
    return std::nullopt;
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77) return report;
  detail::add_failures(report);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child exit status " << status;
  return std::nullopt;
}

/// Names of the entries in a folder, sorted.
inline std::vector<std::string> entries_of(const fs::path& folder) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(folder)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

/// In a child with mounts of its own (a with_small_filesystem body): covers
/// /proc with an empty tmpfs, as in a container or chroot without /proc.
/// Returns why it could not, or nothing.
inline std::optional<std::string> hide_proc() {
  if (::mount("tmpfs", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555") != 0)
    return std::string("cannot cover /proc: ") + std::strerror(errno);
  return std::nullopt;
}

/// Forks a child running `body` (its return value is the exit code; an
/// exception is code 1, its message on stderr). Returns its pid, -1 on failure.
inline pid_t fork_child(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  int code = 1;
  try {
    code = body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "child %d threw: %s\n", static_cast<int>(::getpid()), e.what());
  }
  std::fflush(nullptr);
  ::_exit(code);
}

/// The exit code of a child, or 128 + the signal that killed it.
inline int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// In a child with namespaces of its own (a with_small_filesystem body): forks
/// `body` into a new PID namespace, where it is pid 1 and no pid of this one
/// means anything. Call it once per process. Returns the pid (as seen here),
/// or -1 with errno.
inline pid_t fork_in_new_pid_namespace(const std::function<int()>& body) {
  if (::unshare(CLONE_NEWPID) != 0) return -1;
  return fork_child(body);
}

/// A one-byte signal between processes: a pipe.
class Signal {
 public:
  Signal() {
    if (::pipe(fds_) != 0) throw std::runtime_error("pipe failed");
  }
  ~Signal() {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }
  Signal(const Signal&) = delete;
  Signal& operator=(const Signal&) = delete;
  void notify() const {
    const char byte = 1;
    while (::write(fds_[1], &byte, 1) < 0 && errno == EINTR) {
    }
  }
  /// False when nothing came within `seconds` (the other side died).
  bool wait(int seconds = 60) const {
    struct pollfd ready {fds_[0], POLLIN, 0};
    int n;
    while ((n = ::poll(&ready, 1, seconds * 1000)) < 0 && errno == EINTR) {
    }
    char byte;
    return n == 1 && ::read(fds_[0], &byte, 1) == 1;
  }

 private:
  int fds_[2];
};

/// Runs `body` in a child process that, where this one is root, gives up root
/// for uid and gid 65534 first, so that file permissions apply to it; checks
/// as in with_small_filesystem (SmallFilesystem::expect; its folder is unused).
/// Returns why it could not, or nothing.
inline std::optional<std::string> without_privileges(const std::function<void(SmallFilesystem&)>& body) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = fork_child([&]() -> int {
    ::close(fds[0]);
    std::string report;
    int code = 0;
    if (::geteuid() == 0 && (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0)) {
      report = std::string("cannot give up root: ") + std::strerror(errno);
      code = 77;
    } else {
      report = detail::run_checks("", body);
    }
    detail::write_all(fds[1], report);
    return code;
  });
  if (pid < 0) throw std::runtime_error("fork failed");
  ::close(fds[1]);
  const std::string report = detail::read_all(fds[0]);
  const int code = wait_child(pid);
  if (code == 77) return report;
  detail::add_failures(report);
  EXPECT_EQ(code, 0) << "the child's exit code";
  return std::nullopt;
}

/// Holds an open-file-description write lock on a file, as a writer holds one
/// on the temporary files it is still writing.
class HeldLock {
 public:
  explicit HeldLock(const std::string& path) : fd_(::open(path.c_str(), O_RDWR | O_CLOEXEC)) {
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    if (fd_ < 0 || ::fcntl(fd_, F_OFD_SETLK, &lock) != 0)
      throw std::runtime_error("cannot lock " + path + ": " + std::strerror(errno));
  }
  ~HeldLock() { ::close(fd_); }
  HeldLock(const HeldLock&) = delete;
  HeldLock& operator=(const HeldLock&) = delete;

 private:
  int fd_;
};

}  // namespace safetensors::test
