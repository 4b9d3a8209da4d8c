// Writing: the reference's exact bytes, every accepted container, refusals,
// and crash-safety (failure mid-write, disk full, a killed writer).

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "safetensors/load.hpp"
#include "safetensors/save.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

using test::as_string;
using test::error_code_of;
using test::make_file;
using test::read_bytes;
using test::TempDir;

TEST(Save, OneTensorIsTheReferenceBytes) {
  at::Tensor t = at::arange(6, at::kFloat).reshape({1, 2, 3});
  const std::string json = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
  const std::string expected =
      make_file(json + std::string(64 - json.size(), ' '),
                std::string(static_cast<const char*>(t.data_ptr()), 24));
  EXPECT_EQ(as_string(save({{"attn.0", t}})), expected);
}

TEST(Save, NothingIsTheReferenceBytes) {
  EXPECT_EQ(as_string(save(NamedTensors{})), make_file("{}      "));
}

TEST(Save, DataFollowsTheHeaderInDtypeThenNameOrder) {
  at::Tensor f = at::tensor({1.5f, 2.5f});
  at::Tensor l = at::tensor({int64_t{7}});
  at::Tensor b = at::tensor({1, 0, 1}).to(at::kBool);
  std::string bytes = as_string(save({{"f", f}, {"b", b}, {"l", l}}, Metadata{{"format", "pt"}}));
  Header h = parse_header(bytes.data(), bytes.size());
  ASSERT_EQ(h.tensors().size(), 3u);
  EXPECT_EQ(h.tensors()[0].name, "l");
  EXPECT_EQ(h.tensors()[1].name, "f");
  EXPECT_EQ(h.tensors()[2].name, "b");
  const char* data = bytes.data() + h.data_offset();
  EXPECT_EQ(std::memcmp(data, l.data_ptr(), 8), 0);
  EXPECT_EQ(std::memcmp(data + 8, f.data_ptr(), 8), 0);
  EXPECT_EQ(std::memcmp(data + 16, b.data_ptr(), 3), 0);
  EXPECT_EQ(h.metadata(), (Metadata{{"format", "pt"}}));
}

TEST(Save, EveryContainerGivesTheSameBytes) {
  at::Tensor x = at::randn({4}), y = at::randint(0, 9, {2, 2});
  auto expected = save({{"x", x}, {"y", y}});
  torch::OrderedDict<std::string, at::Tensor> od;
  od.insert("y", y);
  od.insert("x", x);
  EXPECT_EQ(save(od), expected);
  EXPECT_EQ(save(std::map<std::string, at::Tensor>{{"y", y}, {"x", x}}), expected);
  EXPECT_EQ(save(std::unordered_map<std::string, at::Tensor>{{"y", y}, {"x", x}}), expected);
  EXPECT_EQ(save(std::vector<std::pair<std::string, at::Tensor>>{{"y", y}, {"x", x}}), expected);
  EXPECT_EQ(save(NamedTensors().add("y", y).add("x", x)), expected);
}

TEST(Save, SaveFileWritesTheSameBytesAsSave) {
  TempDir dir;
  at::Tensor x = at::randn({5, 3});
  save_file({{"x", x}}, dir.file("a.safetensors"), Metadata{{"k", "v"}});
  EXPECT_EQ(read_bytes(dir.file("a.safetensors")), as_string(save({{"x", x}}, Metadata{{"k", "v"}})));
}

TEST(Save, NonContiguousAndConjugateTensorsAreWrittenAsTheirValues) {
  at::Tensor base = at::randn({4, 6});
  at::Tensor t = base.t();
  at::Tensor other = at::randn({4, 6});
  at::Tensor strided = other.index({at::indexing::Slice(), at::indexing::Slice(0, at::indexing::None, 2)});
  at::Tensor z = at::complex(at::randn({3}), at::randn({3}));
  at::Tensor conj = z.conj();  // lazily conjugated view
  at::Tensor neg = at::randn({3}).neg_().neg();
  auto bytes = save({{"t", t}, {"s", strided}, {"c", conj}, {"n", neg}});
  TensorDict back = load(bytes.data(), bytes.size());
  EXPECT_TRUE(at::equal(back["t"], t));
  EXPECT_TRUE(at::equal(back["s"], strided));
  EXPECT_TRUE(at::equal(back["c"], conj.resolve_conj()));
  EXPECT_TRUE(at::equal(back["n"], neg));
  EXPECT_EQ(back["c"].scalar_type(), at::kComplexFloat);
}

