#include "support/memory.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace safetensors::test {

namespace {

// The number after "field:" on its line of a /proc file, or nothing.
bool read_field(const char* file, const std::string& field, std::string& value) {
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    if (line.compare(0, field.size() + 1, field + ":") == 0) {
      value = line.substr(field.size() + 1);
      return true;
    }
  }
  return false;
}

}  // namespace

long status_kb(const std::string& field) {
  std::string value;
  return read_field("/proc/self/status", field, value) ? std::stol(value) : -1;
}

std::uint64_t meminfo_bytes(const std::string& field) {
  std::string value;
  return read_field("/proc/meminfo", field, value) ? std::stoull(value) * 1024 : 0;
}

void drop_file_pages(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  ::fdatasync(fd);
  const int err = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
  if (err != 0) throw std::runtime_error("posix_fadvise(" + path + "): " + std::strerror(err));
}

void reset_peak_memory() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
}

long peak_added_kb(const std::function<void()>& f) {
  reset_peak_memory();
  const long before = status_kb("VmRSS");
  f();
  return status_kb("VmHWM") - before;
}

}  // namespace safetensors::test
