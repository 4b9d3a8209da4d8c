// Hostile input: every file of test/data/hostile (each rule of the format
// broken, alone and together; lying lengths; files seen in the wild) and huge
// generated ones (a million nesting levels, a million tensors, keys of tens of
// megabytes). Every reader must refuse each with its error code, in bounded
// time and memory. The same for the hostile checkpoints there (code that would
// run, names and views that multiply a small file) through every migration
// entry point, and for pickles made here. Also: files truncated or replaced
// after they were opened, and slice indices at the ends of int64.

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include "safetensors/load.hpp"
#include "safetensors/migrate.hpp"
#include "safetensors/save.hpp"
#include "test_util.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SAFETENSORS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SAFETENSORS_SANITIZED 1
#endif
#endif

namespace safetensors {
namespace {

using test::error_code_of;
using test::make_file;
using test::TempDir;
namespace fs = std::filesystem;

#ifdef SAFETENSORS_SANITIZED
// Sanitizers slow code down and add their own memory (shadow, quarantine):
// time bounds are relaxed, the huge cases shrink and memory is not measured.
constexpr double kSlowdown = 10;
constexpr int kShrink = 10;
constexpr bool kMeasureMemory = false;
#else
constexpr double kSlowdown = 1;
constexpr int kShrink = 1;
constexpr bool kMeasureMemory = true;
#endif

const fs::path kCorpus = fs::path(SAFETENSORS_TEST_DATA_DIR) / "hostile";

// A field of /proc/self/status, in bytes.
std::uint64_t status_bytes(const std::string& field) {
  const long kb = test::status_kb(field);
  if (kb < 0) {
    ADD_FAILURE() << "no " << field << " in /proc/self/status";
    return 0;
  }
  return static_cast<std::uint64_t>(kb) * 1024;
}

// CPU time of the calling thread: unlike wall time, not inflated by a busy machine.
double thread_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Runs `read`, which must throw `expected` (or, when unset, return), within
// `seconds` of CPU time and growing the peak resident memory by at most
// `memory` (by default 64 MB plus four times the file).
void expect_outcome(const std::string& what, std::optional<ErrorCode> expected, std::uint64_t file_size,
                    double seconds, const std::function<void()>& read, std::uint64_t memory = 0) {
  if (kMeasureMemory) {
    test::reset_peak_memory();
  }
  const std::uint64_t before = kMeasureMemory ? status_bytes("VmRSS") : 0;
  const double start = thread_seconds();
  std::string got = "accepted";
  try {
    read();
  } catch (const Error& e) {
    got = to_string(e.code());
  } catch (const std::exception& e) {
    got = std::string("a non-safetensors exception: ") + e.what();
  }
  const double took = thread_seconds() - start;
  EXPECT_EQ(got, expected ? std::string(to_string(*expected)) : "accepted") << what;
  EXPECT_LT(took, seconds * kSlowdown) << what;
  if (kMeasureMemory) {
    const std::uint64_t peak = status_bytes("VmHWM");
    const std::uint64_t grew = peak > before ? peak - before : 0;
    EXPECT_LT(grew, memory ? memory : (64u << 20) + 4 * file_size) << what << ": peak memory grew by " << grew;
  }
}

void expect_refused(const std::string& what, ErrorCode expected, std::uint64_t file_size,
                    double seconds, const std::function<void()>& read) {
  expect_outcome(what, expected, file_size, seconds, read);
}

// Every reader: the header parser over bytes, load() from memory, and SafeOpen
// over the file with each backend, loading every tensor.
void expect_every_reader_refuses(const std::string& path, ErrorCode expected, double seconds) {
  const std::string bytes = test::read_bytes(path);
  const std::string name = fs::path(path).filename().string();
  expect_refused(name + " (parse_header)", expected, bytes.size(), seconds,
                 [&] { parse_header(bytes.data(), bytes.size(), path); });
  expect_refused(name + " (load from memory)", expected, bytes.size(), seconds,
                 [&] { load(bytes.data(), bytes.size()); });
  for (Backend backend : {Backend::Mmap, Backend::Pread})
    expect_refused(name + (backend == Backend::Mmap ? " (mmap)" : " (pread)"), expected,
                   bytes.size(), seconds,
                   [&] { SafeOpen(path, LoadOptions().backend(backend)).tensors(); });
}

ErrorCode code_named(const std::string& name) {
  for (int c = 0; c < 64; ++c)
    if (name == to_string(static_cast<ErrorCode>(c))) return static_cast<ErrorCode>(c);
  throw std::runtime_error("unknown error code " + name);
}

// The rows (file, outcome) of a TSV of the corpus; every file of the corpus
// with `extension` must be listed.
std::vector<std::pair<std::string, std::string>> corpus_rows(const std::string& tsv_name,
                                                             const std::string& extension) {
  std::ifstream tsv(kCorpus / tsv_name);
  EXPECT_TRUE(tsv) << "missing " << kCorpus / tsv_name;
  std::vector<std::pair<std::string, std::string>> rows;
  std::set<std::string> listed;
  for (std::string line; std::getline(tsv, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string file, outcome;
    std::getline(fields, file, '\t');
    std::getline(fields, outcome, '\t');
    listed.insert(file);
    rows.emplace_back(file, outcome);
  }
  for (const auto& entry : fs::directory_iterator(kCorpus)) {
    if (entry.path().extension() == extension) {
      EXPECT_TRUE(listed.count(entry.path().filename().string())) << entry.path() << " is not in " << tsv_name;
    }
  }
  return rows;
}

TEST(HostileCorpus, EveryFileIsRefusedWithItsCode) {
  const auto rows = corpus_rows("expected.tsv", ".safetensors");
  for (const auto& [file, code] : rows) expect_every_reader_refuses((kCorpus / file).string(), code_named(code), 2.0);
  EXPECT_GT(rows.size(), 50u);
}

// ------------------------------------------------------- hostile checkpoints

// read_checkpoint, convert_checkpoint and diff_checkpoints, with each backend:
// the same outcome from each, in bounded time and memory. Nothing is written
// when the input is refused.
void expect_every_migration(const std::string& path, std::optional<ErrorCode> expected, double seconds,
                            std::uint64_t memory = 0) {
  const std::string name = fs::path(path).filename().string();
  const std::uint64_t size = fs::file_size(path);
  TempDir out;
  for (Backend backend : {Backend::Mmap, Backend::Pread}) {
    const std::string how = backend == Backend::Mmap ? " (mmap)" : " (pread)";
    const CheckpointOptions options = CheckpointOptions().backend(backend);
    expect_outcome(name + how + " read_checkpoint", expected, size, seconds,
                   [&] { read_checkpoint(path, options); }, memory);
    expect_outcome(name + how + " diff_checkpoints", expected, size, seconds,
                   [&] { diff_checkpoints(path, path, options, options); }, memory);
    const std::string converted = out.file("out.safetensors");
    expect_outcome(name + how + " convert_checkpoint", expected, size, seconds,
                   [&] { convert_checkpoint(path, converted, ConvertOptions().backend(backend).fsync(false)); },
                   memory);
    EXPECT_EQ(fs::exists(converted), !expected) << name << how;
    fs::remove(converted);
  }
}

// The memory a checkpoint's reading may take: what its pickle's values may
// (48 bytes per byte of pickle, see csrc/pickle/unpickler.hpp) and its names
// and entries may (kFlattenBytesPerPickleByte), charged at what they hold,
// plus 64 MB.
std::uint64_t checkpoint_memory_bound(std::uint64_t file_size) {
  return (64u << 20) + (48 + kFlattenBytesPerPickleByte) * file_size;
}

// rank24_views_100k.pt: 100,000 views of rank 24 in 1.6 MB, each holding a
// TensorImpl, its sizes and strides and its places in the checkpoint, took
// 202 MB before what they hold was charged.
TEST(HostileCheckpoints, EveryCheckpointHasItsOutcome) {
  const auto rows = corpus_rows("checkpoints.tsv", ".pt");
  for (const auto& [file, code] : rows) {
    SCOPED_TRACE(file);
    const std::string path = (kCorpus / file).string();
    expect_every_migration(path, code == "accepted" ? std::nullopt : std::optional<ErrorCode>(code_named(code)),
                           2.0, checkpoint_memory_bound(fs::file_size(path)));
  }
  EXPECT_GE(rows.size(), 7u);
}

// A torch.save-shaped archive of one pickle (and no storages), made here.
std::string archive_of(const std::string& pickle) {
  auto le = [](std::uint64_t v, int bytes) {
    std::string out;
    for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
    return out;
  };
  const std::string name = "archive/data.pkl";
  const std::string local = le(0x04034b50, 4) + le(20, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(0, 4) +
                            le(pickle.size(), 4) + le(pickle.size(), 4) + le(name.size(), 2) + le(0, 2) + name;
  const std::string central = le(0x02014b50, 4) + le(20, 2) + le(20, 2) + le(0, 2) + le(0, 2) + le(0, 4) +
                              le(0, 4) + le(pickle.size(), 4) + le(pickle.size(), 4) + le(name.size(), 2) +
                              le(0, 2) + le(0, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(0, 4) + name;
  return local + pickle + central + le(0x06054b50, 4) + le(0, 2) + le(0, 2) + le(1, 2) + le(1, 2) +
         le(central.size(), 4) + le(local.size() + pickle.size(), 4) + le(0, 2);
}

// The values a pickle makes take memory in proportion to it: a million
// one-byte EMPTY_LIST opcodes (each a new value of about 128 bytes) are
// refused once their values need 48 bytes of memory per byte of pickle, plus
// 16 MiB, not once they have all been made.
TEST(HostileCheckpoints, APickleOfOneByteValues) {
  TempDir dir;
  const std::string path = dir.file("lists.pt");
  const std::size_t n = 1u << 20;
  test::write_bytes(path, archive_of("\x80\x02" + std::string(n, ']') + "."));
  expect_every_migration(path, ErrorCode::LimitExceeded, 4.0, (16u << 20) + 48 * n + (16u << 20));
}

// What a value holds is charged, not just its size: a 20 MB pickle of 10
// million empty dicts each popped at once (`}0`) went past its 48 bytes per
// byte of pickle, plus 16 MiB (by 70 MB with the mapped pickle and its copy),
// before LimitExceeded, 120 bytes charged for each of its values and 126 held.
TEST(HostileCheckpoints, APickleOfTinyContainers) {
  TempDir dir;
  const std::string path = dir.file("dicts.pt");
  std::string pickle = "\x80\x02";
  for (int i = 0; i < 10'000'000 / kShrink; ++i) pickle += "}0";
  test::write_bytes(path, archive_of(pickle + "N."));
  const std::uint64_t size = fs::file_size(path);
  const std::uint64_t budget = (16u << 20) + 48 * size;
  expect_outcome("mmap", ErrorCode::LimitExceeded, size, 4.0, [&] { read_checkpoint(path); },
                 budget + 2 * size + (8u << 20));
  expect_outcome("pread", ErrorCode::LimitExceeded, size, 4.0,
                 [&] { read_checkpoint(path, CheckpointOptions().backend(Backend::Pread)); },
                 budget + size + (8u << 20));
}

// A legacy torch.save file whose second pickle (the protocol version) starts
// with a FRAME that claims 2^40 bytes, followed by `padding` bytes of zeros:
// a claim to check against the file, never to read a window for.
std::string legacy_with_lying_frame(const TempDir& dir, std::uint64_t padding) {
  const std::string path = dir.file("frame.pt");
  const std::string magic = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
  std::string frame = "\x80\x04\x95";
  for (int i = 0; i < 8; ++i) frame += static_cast<char>(((std::uint64_t{1} << 40) >> (8 * i)) & 0xff);
  test::write_bytes(path, magic + frame + "M\xe9\x03.");
  fs::resize_file(path, fs::file_size(path) + padding);
  return path;
}

// The pread backend read windows of a legacy file doubled until a FRAME's
// claim fit: the whole file (461 MB for a 160 MB one, 162 MB mapped).
TEST(HostileCheckpoints, AFrameClaimIsCheckedAgainstTheFile) {
  TempDir dir;
  const std::string path = legacy_with_lying_frame(dir, 256u << 20);
  for (Backend backend : {Backend::Mmap, Backend::Pread})
    expect_outcome(backend == Backend::Mmap ? "mmap" : "pread", ErrorCode::InvalidCheckpoint,
                   fs::file_size(path), 2.0, [&] { read_checkpoint(path, CheckpointOptions().backend(backend)); },
                   16u << 20);
  // Under an address-space limit 128 MB above what the process uses, where a
  // window of the file's size cannot be allocated.
  const pid_t child = test::fork_child([&] {
    const long used = test::status_kb("VmSize");
    if (used < 0) return 4;
    struct rlimit limit {};
    ::getrlimit(RLIMIT_AS, &limit);
    limit.rlim_cur = static_cast<rlim_t>(used) * 1024 + (128u << 20);
    if (::setrlimit(RLIMIT_AS, &limit) != 0) return 5;
    try {
      read_checkpoint(path, CheckpointOptions().backend(Backend::Pread));
    } catch (const Error& e) {
      return e.code() == ErrorCode::InvalidCheckpoint ? 0 : 2;
    } catch (const std::bad_alloc&) {
      return 3;
    }
    return 6;
  });
  ASSERT_GT(child, 0);
  EXPECT_EQ(test::wait_child(child), 0) << "2: another error, 3: bad_alloc, 6: accepted";
}

// A legacy torch.save file whose object pickle makes `n` empty lists, drops
// them (POP_MARK) and is None, followed by `padding` bytes of zeros after its
// empty storage list.
std::string legacy_of_lists(const TempDir& dir, std::size_t n, std::uint64_t padding) {
  const std::string path = dir.file("lists_legacy.pt");
  const std::string magic = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
  const std::string version = "\x80\x02M\xe9\x03.";
  const std::string sys_info = std::string("\x80\x02}X\x0d\x00\x00\x00little_endian\x88s.", 24);
  test::write_bytes(path, magic + version + sys_info + "\x80\x02(" + std::string(n, ']') + "1N." + "\x80\x02].");
  fs::resize_file(path, fs::file_size(path) + padding);
  return path;
}

// A legacy file holds its pickles back to back: each pickle's values were
// allowed 48 bytes per byte of the rest of the file, so zeros after a 1 MiB
// pickle of EMPTY_LIST let it make every value (1.64 GB for a 50 MB file with
// a 10 MB pickle). Its values may take 48 bytes per byte of the pickle, plus 16 MiB.
TEST(HostileCheckpoints, ALegacyPickleIsBudgetedOnItsOwnBytes) {
  TempDir dir;
  const std::size_t n = 1u << 20;
  const std::string path = legacy_of_lists(dir, n, 256u << 20);
  EXPECT_EQ(detect_format(path), CheckpointFormat::TorchLegacy);
  expect_every_migration(path, ErrorCode::LimitExceeded, 4.0, (16u << 20) + 48 * n + (16u << 20));
}

// A data.pkl that ends inside the FRAME after its PROTO: detecting a
// TorchScript archive read past its head (std::out_of_range).
TEST(HostileCheckpoints, AFrameAtTheEndOfAShortPickle) {
  TempDir dir;
  for (const std::string pickle : {"\x80\x02\x95", "\x80\x02\x95\x01\x00", "\x80\x04\x95\x00\x00\x00\x00"}) {
    const std::string path = dir.file("short.pt");
    test::write_bytes(path, archive_of(pickle));
    expect_every_migration(path, ErrorCode::InvalidCheckpoint, 2.0);
    EXPECT_EQ(detect_format(path), CheckpointFormat::TorchZip);
  }
}

// Selecting a key compares the keys in place: a 1 MiB key repeated 300,000
// times through the memo is not copied once per entry (13.9 s before).
TEST(HostileCheckpoints, SelectingAKeyDoesNotCopyRepeatedKeys) {
  const std::string path = (kCorpus / "repeated_key_1mib.pt").string();
  expect_outcome("repeated_key_1mib.pt --key zzz", ErrorCode::TensorNotFound, fs::file_size(path), 2.0,
                 [&] { read_checkpoint(path, CheckpointOptions().key({"zzz"})); });
}

// A view under many names is compared once by diff: tied_expand_20k.pt's
// 20,000 names of one 2 MiB expand were compared one by one (42 GB, 40 s of
// CPU), as were the names a converted file records as aliases. Each name is
// still reported.
TEST(HostileCheckpoints, DiffComparesASharedViewOnce) {
  const std::string path = (kCorpus / "tied_expand_20k.pt").string();
  TempDir dir;
  const std::string converted = dir.file("tied.safetensors");
  convert_checkpoint(path, converted, ConvertOptions().fsync(false));
  for (const std::string& other : {path, converted}) {
    DiffReport report;
    expect_outcome("diff with " + other, std::nullopt, fs::file_size(path), 2.0,
                   [&] { report = diff_checkpoints(path, other); });
    EXPECT_TRUE(report.equal());
    EXPECT_EQ(report.identical, 20'000u);
  }
}

// A safetensors file of one tensor and a million metadata entries naming it as
// a removed tie (`"f4240":"t"`, 11 bytes each).
std::string many_metadata_aliases(const TempDir& dir, std::size_t n) {
  std::string json = R"({"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"__metadata__":{)";
  char key[32];
  for (std::size_t i = 0; i < n; ++i) {
    std::snprintf(key, sizeof key, "%s\"%zx\":\"t\"", i ? "," : "", i);
    json += key;
  }
  const std::string path = dir.file("aliases.safetensors");
  test::write_bytes(path, make_file(json + "}}", "abcd"));
  return path;
}

// The resident memory `f` adds at its peak, in bytes, measured in a child
// process (so that memory this one freed earlier and kept does not hide it);
// `f` must be accepted.
std::uint64_t peak_in_child(const std::function<void()>& f) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  const pid_t child = test::fork_child([&] {
    const long kb = test::peak_added_kb(f);
    return ::write(fds[1], &kb, sizeof kb) == sizeof kb ? 0 : 1;
  });
  long kb = -1;
  if (child < 0 || test::wait_child(child) != 0 || ::read(fds[0], &kb, sizeof kb) != sizeof kb) kb = -1;
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_GE(kb, 0) << "the child failed";
  return kb > 0 ? static_cast<std::uint64_t>(kb) * 1024 : 0;
}

// A metadata entry takes a std::map node, whatever its text: 112 bytes with
// the allocator's, for 6 bytes of header at the least (`"":"",`).
constexpr std::uint64_t kMetadataEntryBytes = 112;

// A million metadata entries naming the one tensor as a removed tie: each
// became a tensor of the checkpoint with its places in it (1.09 GB to diff a
// 25 MB file of 2 million). The parser holds one std::map node per entry; a
// checkpoint read from the file holds them as its aliases besides, and
// convert and diff hold one more copy.
TEST(HostileCheckpoints, AMillionMetadataAliases) {
  if (!kMeasureMemory) GTEST_SKIP() << "memory is not measured under sanitizers";
  TempDir dir;
  const std::size_t n = 1'000'000;
  const std::string path = many_metadata_aliases(dir, n);
  const std::uint64_t size = fs::file_size(path);
  const std::uint64_t floor = (64u << 20) + 4 * size;
  const std::string bytes = test::read_bytes(path);
  auto check = [&](const std::string& what, int copies, const std::function<void()>& f) {
    const std::uint64_t grew = peak_in_child(f);
    EXPECT_LT(grew, floor + copies * kMetadataEntryBytes * n) << what << ": peak memory grew by " << grew;
  };
  check("parse_header", 1, [&] { parse_header(bytes.data(), bytes.size(), path); });
  for (Backend backend : {Backend::Mmap, Backend::Pread})
    check("SafeOpen", 1, [&] { SafeOpen(path, LoadOptions().backend(backend)).tensors(); });
  check("read_checkpoint", 2, [&] {
    const Checkpoint c = read_checkpoint(path);
    if (c.tensors.size() != 1 || c.aliases.size() != n) std::_Exit(3);
  });
  check("diff_checkpoints", 3, [&] {
    if (diff_checkpoints(path, path).identical != n + 1) std::_Exit(3);
  });
  check("convert_checkpoint", 3,
        [&] { convert_checkpoint(path, dir.file("o.safetensors"), ConvertOptions().fsync(false)); });
  // save_sharded takes a copy of the metadata it is given.
  check("convert_checkpoint, sharded", 4, [&] {
    convert_checkpoint(path, dir.file("o"), ConvertOptions().fsync(false).max_shard_size(2));
  });
}

// ------------------------------------------------------- huge, generated here

class HugeFile : public ::testing::Test {
 protected:
  void expect(const std::string& json, const std::string& data, ErrorCode code) {
    const std::string path = dir_.file("huge.safetensors");
    test::write_bytes(path, make_file(json, data));
    expect_every_reader_refuses(path, code, 8.0);
  }
  TempDir dir_;
};

TEST_F(HugeFile, AMillionNestingLevels) {
  const std::string deep = std::string(1'000'000, '[') + std::string(1'000'000, ']');
  expect(deep, "", ErrorCode::InvalidHeaderDeserialization);
  expect(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":)" + deep + "}}", "x",
         ErrorCode::InvalidHeaderDeserialization);
  expect(R"({"__metadata__":)" + std::string(1'000'000, '{'), "",
         ErrorCode::InvalidHeaderDeserialization);
}

TEST_F(HugeFile, AMillionTinyTensors) {
  // Valid but for one trailing byte, so every tensor is parsed and checked;
  // listed in reverse so that sorting them by offset does work.
  constexpr int kCount = 1'000'000 / kShrink;
  std::string json = "{";
  for (int i = kCount - 1; i >= 0; --i) {
    json += "\"t" + std::to_string(i) + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" +
            std::to_string(i) + "," + std::to_string(i + 1) + "]}";
    json += i ? "," : "}";
  }
  expect(json, std::string(kCount + 1, '\0'), ErrorCode::MetadataIncompleteBuffer);
}

TEST_F(HugeFile, KeysAndStringsOfTensOfMegabytes) {
  const std::string big((32u << 20) / kShrink, 'k');
  expect("{\"" + big + R"(":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", std::string(4, '\0'),
         ErrorCode::TensorInvalidInfo);
  expect(R"({"__metadata__":{")" + big + R"(":"v",")" + big + R"(":"w"}})", "",
         ErrorCode::DuplicateKey);
  expect(R"({"__metadata__":{"k":")" + big + R"("}})", "trailing",
         ErrorCode::MetadataIncompleteBuffer);
  expect(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"note":")" + big + R"("}})", "",
         ErrorCode::MetadataIncompleteBuffer);
}

TEST_F(HugeFile, AHeaderAtTheLimitInATinyFile) {
  // The length says 100 MB; nothing may be allocated for it.
  std::string file(8, '\0');
  const std::uint64_t n = kMaxHeaderSize;
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  const std::string path = dir_.file("lying.safetensors");
  test::write_bytes(path, file + "{}");
  expect_every_reader_refuses(path, ErrorCode::InvalidHeaderLength, 2.0);
}

// --------------------------------------------- files that change after opening

// The pread backend reads the file as it is now and reports a file that shrank.
TEST(ChangedFile, PreadReportsTruncationForTensorsAndSlices) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_file({{"a", at::arange(1000, at::kFloat)}, {"b", at::arange(64, at::kInt).reshape({8, 8})}},
            path);
  SafeOpen f(path, LoadOptions().backend(Backend::Pread));
  ASSERT_EQ(::truncate(path.c_str(), 0), 0);
  for (const std::string& name : f.keys()) {
    EXPECT_EQ(error_code_of([&] { f.get_tensor(name); }), ErrorCode::FileChanged) << name;
    EXPECT_EQ(error_code_of([&] { f.get_slice(name)({at::indexing::Slice(0, 2)}); }),
              ErrorCode::FileChanged)
        << name;
    // Many small runs take the path that reads the whole span at once.
    EXPECT_EQ(error_code_of([&] {
                f.get_slice(name)({at::indexing::Slice(at::indexing::None, at::indexing::None, 2)});
              }),
              ErrorCode::FileChanged)
        << name;
  }
}

// Replacing a file (a new file renamed over it, as every safe writer does)
// leaves open handles on the old contents, with both backends.
TEST(ChangedFile, AReplacedFileKeepsItsOldContents) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const at::Tensor old_values = at::arange(256, at::kFloat);
  save_file({{"x", old_values}}, path);
  SafeOpen mapped(path, LoadOptions().backend(Backend::Mmap));
  SafeOpen pread(path, LoadOptions().backend(Backend::Pread));
  save_file({{"x", at::zeros({256}, at::kFloat)}}, path);
  EXPECT_TRUE(at::equal(mapped.get_tensor("x"), old_values));
  EXPECT_TRUE(at::equal(pread.get_tensor("x"), old_values));
  EXPECT_TRUE(at::equal(pread.get_slice("x")({at::indexing::Slice(10, 20)}), old_values.slice(0, 10, 20)));
}