TEST(Save, RefusesWhatCannotBeSaved) {
  EXPECT_EQ(error_code_of([] { save({{"u", at::Tensor()}}); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([] { save({{"s", at::eye(3).to_sparse()}}); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([] { save({{"c", at::zeros({2}, at::kComplexDouble)}}); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([] { save({{"m", at::empty({2}, at::TensorOptions().device(at::kMeta))}}); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([] { save({{"__metadata__", at::zeros({2})}}); }), ErrorCode::ReservedName);
  EXPECT_EQ(error_code_of([] {
              save(std::vector<std::pair<std::string, at::Tensor>>{{"a", at::zeros({1})}, {"a", at::ones({1})}});
            }),
            ErrorCode::DuplicateKey);
}

TEST(Save, RefusesTensorsThatShareMemory) {
  at::Tensor w = at::randn({4, 4});
  try {
    save({{"w", w}, {"tied", w}});
    FAIL() << "saved a tensor twice";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("shares memory"), std::string::npos) << e.what();
  }
  EXPECT_EQ(error_code_of([&] { save({{"w", w}, {"row", w[1]}}); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { save({{"w", w}, {"t", w.t()}}); }), ErrorCode::InvalidArgument);
  // Disjoint parts of one storage are separate tensors, as in the reference.
  auto bytes = save({{"top", w.slice(0, 0, 2)}, {"bottom", w.slice(0, 2, 4)}});
  TensorDict back = load(bytes.data(), bytes.size());
  EXPECT_TRUE(at::equal(back["top"], w.slice(0, 0, 2)));
  EXPECT_TRUE(at::equal(back["bottom"], w.slice(0, 2, 4)));
  // Empty tensors share nothing.
  EXPECT_NO_THROW(save({{"e1", w.slice(0, 0, 0)}, {"e2", w.slice(0, 1, 1)}, {"w", w}}));
}

TEST(Save, RawBytesKeepADtypeThisLibTorchLacks) {
  at::Tensor bytes = at::arange(12, at::kByte);
  auto file = save(NamedTensors().add_raw("f8", Dtype::F8_E4M3, {3, 4}, bytes));
  Header h = parse_header(file.data(), file.size());
  EXPECT_EQ(h.tensors()[0].dtype, Dtype::F8_E4M3);
  TensorDict back = load(file.data(), file.size(), LoadOptions().unsupported_as_bytes(true));
  EXPECT_EQ(std::memcmp(back["f8"].contiguous().data_ptr(), bytes.data_ptr(), 12), 0);
  EXPECT_EQ(error_code_of([&] { save(NamedTensors().add_raw("x", Dtype::U16, {5}, bytes)); }),
            ErrorCode::InvalidArgument);  // 12 bytes are not 5 x U16
  EXPECT_EQ(error_code_of([&] { save(NamedTensors().add_raw("x", Dtype::U8, {12}, bytes.to(at::kInt))); }),
            ErrorCode::InvalidArgument);
}

// ---------------------------------------------------------------- files and crash-safety

TEST(SaveFile, AFailedSaveLeavesTheOldFileAndNoTemporaryFile) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_file({{"x", at::ones({3})}}, path);
  const std::string before = read_bytes(path);
  EXPECT_THROW(save_file({{"x", at::ones({3})}, {"u", at::Tensor()}}, path), Error);
  EXPECT_THROW(save_file({{"__metadata__", at::ones({3})}}, path), Error);
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
}

// Progress is reported as each tensor is written, in file order (dtype, then
// name), not in the order the tensors were given; a callback that throws
// aborts the save and leaves the old file.
TEST(SaveFile, ReportsProgressAsEachTensorIsWrittenInFileOrder) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const NamedTensors tensors = NamedTensors()
                                   .add("b", at::ones({4}))                  // 16 bytes
                                   .add("a", at::ones({8}))                  // 32 bytes
                                   .add("c", at::ones({2}, at::kDouble));   // 16 bytes, F64 first
  std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
  save_file(tensors, path, std::nullopt,
            SaveOptions().progress([&](std::uint64_t done, std::uint64_t total) { calls.emplace_back(done, total); }));
  const std::vector<std::pair<std::uint64_t, std::uint64_t>> expected = {{16, 64}, {48, 64}, {64, 64}};
  EXPECT_EQ(calls, expected);
  const std::string before = read_bytes(path);
  int seen = 0;
  EXPECT_THROW(save_file(NamedTensors().add("x", at::zeros({3})).add("y", at::zeros({3})), path, std::nullopt,
                         SaveOptions().progress([&](std::uint64_t, std::uint64_t) {
                           if (++seen == 1) throw std::runtime_error("cancelled");
                         })),
               std::runtime_error);
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
}

// A write that fails mid-file (disk full, quota): RLIMIT_FSIZE makes write()
// fail with EFBIG once the file passes the limit.
TEST(SaveFile, AWriteFailingMidFileLeavesTheOldFile) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_file({{"x", at::ones({3})}}, path);
  const std::string before = read_bytes(path);
  {
    test::FileSizeLimit limit(64 * 1024);
    EXPECT_EQ(error_code_of([&] { save_file({{"big", at::zeros({1 << 20})}}, path); }), ErrorCode::Io);
  }
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
}

// The same on a real full filesystem (a 1 MiB tmpfs): a new file that does not
// fit next to the old one fails with a clear error, the old file is intact and
// no temporary file is left; once there is room, the save succeeds.
TEST(SaveFile, AFullDiskLeavesTheOldFile) {
  TempDir dir;
  const std::optional<std::string> skipped =
      test::with_small_filesystem(dir.path().string(), 1 << 20, [](test::SmallFilesystem& disk) {
        const std::string path = disk.file("m.safetensors");
        const at::Tensor old_values = at::arange(150000, at::kFloat);  // 600 kB of the 1 MiB
        save_file({{"x", old_values}}, path);
        const std::string before = read_bytes(path);
        const at::Tensor new_values = at::full({150000}, 2.0f);  // fits alone, not beside the old file
        try {
          save_file({{"x", new_values}}, path);
          disk.expect(false, "a save that cannot fit succeeded");
        } catch (const Error& e) {
          const std::string what = e.what();
          disk.expect(e.code() == ErrorCode::Io, "code is not Io: " + what);
          disk.expect(what.find("m.safetensors") != std::string::npos, "the error names no file: " + what);
          disk.expect(what.find("No space left on device") != std::string::npos, "no reason given: " + what);
        }
        disk.expect(read_bytes(path) == before, "the old file changed");
        disk.expect(disk.entries() == std::vector<std::string>{"m.safetensors"}, "a temporary file was left");
        disk.expect(at::equal(load_file(path)["x"], old_values), "the old file does not load");
        // Room again (the old file removed): the same save now works.
        std::filesystem::remove(path);
        save_file({{"x", new_values}}, path);
        disk.expect(at::equal(load_file(path)["x"], new_values), "the save after freeing room failed");
      });
  if (skipped) GTEST_SKIP() << *skipped;
}

// A read-only filesystem: saving fails with the reason and leaves the file;
// loading (mapped and positional) still works.
TEST(SaveFile, AReadOnlyFolderIsIoAndLoadsStillWork) {
  TempDir dir;
  const std::optional<std::string> skipped =
      test::with_small_filesystem(dir.path().string(), 1 << 20, [](test::SmallFilesystem& disk) {
        const std::string path = disk.file("m.safetensors");
        save_file({{"x", at::arange(10, at::kFloat)}}, path);
        const std::string before = read_bytes(path);
        disk.make_read_only();
        for (const std::string& target : {path, disk.file("new.safetensors")}) {
          try {
            save_file({{"x", at::zeros({4})}}, target);
            disk.expect(false, "a save on a read-only filesystem succeeded");
          } catch (const Error& e) {
            const std::string what = e.what();
            disk.expect(e.code() == ErrorCode::Io, "code is not Io: " + what);
            disk.expect(what.find(target) != std::string::npos, "the error names no file: " + what);
            disk.expect(what.find("Read-only file system") != std::string::npos, "no reason given: " + what);
          }
        }
        disk.expect(read_bytes(path) == before, "the file changed");
        disk.expect(disk.entries() == std::vector<std::string>{"m.safetensors"}, "a file was added");
        disk.expect(at::equal(load_file(path)["x"], at::arange(10, at::kFloat)), "mapped load failed");
        disk.expect(at::equal(load_file(path, LoadOptions().backend(Backend::Pread))["x"], at::arange(10, at::kFloat)),
                    "pread load failed");
      });
  if (skipped) GTEST_SKIP() << *skipped;
}

TEST(SaveFile, MissingFolderIsIo) {
  TempDir dir;
  EXPECT_EQ(error_code_of([&] { save_file({{"x", at::ones({1})}}, dir.file("no/such/m.safetensors")); }),
            ErrorCode::Io);
  EXPECT_EQ(error_code_of([&] { save_file({{"x", at::ones({1})}}, dir.path().string()); }),
            ErrorCode::Io);
}

TEST(SaveFile, NewFilesFollowTheUmaskAndExistingFilesKeepTheirMode) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  mode_t old = ::umask(022);
  save_file({{"x", at::ones({1})}}, path);
  ::umask(old);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  ::chmod(path.c_str(), 0600);
  save_file({{"x", at::ones({2})}}, path);
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

// A Hugging Face cache: snapshots hold symlinks into blobs/, several snapshots
// may share a blob. Saving at a snapshot's path replaces the link; the blob
// and the other snapshot keep the old bytes. A dangling link becomes a regular
// file (its target is not created); a link to a folder is refused.
TEST(SaveFile, ASymlinkIsReplacedNeverWrittenThrough) {
  TempDir dir;
  namespace fs = std::filesystem;
  fs::create_directories(dir.path() / "blobs");
  fs::create_directories(dir.path() / "snapshots/r1");
  fs::create_directories(dir.path() / "snapshots/r2");
  const std::string blob = dir.file("blobs/5f0c3a");
  save_file({{"x", at::ones({4})}}, blob);
  const std::string old_bytes = read_bytes(blob);
  for (const char* snapshot : {"snapshots/r1/model.safetensors", "snapshots/r2/model.safetensors"})
    fs::create_symlink("../../blobs/5f0c3a", dir.path() / snapshot);
  const std::string link = dir.file("snapshots/r1/model.safetensors");
  save_file({{"x", at::full({4}, 5.0f)}}, link);
  EXPECT_FALSE(fs::is_symlink(link));
  EXPECT_TRUE(fs::is_regular_file(link));
  EXPECT_EQ(load_file(link)["x"][0].item<float>(), 5.0f);
  EXPECT_EQ(read_bytes(blob), old_bytes);
  EXPECT_EQ(load_file(dir.file("snapshots/r2/model.safetensors"))["x"][0].item<float>(), 1.0f);

  const std::string dangling = dir.file("dangling.safetensors");
  fs::create_symlink("nowhere/missing.safetensors", dangling);
  save_file({{"x", at::ones({1})}}, dangling);
  EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(dangling)));
  EXPECT_FALSE(fs::exists(dir.path() / "nowhere"));

  const std::string to_folder = dir.file("folder.safetensors");
  fs::create_symlink("blobs", to_folder);
  EXPECT_EQ(error_code_of([&] { save_file({{"x", at::ones({1})}}, to_folder); }), ErrorCode::Io);
  EXPECT_TRUE(fs::is_symlink(to_folder));
}

// A save removes the temporary files in its folder that no writer holds
// locked, whichever file they were for, and keeps those a writer holds and
// files it did not make.
TEST(SaveFile, StaleTemporaryFilesOfDeadWritersAreRemoved) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const std::string stale = ".m.safetensors.tmp-0123456789abcdef";
  const std::string stale_other = ".other.safetensors.tmp-fedcba9876543210";
  const std::string live = ".m.safetensors.tmp-00000000000000aa";
  const std::string foreign = ".m.safetensors.tmp-notes";
  for (const std::string& name : {stale, stale_other, live, foreign}) test::write_bytes(dir.file(name), "x");
  test::HeldLock writer(dir.file(live));
  save_file({{"x", at::ones({1})}}, path);
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{live, foreign, "m.safetensors"}));
}

