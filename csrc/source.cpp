#include "safetensors/source.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "safetensors/error.hpp"
#include "posix.hpp"

namespace safetensors {

void Source::read(std::uint64_t offset, void* dst, std::size_t n) const {
  if (offset > size_ || n > size_ - offset)
    throw Error(ErrorCode::Io, path_, "",
                "read of " + std::to_string(n) + " bytes at offset " + std::to_string(offset) +
                    " past the end (" + std::to_string(size_) + " bytes)");
  if (n) std::memcpy(dst, data_ + offset, n);
}

namespace {

// A private, copy-on-write mapping of the whole file.
class MappedFile final : public Source {
 public:
  MappedFile(std::string path, std::uint64_t size, std::byte* data)
      : Source(std::move(path), size, data) {}
  ~MappedFile() override {
    if (data()) ::munmap(data(), size());
  }
};

// Positional reads; no mapping, no shared file offset, so it is thread-safe.
class PreadFile final : public Source {
 public:
  PreadFile(std::string path, std::uint64_t size, int fd)
      : Source(std::move(path), size, nullptr), fd_(fd) {}
  ~PreadFile() override { ::close(fd_); }

  void read(std::uint64_t offset, void* dst, std::size_t n) const override {
    if (offset > size() || n > size() - offset)
      throw Error(ErrorCode::Io, path(), "",
                  "read of " + std::to_string(n) + " bytes at offset " + std::to_string(offset) +
                      " past the end (" + std::to_string(size()) + " bytes)");
    auto* out = static_cast<char*>(dst);
    while (n > 0) {
      // Linux transfers at most 0x7ffff000 bytes per call.
      std::size_t chunk = n < (std::size_t{1} << 30) ? n : (std::size_t{1} << 30);
      ssize_t got = ::pread(fd_, out, chunk, static_cast<off_t>(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        throw Error(ErrorCode::Io, path(), "", "read failed: " + errno_text(errno));
      }
      if (got == 0)
        throw Error(ErrorCode::FileChanged, path(), "",
                    "file ended at byte " + std::to_string(offset) +
                        " while reading: it was truncated after it was opened");
      out += got;
      offset += static_cast<std::uint64_t>(got);
      n -= static_cast<std::size_t>(got);
    }
  }

 private:
  int fd_;
};

class BufferCopy final : public Source {
 public:
  BufferCopy(std::uint64_t size, std::byte* data) : Source("", size, data) {}
  ~BufferCopy() override { std::free(data()); }
};

// vm.overcommit_memory = 2: every private writable mapping is charged in full.
bool strict_overcommit() {
  FILE* f = std::fopen("/proc/sys/vm/overcommit_memory", "re");
  if (!f) return false;
  int mode = 0;
  const bool read = std::fscanf(f, "%d", &mode) == 1;
  std::fclose(f);
  return read && mode == 2;
}

}  // namespace

std::shared_ptr<Source> open_file(const std::string& path, Backend backend) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(ErrorCode::Io, path, "", "cannot open: " + errno_text(errno));
  FdGuard guard(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0)
    throw Error(ErrorCode::Io, path, "", "cannot stat: " + errno_text(errno));
  if (!S_ISREG(st.st_mode))
    throw Error(ErrorCode::Io, path, "",
                S_ISDIR(st.st_mode) ? "is a directory" : "is not a regular file");
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  auto size = static_cast<std::uint64_t>(st.st_size);
  if (backend == Backend::Pread) return std::make_shared<PreadFile>(path, size, guard.release());
  if (size == 0) return std::make_shared<MappedFile>(path, 0, nullptr);
  if (size > static_cast<std::uint64_t>(SIZE_MAX))
    throw Error(ErrorCode::Io, path, "", "file too large to map");
  // Private and writable: in-place ops on loaded tensors copy the page instead
  // of crashing or changing the file. MAP_NORESERVE: the kernel would otherwise
  // charge the whole writable private mapping to the commit limit, and a file
  // larger than RAM + swap (the very case mapping is for) could not be mapped.
  // Only the pages a process writes become its own; the rest stay file pages.
  void* p = ::mmap(nullptr, static_cast<std::size_t>(size), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    std::string detail = "cannot map: " + errno_text(err);
    // Under strict overcommit the kernel ignores MAP_NORESERVE and charges
    // every writable private mapping in full.
    if (err == ENOMEM && strict_overcommit())
      detail += ": the kernel's strict overcommit (vm.overcommit_memory = 2) charges a " +
                std::to_string(size) +
                "-byte copy-on-write mapping to the commit limit; read it with the pread backend, "
                "which maps nothing: backend(Backend::Pread) in LoadOptions, StateDictLoadOptions or "
                "CheckpointOptions, --backend pread on the command line";
    throw Error(ErrorCode::Io, path, "", detail);
  }
  return std::make_shared<MappedFile>(path, size, static_cast<std::byte*>(p));
}

std::shared_ptr<Source> copy_buffer(const void* data, std::size_t size) {
  std::size_t alloc = ((size + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, alloc == 0 ? 64 : alloc);
  if (!p) throw std::bad_alloc();
  if (size) std::memcpy(p, data, size);
  return std::make_shared<BufferCopy>(size, static_cast<std::byte*>(p));
}

}  // namespace safetensors