// A mapping of a file truncated in place faults (SIGBUS) when a page past the
// new end is touched: documented in the README; use the pread backend for
// files that may shrink. Sanitizers catch the signal themselves.
TEST(ChangedFile, MmapOfATruncatedFileRaisesSigbus) {
#ifdef SAFETENSORS_SANITIZED
  GTEST_SKIP() << "the sanitizer runtime handles SIGBUS itself";
#endif
  ::testing::GTEST_FLAG(death_test_style) = "threadsafe";  // LibTorch may have started threads
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_file({{"x", at::arange(1 << 16, at::kFloat)}}, path);
  EXPECT_EXIT(
      {
        SafeOpen f(path, LoadOptions().backend(Backend::Mmap));
        if (::truncate(path.c_str(), 0) != 0) std::_Exit(3);
        at::Tensor x = f.get_tensor("x");
        std::printf("%f\n", x.sum().item<double>());  // touches every page
        std::_Exit(0);
      },
      ::testing::KilledBySignal(SIGBUS), "");
}

// ------------------------------------------------------ slices at int64's ends

TEST(HostileSlice, IndicesAtTheEndsOfInt64) {
  using at::indexing::Slice;
  const std::vector<std::uint8_t> bytes = save({{"x", at::arange(6, at::kByte)}});
  SafeOpen f(copy_buffer(bytes.data(), bytes.size()));
  const TensorSlice s = f.get_slice("x");
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
  EXPECT_EQ(s({Slice(0, kMax, kMax)}).sizes(), at::IntArrayRef({1}));
  EXPECT_EQ(s({Slice(kMin, kMax, kMax - 1)}).sizes(), at::IntArrayRef({1}));
  EXPECT_EQ(s({Slice(kMax, kMin)}).sizes(), at::IntArrayRef({0}));
  EXPECT_EQ(s({Slice(5, kMax, kMax)}).item<std::uint8_t>(), 5);
  EXPECT_EQ(error_code_of([&] { s({kMin}); }), ErrorCode::InvalidSlice);
  EXPECT_EQ(error_code_of([&] { s({kMax}); }), ErrorCode::InvalidSlice);
}

}  // namespace
}  // namespace safetensors