// A writer killed at random moments (200 times): the target is always the old or the new
// complete file, and nothing else is left in the folder.
TEST(SaveFile, AKilledWriterLeavesTheOldOrTheNewFile) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  at::Tensor a = at::zeros({1 << 20});  // 4 MiB
  at::Tensor b = at::ones({1 << 20});
  save_file({{"x", a}}, path);
  std::mt19937 rng(7);
  int saw_new = 0;
  for (int trial = 0; trial < 200; ++trial) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (;;) save_file({{"x", (trial % 2) ? a : b}}, path, std::nullopt, SaveOptions().fsync(false));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    TensorDict t = load_file(path);
    ASSERT_EQ(t.size(), 1u);
    const bool is_a = at::equal(t["x"], a), is_b = at::equal(t["x"], b);
    EXPECT_TRUE(is_a || is_b) << "trial " << trial;
    saw_new += is_b;
    // A temporary file can only survive a kill between naming and renaming it;
    // the next save removes it.
    save_file({{"x", a}}, path);
    EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"}) << "trial " << trial;
  }
  EXPECT_GT(saw_new, 0);
}

// ---------------------------------------------------------------- the writer's rules

// A new file gets 0666 & ~umask; one that replaces another keeps its
// permission bits (through a symlink, its target's), never setuid, setgid or
// sticky.
TEST(SaveFile, AReplacingFileKeepsThePermissionBitsButNotSetuidSetgidOrSticky) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const mode_t old_umask = ::umask(027);
  save_file({{"x", at::ones({1})}}, path);
  ::umask(old_umask);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  ASSERT_EQ(::chmod(path.c_str(), 07755), 0);
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  ASSERT_NE(st.st_mode & 04000, 0u) << "setuid did not stick";
  save_file({{"x", at::ones({2})}}, path);
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);

  const std::string target = dir.file("target.safetensors"), link = dir.file("link.safetensors");
  save_file({{"x", at::ones({1})}}, target);
  ASSERT_EQ(::chmod(target.c_str(), 04604), 0);
  std::filesystem::create_symlink("target.safetensors", link);
  save_file({{"x", at::ones({3})}}, link);
  ASSERT_EQ(::lstat(link.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0604u);
  ASSERT_EQ(::stat(target.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 04604u);  // the target is not touched
}

// With fsync, a folder that cannot be flushed (here: it cannot be opened, having
// no read permission) is an error, as for any other flush: the new file is in
// place but may not be durable. Without fsync nothing is flushed.
TEST(SaveFile, AFolderThatCannotBeFlushedIsAnIoError) {
  TempDir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0711), 0);
  const std::string folder = dir.file("write-only");
  std::filesystem::create_directory(folder);
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(folder.c_str(), 65534, 65534), 0);
  }
  ASSERT_EQ(::chmod(folder.c_str(), 0300), 0);
  const std::optional<std::string> skipped = test::without_privileges([&](test::SmallFilesystem& checks) {
    const std::string path = folder + "/m.safetensors";
    try {
      save_file({{"x", at::ones({3})}}, path);
      checks.expect(false, "a save whose folder cannot be flushed succeeded");
    } catch (const Error& e) {
      const std::string what = e.what();
      checks.expect(e.code() == ErrorCode::Io, "code is not Io: " + what);
      checks.expect(what.find(path) != std::string::npos, "the error names no file: " + what);
      checks.expect(what.find("may not survive a crash") != std::string::npos, "no consequence given: " + what);
      checks.expect(what.find("Permission denied") != std::string::npos, "no reason given: " + what);
    }
    checks.expect(at::equal(load_file(path)["x"], at::ones({3})), "the file is not in place");
    save_file({{"x", at::ones({4})}}, path, std::nullopt, SaveOptions().fsync(false));
    checks.expect(at::equal(load_file(path)["x"], at::ones({4})), "the save without fsync failed");
  });
  ::chmod(folder.c_str(), 0700);
  if (skipped) GTEST_SKIP() << *skipped;
}

