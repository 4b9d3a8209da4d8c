// The torch-free writer: a plan that reproduces the reference writer's bytes,
// and sinks that put them in memory or, crash-safely, in a file.

#include "safetensors/writer.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "safetensors/error.hpp"
#include "checked.hpp"
#include "posix.hpp"

namespace safetensors {

void append_json_string(std::string& out, std::string_view s) {
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

void BufferSink::write(const void* data, std::size_t n) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  bytes_.insert(bytes_.end(), p, p + n);
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

// A hidden name next to the target, unique within this process and likely
// across processes.
std::string temp_name_for(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  char suffix[64];
  std::snprintf(suffix, sizeof suffix, ".tmp-%d-%u-%llx", static_cast<int>(::getpid()),
                counter.fetch_add(1), static_cast<unsigned long long>(now));
  std::string dir = parent_dir(path);
  return (dir == "." && path.find('/') == std::string::npos ? std::string() : dir + "/") + "." +
         base_name(path) + suffix;
}

// Removes hidden temporary files of earlier saves to `path` whose process is
// gone (killed between naming its temporary file and renaming it).
void remove_stale_temps(const std::string& path) {
  const std::string dir = parent_dir(path);
  const std::string prefix = "." + base_name(path) + ".tmp-";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  while (const dirent* e = ::readdir(d)) {
    std::string_view name(e->d_name);
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const long pid = std::strtol(e->d_name + prefix.size(), nullptr, 10);
    if (pid <= 0 || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH))
      ::unlinkat(::dirfd(d), e->d_name, 0);
  }
  ::closedir(d);
}

mode_t current_umask() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("Umask:", 0) == 0) return static_cast<mode_t>(std::strtoul(line.c_str() + 6, nullptr, 8));
  return 022;
}

}  // namespace

AtomicFile::AtomicFile(std::string path, Options options)
    : path_(std::move(path)), options_(options) {
  // Write through a symlink to its target rather than replacing the link.
  struct stat lst;
  if (::lstat(path_.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) {
    char* real = ::realpath(path_.c_str(), nullptr);
    if (real) {
      path_ = real;
      std::free(real);
    }
  }
  struct stat st;
  bool exists = ::stat(path_.c_str(), &st) == 0;
  if (exists && S_ISDIR(st.st_mode))
    throw Error(ErrorCode::Io, path_, "", "cannot save: the path is a directory");
  mode_t mode = exists ? (st.st_mode & 07777) : (0666 & ~current_umask());
  remove_stale_temps(path_);

  std::string dir = parent_dir(path_);
#ifdef O_TMPFILE
  fd_ = ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
#endif
  if (fd_ < 0) {
    // No unnamed files here (some filesystems): a hidden named one instead.
    for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
      temp_path_ = temp_name_for(path_);
      fd_ = ::open(temp_path_.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
      if (fd_ < 0 && errno != EEXIST) break;
    }
    if (fd_ < 0) {
      int err = errno;
      temp_path_.clear();
      throw Error(ErrorCode::Io, path_, "",
                  "cannot create a temporary file in " + dir + ": " + errno_text(err));
    }
  }
  if (::fchmod(fd_, mode) != 0) {
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
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail("cannot close the temporary file");
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) fail("cannot rename over the target");
  temp_path_.clear();
  committed_ = true;
  if (options_.fsync) {
    // Make the rename itself durable.
    int dfd = ::open(parent_dir(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }
}

}  // namespace safetensors
