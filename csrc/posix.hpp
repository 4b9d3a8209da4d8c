#pragma once
// Small POSIX helpers shared by the file code.

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

}  // namespace safetensors