// Without /proc (some containers and chroots) an unnamed file cannot be given a
// name, so the writer uses a hidden named one from the start; it is locked, so
// a writer killed at any moment leaves the old or the new file, and the next
// save removes what it left.
TEST(SaveFile, WithoutProcTheTemporaryFileIsANamedLockedOne) {
  TempDir dir;
  const std::optional<std::string> skipped =
      test::with_small_filesystem(dir.path().string(), 64 << 20, [](test::SmallFilesystem& disk) {
        if (const std::optional<std::string> why = test::hide_proc()) return disk.expect(false, *why);
        const std::string path = disk.file("m.safetensors");
        const at::Tensor a = at::zeros({1 << 20}), b = at::ones({1 << 20});
        save_file({{"x", a}}, path);
        std::vector<std::string> during;
        save_file({{"x", b}}, path, std::nullopt,
                  SaveOptions().progress([&](std::uint64_t, std::uint64_t) { during = disk.entries(); }));
        disk.expect(during.size() == 2 && during[0].rfind(".m.safetensors.tmp-", 0) == 0,
                    "no hidden temporary file while writing");
        disk.expect(disk.entries() == std::vector<std::string>{"m.safetensors"}, "a temporary file was left");
        disk.expect(at::equal(load_file(path)["x"], b), "the new file is not in place");
        std::mt19937 rng(11);
        int left = 0;
        for (int trial = 0; trial < 60; ++trial) {
          const pid_t pid = test::fork_child([&]() -> int {
            for (;;) save_file({{"x", (trial % 2) ? a : b}}, path, std::nullopt, SaveOptions().fsync(false));
          });
          std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
          ::kill(pid, SIGKILL);
          test::wait_child(pid);
          TensorDict t = load_file(path);
          disk.expect(t.size() == 1 && (at::equal(t["x"], a) || at::equal(t["x"], b)),
                      "trial " + std::to_string(trial) + ": neither the old nor the new file");
          left += disk.entries().size() > 1;
          save_file({{"x", a}}, path);
          disk.expect(disk.entries() == std::vector<std::string>{"m.safetensors"},
                      "trial " + std::to_string(trial) + ": a killed writer's temporary file stayed");
        }
        disk.expect(left > 0, "no kill left a temporary file: the sweep was not exercised");
      });
  if (skipped) GTEST_SKIP() << *skipped;
}

