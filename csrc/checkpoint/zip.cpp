#include "zip.hpp"

#include <zlib.h>

#include <algorithm>
#include <climits>

#include "safetensors/error.hpp"

namespace safetensors::detail {
namespace {

// Record signatures and fixed sizes from the zip specification (APPNOTE 6.3).
constexpr std::uint32_t kLocalSignature = 0x04034b50;
constexpr std::uint32_t kCentralSignature = 0x02014b50;
constexpr std::uint32_t kEndSignature = 0x06054b50;
constexpr std::uint32_t kZip64EndSignature = 0x06064b50;
constexpr std::uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr std::uint64_t kLocalHeaderSize = 30;
constexpr std::uint64_t kCentralHeaderSize = 46;
constexpr std::uint64_t kEndSize = 22;
constexpr std::uint64_t kZip64EndSize = 56;
constexpr std::uint64_t kZip64LocatorSize = 20;
constexpr std::uint64_t kMaxCommentSize = 0xFFFF;
constexpr std::uint16_t kZip64ExtraId = 0x0001;
constexpr std::uint16_t kMethodStored = 0;
constexpr std::uint16_t kMethodDeflated = 8;
constexpr std::uint16_t kFlagEncrypted = 0x0001;
constexpr std::uint32_t kZip64Marker32 = 0xFFFFFFFF;

[[noreturn]] void fail(const Source& source, const std::string& detail) {
  throw Error(ErrorCode::InvalidCheckpoint, source.path(), "",
              "not a valid torch.save zip archive: " + detail);
}

std::uint64_t little_endian(const unsigned char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A bounds-checked window of the file, read into memory.
class Bytes {
 public:
  Bytes(const Source& source, std::uint64_t offset, std::uint64_t size, const char* what)
      : source_(source) {
    if (offset > source.size() || size > source.size() - offset)
      fail(source, std::string(what) + " lies outside the file");
    data_.resize(size);
    source.read(offset, data_.data(), size);
  }
  std::uint64_t u(std::uint64_t at, int bytes) const {
    if (at > data_.size() || static_cast<std::uint64_t>(bytes) > data_.size() - at)
      fail(source_, "a record is cut short");
    return little_endian(reinterpret_cast<const unsigned char*>(data_.data()) + at, bytes);
  }
  std::string_view text(std::uint64_t at, std::uint64_t n) const {
    if (at > data_.size() || n > data_.size() - at) fail(source_, "a name is cut short");
    return std::string_view(data_).substr(at, n);
  }
  std::uint64_t size() const { return data_.size(); }

 private:
  const Source& source_;
  std::string data_;
};

struct Directory {
  std::uint64_t offset = 0, size = 0, count = 0;
};

// The zip64 end record, which replaces the classic one's saturated fields.
Directory read_zip64_directory(const Source& source, std::uint64_t end_offset) {
  if (end_offset < kZip64LocatorSize) fail(source, "zip64 locator missing");
  const Bytes locator(source, end_offset - kZip64LocatorSize, kZip64LocatorSize, "zip64 locator");
  if (locator.u(0, 4) != kZip64LocatorSignature) fail(source, "zip64 locator missing");
  const Bytes end(source, locator.u(8, 8), kZip64EndSize, "zip64 end record");
  if (end.u(0, 4) != kZip64EndSignature) fail(source, "zip64 end record missing");
  return {end.u(48, 8), end.u(40, 8), end.u(32, 8)};
}

// Finds the end-of-central-directory record: the last signature within the
// largest comment's reach of the end.
Directory read_directory(const Source& source) {
  if (source.size() < kEndSize) fail(source, "too short");
  const std::uint64_t window = std::min<std::uint64_t>(source.size(), kEndSize + kMaxCommentSize);
  const Bytes tail(source, source.size() - window, window, "end record");
  for (std::uint64_t at = window - kEndSize + 1; at-- > 0;) {
    if (tail.u(at, 4) != kEndSignature) continue;
    const std::uint64_t end_offset = source.size() - window + at;
    Directory dir{tail.u(at + 16, 4), tail.u(at + 12, 4), tail.u(at + 10, 2)};
    if (dir.offset == kZip64Marker32 || dir.size == kZip64Marker32 || dir.count == 0xFFFF)
      dir = read_zip64_directory(source, end_offset);
    if (dir.offset > end_offset || dir.size > end_offset - dir.offset)
      fail(source, "central directory lies outside the file");
    if (dir.count > kMaxZipEntries || dir.count > dir.size / kCentralHeaderSize)
      fail(source, "central directory declares " + std::to_string(dir.count) + " entries");
    return dir;
  }
  fail(source, "no end-of-central-directory record");
}

// Replaces saturated 32-bit fields with their zip64 extra-field values, which
// appear in this fixed order and only for the saturated fields.
void apply_zip64_extra(const Source& source, const Bytes& dir, std::uint64_t at,
                       std::uint64_t length, std::uint64_t* fields[3]) {
  const std::uint64_t end = at + length;
  while (at + 4 <= end) {
    const std::uint64_t id = dir.u(at, 2), size = dir.u(at + 2, 2);
    at += 4;
    if (size > end - at) fail(source, "extra field runs past its entry");
    if (id == kZip64ExtraId) {
      std::uint64_t pos = at;
      for (int i = 0; i < 3; ++i) {
        if (*fields[i] != kZip64Marker32) continue;
        if (pos + 8 > at + size) fail(source, "zip64 extra field cut short");
        *fields[i] = dir.u(pos, 8);
        pos += 8;
      }
    }
    at += size;
  }
}

// Where an entry's bytes begin: past its local header, whose name must agree
// with the central directory's.
std::uint64_t data_offset(const Source& source, const ZipEntry& entry, std::uint64_t local) {
  const Bytes header(source, local, kLocalHeaderSize, "a local header");
  if (header.u(0, 4) != kLocalSignature) fail(source, "entry '" + entry.name + "' has no local header");
  const std::uint64_t name_length = header.u(26, 2), extra_length = header.u(28, 2);
  const Bytes name(source, local + kLocalHeaderSize, name_length, "a local name");
  if (name.text(0, name_length) != entry.name)
    fail(source, "entry '" + entry.name + "' has a different local name");
  return local + kLocalHeaderSize + name_length + extra_length;
}

// The bytes an entry occupies: its local header, name, extra field and data.
struct Extent {
  std::uint64_t begin, end;
  const std::string* name;
};

ZipEntry read_entry(const Source& source, const Bytes& dir, std::uint64_t& at, Extent& extent) {
  if (dir.u(at, 4) != kCentralSignature) fail(source, "central directory entry missing");
  const std::uint64_t flags = dir.u(at + 8, 2), method = dir.u(at + 10, 2);
  std::uint64_t compressed = dir.u(at + 20, 4), size = dir.u(at + 24, 4);
  const std::uint64_t name_length = dir.u(at + 28, 2), extra_length = dir.u(at + 30, 2),
                      comment_length = dir.u(at + 32, 2);
  std::uint64_t local = dir.u(at + 42, 4);
  ZipEntry entry;
  entry.name = std::string(dir.text(at + kCentralHeaderSize, name_length));
  std::uint64_t* fields[3] = {&size, &compressed, &local};
  apply_zip64_extra(source, dir, at + kCentralHeaderSize + name_length, extra_length, fields);
  at += kCentralHeaderSize + name_length + extra_length + comment_length;

  if (flags & kFlagEncrypted) fail(source, "entry '" + entry.name + "' is encrypted");
  const std::uint64_t offset = data_offset(source, entry, local);
  if (offset > source.size() || compressed > source.size() - offset)
    fail(source, "entry '" + entry.name + "' runs past the end of the file");
  extent = {local, offset + compressed, nullptr};
  if (method != kMethodStored) {
    entry.stored = false;
    entry.deflated = method == kMethodDeflated;
    entry.offset = offset;
    entry.size = size;
    entry.compressed_size = compressed;
    return entry;
  }
  if (compressed != size) fail(source, "entry '" + entry.name + "' has inconsistent sizes");
  entry.offset = offset;
  entry.size = size;
  entry.compressed_size = size;
  return entry;
}

// Each byte of the file belongs to one entry at most, or to the central
// directory: entries that share bytes would let one stretch of the file back
// several storages.
void check_disjoint(const Source& source, std::vector<Extent> extents, const Directory& directory) {
  static const std::string kDirectory = "the central directory";
  extents.push_back({directory.offset, directory.offset + directory.size, &kDirectory});
  std::sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  const auto what = [](const Extent& e) { return e.name == &kDirectory ? kDirectory : "entry '" + *e.name + "'"; };
  for (std::size_t i = 1; i < extents.size(); ++i)
    if (extents[i].begin < extents[i - 1].end)
      fail(source, what(extents[i - 1]) + " and " + what(extents[i]) + " share bytes " +
                       std::to_string(extents[i].begin) + " to " +
                       std::to_string(std::min(extents[i].end, extents[i - 1].end)) +
                       ": each byte of an archive belongs to one entry");
}

}  // namespace

bool looks_like_zip(const Source& source) {
  if (source.size() < 4) return false;
  unsigned char magic[4];
  source.read(0, magic, sizeof magic);
  return little_endian(magic, 4) == kLocalSignature;
}

ZipArchive::ZipArchive(std::shared_ptr<Source> source) : source_(std::move(source)) {
  const Directory directory = read_directory(*source_);
  const Bytes dir(*source_, directory.offset, directory.size, "central directory");
  std::uint64_t at = 0;
  entries_.reserve(directory.count);
  std::vector<Extent> extents(directory.count);
  for (std::uint64_t i = 0; i < directory.count; ++i) entries_.push_back(read_entry(*source_, dir, at, extents[i]));
  for (std::uint64_t i = 0; i < directory.count; ++i) extents[i].name = &entries_[i].name;
  check_disjoint(*source_, std::move(extents), directory);
  std::sort(entries_.begin(), entries_.end(),
            [](const ZipEntry& a, const ZipEntry& b) { return a.name < b.name; });
  for (std::size_t i = 1; i < entries_.size(); ++i)
    if (entries_[i - 1].name == entries_[i].name)
      fail(*source_, "entry '" + entries_[i].name + "' appears twice");
}

const ZipEntry* ZipArchive::find(std::string_view name) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                             [](const ZipEntry& e, std::string_view n) { return e.name < n; });
  if (it == entries_.end() || it->name != name) return nullptr;
  if (!it->stored)
    fail(*source_, "entry '" + it->name + "' is compressed; torch.save stores entries uncompressed");
  return &*it;
}