// Liveness is the writer's lock, not a pid: a save in another PID namespace
// (where the writer's pid means nothing, as on another host sharing the
// folder over NFS) keeps the temporary file of a writer still writing it.
TEST(SaveFile, ASaveInAnotherPidNamespaceKeepsALiveWritersTemporaryFile) {
  TempDir dir;
  const std::optional<std::string> skipped =
      test::with_small_filesystem(dir.path().string(), 64 << 20, [](test::SmallFilesystem& disk) {
        if (const std::optional<std::string> why = test::hide_proc()) return disk.expect(false, *why);
        const std::string path = disk.file("m.safetensors");
        const at::Tensor mine = at::full({1000}, 1.0f), theirs = at::full({1000}, 2.0f);
        test::Signal written, go;
        const pid_t writer = test::fork_child([&] {
          save_file({{"x", mine}}, path, std::nullopt, SaveOptions().progress([&](std::uint64_t, std::uint64_t) {
            written.notify();
            go.wait();
          }));
          return 0;
        });
        disk.expect(written.wait(), "the writer did not write");
        const std::vector<std::string> during = disk.entries();
        disk.expect(during.size() == 1 && during[0].rfind(".m.safetensors.tmp-", 0) == 0,
                    "the writer has no hidden temporary file");
        const pid_t sweeper = test::fork_in_new_pid_namespace([&] {
          save_file({{"x", theirs}}, path);
          return 0;
        });
        if (sweeper < 0) {
          disk.expect(false, std::string("no PID namespace: ") + std::strerror(errno));
        } else {
          disk.expect(test::wait_child(sweeper) == 0, "the save in the other PID namespace failed");
          const std::vector<std::string> after = disk.entries();
          disk.expect(!during.empty() && std::count(after.begin(), after.end(), during[0]) == 1,
                      "the live writer's temporary file was removed");
        }
        go.notify();
        disk.expect(test::wait_child(writer) == 0, "the live writer's save failed");
        disk.expect(at::equal(load_file(path)["x"], mine), "the last save is not the writer's");
        disk.expect(disk.entries() == std::vector<std::string>{"m.safetensors"}, "a temporary file was left");
      });
  if (skipped) GTEST_SKIP() << *skipped;
}

}  // namespace
}  // namespace safetensors