std::string ZipArchive::read(const ZipEntry& entry) const {
  std::string out(entry.size, '\0');
  source_->read(entry.offset, out.data(), out.size());
  return out;
}

std::optional<std::string> ZipArchive::inflate(const ZipEntry& entry, std::uint64_t max_size) const {
  if (!entry.deflated || entry.size > max_size || entry.size > UINT_MAX) return std::nullopt;
  z_stream z{};
  if (inflateInit2(&z, -MAX_WBITS) != Z_OK) return std::nullopt;  // raw deflate, as zip stores it
  std::string out(entry.size, '\0');
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  constexpr std::uint64_t kPiece = 64 << 10;
  unsigned char piece[kPiece];
  std::uint64_t read = 0;
  int status = Z_OK;
  while (status == Z_OK && read < entry.compressed_size) {
    const std::uint64_t n = std::min(kPiece, entry.compressed_size - read);
    source_->read(entry.offset + read, piece, static_cast<std::size_t>(n));
    read += n;
    z.next_in = piece;
    z.avail_in = static_cast<uInt>(n);
    // Output room stays at its declared size: a stream that would write more stops (Z_BUF_ERROR).
    while (status == Z_OK && z.avail_in > 0) status = ::inflate(&z, Z_NO_FLUSH);
  }
  if (status == Z_OK && z.avail_out == 0) status = ::inflate(&z, Z_FINISH);  // an empty last block
  const bool complete = status == Z_STREAM_END && z.total_out == entry.size;
  inflateEnd(&z);
  if (!complete) return std::nullopt;
  return out;
}

}  // namespace safetensors::detail
