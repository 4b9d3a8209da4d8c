// Reading into torch: zero-copy views and their lifetime, backends, options,
// unaligned data, unsupported dtypes, errors.

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <fstream>
#include <sstream>
#include <thread>
#include <type_traits>

#include <ATen/core/grad_mode.h>

#include "upload.hpp"
#include "safetensors/load.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "safetensors/torch_dtype.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

using test::error_code_of;
using test::make_file;
using test::TempDir;

class Load : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(1);
    a_ = at::randn({3, 4});
    b_ = at::arange(10, at::kLong);
    path_ = dir_.file("model.safetensors");
    save_file({{"a", a_}, {"b", b_}}, path_, Metadata{{"format", "pt"}});
  }
  TempDir dir_;
  std::string path_;
  at::Tensor a_, b_;
};

TEST_F(Load, LoadFileReturnsTensorsInFileOrderWithValues) {
  TensorDict t = load_file(path_);
  ASSERT_EQ(t.size(), 2u);
  // The writer puts I64 before F32: file order, not insertion order.
  EXPECT_EQ(t.keys(), (std::vector<std::string>{"b", "a"}));
  EXPECT_TRUE(at::equal(t["a"], a_));
  EXPECT_TRUE(at::equal(t["b"], b_));
}

// An eager load (copy(true)) adds the tensors to resident memory and nothing
// else: by default it reads with pread, so the file's pages are not mapped
// into the process beside the copies (as they would be with the mmap backend).
TEST_F(Load, AnEagerLoadAddsOnlyTheTensorsToResidentMemory) {
  const std::string path = dir_.file("big.safetensors");
  save_file({{"a", at::ones({4 << 20})}, {"b", at::full({4 << 20}, 2.0f)}}, path);  // 32 MiB
  TensorDict loaded;
  const long added_kb = test::peak_added_kb([&] { loaded = load_file(path, LoadOptions().copy(true)); });
  EXPECT_LT(added_kb, 32 * 1024 * 11 / 10) << "the tensors are 32 MiB";
  EXPECT_TRUE(at::equal(loaded["b"], at::full({4 << 20}, 2.0f)));
  // The mmap backend, asked for, still works (and maps the pages).
  EXPECT_TRUE(at::equal(load_file(path, LoadOptions().copy(true).backend(Backend::Mmap))["a"], at::ones({4 << 20})));
}

// The VmFlags of the mapping that holds `p` in /proc/self/smaps, with spaces
// around each flag; "" when no mapping holds it.
std::string vm_flags_at(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    std::uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream range(line);
    if (range >> std::hex >> begin >> dash >> end && dash == '-' && line.find(':') > line.find(' ')) {
      inside = begin <= address && address < end;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line.substr(8) + " ";
    }
  }
  return "";
}

bool is_mapped(const void* p) {
  const long page = ::sysconf(_SC_PAGESIZE);
  void* start = reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(p) / page * page);
  unsigned char resident = 0;
  return ::mincore(start, 1, &resident) == 0 || errno != ENOMEM;
}

bool kernel_has_transparent_huge_pages() {
  return std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good();
}

// With huge_pages(true), owned tensors of 2 MiB or more get their own
// huge-page-aligned mapping, advised to use transparent huge pages; small
// ones, and every tensor by default, come from LibTorch's allocator. Each
// mapping goes when its tensor does.
TEST_F(Load, LargeOwnedTensorsGetHugePagesOfTheirOwn) {
  const std::string path = dir_.file("large.safetensors");
  const at::Tensor big = at::randn({(3 << 20) / 4 + 5});  // 3 MiB and 20 bytes: not whole pages
  const at::Tensor small = at::randn({1000});
  save_file({{"big", big}, {"small", small}}, path);
  for (const LoadOptions& options :
       {LoadOptions().copy(true).huge_pages(true), LoadOptions().backend(Backend::Pread).huge_pages(true)}) {
    const void* address = nullptr;
    {
      TensorDict loaded = load_file(path, options);
      const at::Tensor& t = loaded["big"];
      EXPECT_TRUE(at::equal(t, big));
      EXPECT_TRUE(at::equal(loaded["small"], small));
      address = t.data_ptr();
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(address) % (2 << 20), 0u);
      if (kernel_has_transparent_huge_pages()) {
        EXPECT_NE(vm_flags_at(address).find(" hg "), std::string::npos) << vm_flags_at(address);
        EXPECT_EQ(vm_flags_at(loaded["small"].data_ptr()).find(" hg "), std::string::npos);
      }
      ASSERT_TRUE(is_mapped(address));
    }
    EXPECT_FALSE(is_mapped(address)) << "the tensor's mapping outlived it";
  }
  // A large slice is owned memory too.
  const at::Tensor most = SafeOpen(path, LoadOptions().huge_pages(true)).get_slice("big")({at::indexing::Slice(1, big.size(0))});
  EXPECT_TRUE(at::equal(most, big.slice(0, 1)));
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(most.data_ptr()) % (2 << 20), 0u);

  if (!kernel_has_transparent_huge_pages()) GTEST_SKIP() << "this kernel has no transparent huge pages";
  const TensorDict plain = load_file(path, LoadOptions().copy(true));
  EXPECT_TRUE(at::equal(plain["big"], big));
  EXPECT_EQ(vm_flags_at(plain["big"].data_ptr()).find(" hg "), std::string::npos)
      << vm_flags_at(plain["big"].data_ptr());
}

// Such a tensor behaves like one from at::empty: it can be resized (through
// LibTorch's allocator, unmapping its own memory) and written.
TEST_F(Load, HugePageTensorsStayResizable) {
  const std::string path = dir_.file("large.safetensors");
  const at::Tensor big = at::arange((4 << 20) / 8, at::kLong);
  save_file({{"big", big}}, path);
  at::Tensor t = load_file(path, LoadOptions().copy(true).huge_pages(true))["big"];
  const void* before = t.data_ptr();
  ASSERT_EQ(reinterpret_cast<std::uintptr_t>(before) % (2 << 20), 0u);
  t.resize_({big.size(0) * 2});
  EXPECT_TRUE(at::equal(t.slice(0, 0, big.size(0)), big));
  t.slice(0, big.size(0)).fill_(7);
  EXPECT_EQ(t[-1].item<std::int64_t>(), 7);
  EXPECT_NE(t.data_ptr(), before);
  EXPECT_FALSE(is_mapped(before)) << "the old mapping was not released";
  t.resize_({0});
  EXPECT_EQ(t.numel(), 0);
}

TEST_F(Load, MmapTensorsAreViewsOfOneMapping) {
  SafeOpen f(path_);
  at::Tensor x = f.get_tensor("a"), y = f.get_tensor("a");
  EXPECT_EQ(x.data_ptr(), y.data_ptr());  // no copy was made
  SafeOpen copy(path_, LoadOptions().copy(true));
  EXPECT_NE(copy.get_tensor("a").data_ptr(), copy.get_tensor("a").data_ptr());
  SafeOpen pread(path_, LoadOptions().backend(Backend::Pread));
  EXPECT_NE(pread.get_tensor("a").data_ptr(), pread.get_tensor("a").data_ptr());
  EXPECT_TRUE(at::equal(copy.get_tensor("a"), a_));
  EXPECT_TRUE(at::equal(pread.get_tensor("a"), a_));
}

TEST_F(Load, TensorsOutliveTheHandleAndTheFile) {
  at::Tensor x;
  {
    SafeOpen f(path_);
    x = f.get_tensor("a");
  }
  std::filesystem::remove(path_);
  EXPECT_TRUE(at::equal(x, a_));  // the mapping lives as long as the tensor
  TensorDict all;
  {
    // A TensorDict's tensors outlive the call too.
    save_file({{"a", a_}}, path_);
    all = load_file(path_);
  }
  EXPECT_TRUE(at::equal(all["a"], a_));
}

TEST_F(Load, InPlaceOpsOnMappedTensorsAreAllowedAndPrivate) {
  const std::string before = test::read_bytes(path_);
  at::Tensor x = load_file(path_)["a"];
  x.add_(1.0);
  x[0][0] = 42.0;
  EXPECT_FLOAT_EQ(x[0][0].item<float>(), 42.0f);
  EXPECT_EQ(test::read_bytes(path_), before);
  EXPECT_TRUE(at::equal(load_file(path_)["a"], a_));
}

TEST_F(Load, ResavingOverAMappedFileKeepsTheMappedTensorsIntact) {
  TensorDict old = load_file(path_);
  at::Tensor other = at::full({3, 4}, 7.0);
  save_file({{"a", other}}, path_);
  EXPECT_TRUE(at::equal(old["a"], a_));
  EXPECT_TRUE(at::equal(old["b"], b_));
  TensorDict now = load_file(path_);
  EXPECT_EQ(now.size(), 1u);
  EXPECT_TRUE(at::equal(now["a"], other));
}

TEST_F(Load, SafeOpenGivesKeysInfoAndMetadata) {
  SafeOpen f(path_);
  EXPECT_EQ(f.keys(), (std::vector<std::string>{"b", "a"}));
  EXPECT_EQ(f.size(), 2u);
  EXPECT_TRUE(f.contains("a"));
  EXPECT_FALSE(f.contains("c"));
  EXPECT_EQ(f.info("a").dtype, Dtype::F32);
  EXPECT_EQ(f.info("a").shape, (std::vector<std::uint64_t>{3, 4}));
  EXPECT_EQ(f.info("a").nbytes(), 48u);
  EXPECT_EQ(f.metadata(), (Metadata{{"format", "pt"}}));
  EXPECT_EQ(load_metadata(path_), (Metadata{{"format", "pt"}}));
  EXPECT_EQ(f.path(), path_);
  EXPECT_EQ(f.header().data_offset() % 8, 0u);
}

TEST_F(Load, UnknownNamesAreTensorNotFound) {
  SafeOpen f(path_);
  EXPECT_EQ(error_code_of([&] { f.get_tensor("nope"); }), ErrorCode::TensorNotFound);
  EXPECT_EQ(error_code_of([&] { f.info("nope"); }), ErrorCode::TensorNotFound);
  EXPECT_EQ(error_code_of([&] { f.get_slice("nope"); }), ErrorCode::TensorNotFound);
  try {
    f.get_tensor("nope");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(path_), std::string::npos);
  }
}

TEST_F(Load, MissingFilesAndFoldersAreIo) {
  EXPECT_EQ(error_code_of([&] { load_file(dir_.file("missing.safetensors")); }), ErrorCode::Io);
  EXPECT_EQ(error_code_of([&] { load_file(dir_.path().string()); }), ErrorCode::Io);
  EXPECT_EQ(error_code_of([&] {
              load_file(dir_.file("missing.safetensors"), LoadOptions().backend(Backend::Pread));
            }),
            ErrorCode::Io);
}

TEST_F(Load, FifosAreRefusedWithoutWaitingForAWriter) {
  const std::string fifo = dir_.file("pipe.safetensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(error_code_of([&] { load_file(fifo); }), ErrorCode::Io);
  EXPECT_EQ(error_code_of([&] { SafeOpen(fifo, LoadOptions().backend(Backend::Pread)); }), ErrorCode::Io);
}

TEST_F(Load, EmptyAndShortFilesAreHeaderTooSmallWithBothBackends) {
  const std::string empty = dir_.file("empty.safetensors");
  test::write_bytes(empty, "");
  EXPECT_EQ(error_code_of([&] { load_file(empty); }), ErrorCode::HeaderTooSmall);
  EXPECT_EQ(error_code_of([&] { load_file(empty, LoadOptions().backend(Backend::Pread)); }),
            ErrorCode::HeaderTooSmall);
  test::write_bytes(empty, "abc");
  EXPECT_EQ(error_code_of([&] { load_file(empty, LoadOptions().backend(Backend::Pread)); }),
            ErrorCode::HeaderTooSmall);
}

TEST_F(Load, DtypeOptionConvertsFloatingPointOnly) {
  TensorDict t = load_file(path_, LoadOptions().dtype(at::kHalf));
  EXPECT_EQ(t["a"].scalar_type(), at::kHalf);
  EXPECT_EQ(t["b"].scalar_type(), at::kLong);
  EXPECT_TRUE(at::equal(t["a"], a_.to(at::kHalf)));
}

TEST_F(Load, LoadFromBufferCopiesTheBytes) {
  std::string bytes = test::read_bytes(path_);
  TensorDict t = load(bytes.data(), bytes.size());
  std::fill(bytes.begin(), bytes.end(), '\0');
  bytes.clear();
  bytes.shrink_to_fit();
  EXPECT_TRUE(at::equal(t["a"], a_));
  EXPECT_TRUE(at::equal(t["b"], b_));
}

TEST(LoadFile, EmptyFileWithNoTensorsLoads) {
  std::string bytes = make_file("{}");
  EXPECT_EQ(load(bytes.data(), bytes.size()).size(), 0u);
}

TEST(LoadFile, ScalarAndZeroSizedTensors) {
  auto bytes = save({{"s", at::scalar_tensor(3.5, at::kDouble)}, {"z", at::empty({2, 0, 3})}});
  TensorDict t = load(bytes.data(), bytes.size());
  EXPECT_EQ(t["s"].dim(), 0);
  EXPECT_EQ(t["s"].item<double>(), 3.5);
  EXPECT_EQ(t["z"].sizes(), (std::vector<std::int64_t>{2, 0, 3}));
}

TEST(LoadFile, UnalignedDataIsCopiedToAlignedMemory) {
  // Data starting 3 bytes past an 8-byte boundary, as older writers and MLX leave it.
  const std::string json = R"({"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},"y":{"dtype":"I32","shape":[1],"data_offsets":[16,20]}})";
  ASSERT_NE((8 + json.size()) % 8, 0u);
  double xs[2] = {1.25, -3.5};
  std::int32_t y = 77;
  std::string data(reinterpret_cast<const char*>(xs), 16);
  data += std::string(reinterpret_cast<const char*>(&y), 4);
  TempDir dir;
  test::write_bytes(dir.file("u.safetensors"), make_file(json, data));
  for (Backend backend : {Backend::Mmap, Backend::Pread}) {
    TensorDict t = load_file(dir.file("u.safetensors"), LoadOptions().backend(backend));
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t["x"].data_ptr()) % 8, 0u);
    EXPECT_EQ(t["x"][0].item<double>(), 1.25);
    EXPECT_EQ(t["x"][1].item<double>(), -3.5);
    EXPECT_EQ(t["y"].item<std::int32_t>(), 77);
  }
}

// F6 has no torch dtype in any LibTorch: the dtype every build must refuse.
TEST(LoadFile, UnsupportedDtypeIsAClearErrorOrRawBytesOnRequest) {
  const std::string bytes = make_file(
      R"({"f6":{"dtype":"F6_E2M3","shape":[2,4],"data_offsets":[0,6]},"f6odd":{"dtype":"F6_E3M2","shape":[4,1],"data_offsets":[6,9]}})",
      "abcdefghi");
  try {
    load(bytes.data(), bytes.size());
    FAIL() << "loaded F6";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::UnsupportedDtype);
    EXPECT_NE(std::string(e.what()).find("F6_E"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("unsupported_as_bytes"), std::string::npos) << e.what();
  }
  TensorDict t = load(bytes.data(), bytes.size(), LoadOptions().unsupported_as_bytes(true));
  EXPECT_EQ(t["f6"].scalar_type(), at::kByte);
  EXPECT_EQ(t["f6"].sizes(), (std::vector<std::int64_t>{2, 3}));  // 4 x 6 bits = 3 bytes per row
  EXPECT_EQ(t["f6odd"].sizes(), (std::vector<std::int64_t>{3}));  // rows are not whole bytes
  EXPECT_EQ(std::string(static_cast<const char*>(t["f6"].data_ptr()), 6), "abcdef");
}

TEST(LoadFile, DtypesNewerThanThisLibTorchNameTheVersionNeeded) {
  for (Dtype d : kAllDtypes) {
    if (to_torch_dtype(d)) continue;
    const std::string name(dtype_name(d));
    const unsigned bits = dtype_bits(d);
    const std::string json = R"({"t":{"dtype":")" + name + R"(","shape":[8],"data_offsets":[0,)" +
                             std::to_string(bits) + "]}}";
    const std::string bytes = make_file(json, std::string(bits, '\x01'));
    try {
      load(bytes.data(), bytes.size());
      ADD_FAILURE() << name << " loaded without its torch dtype";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::UnsupportedDtype) << name;
      const std::string since = torch_version_with(d);
      if (since != "none") {
        EXPECT_NE(std::string(e.what()).find(since), std::string::npos) << e.what();
      }
    }
    TensorDict raw = load(bytes.data(), bytes.size(), LoadOptions().unsupported_as_bytes(true));
    EXPECT_EQ(raw["t"].scalar_type(), at::kByte);
    EXPECT_EQ(static_cast<unsigned>(raw["t"].numel()), bits) << name;  // 8 elements of `bits` bits
  }
}

TEST(LoadFile, MultiByteUnsupportedDtypesGetATrailingByteDimension) {
  // On LibTorch < 2.3 U16/U32/U64 are raw bytes with a trailing dimension of the
  // element size; where torch has them they load as themselves.
  const std::string bytes = make_file(R"({"u":{"dtype":"U32","shape":[2,3],"data_offsets":[0,24]}})",
                                      std::string(24, '\x02'));
  TensorDict t = load(bytes.data(), bytes.size(), LoadOptions().unsupported_as_bytes(true));
  if (to_torch_dtype(Dtype::U32)) {
    EXPECT_EQ(t["u"].sizes(), (std::vector<std::int64_t>{2, 3}));
  } else {
    EXPECT_EQ(t["u"].sizes(), (std::vector<std::int64_t>{2, 3, 4}));
  }
}

TEST(LoadFile, PreadBackendReportsAFileThatShrankAfterOpening) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_file({{"x", at::arange(1000, at::kFloat)}}, path);
  SafeOpen f(path, LoadOptions().backend(Backend::Pread));
  ::truncate(path.c_str(), 200);
  EXPECT_EQ(error_code_of([&] { f.get_tensor("x"); }), ErrorCode::FileChanged);
}

TEST(LoadFile, ManyThreadsReadOneHandle) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (int i = 0; i < 16; ++i) tensors.emplace_back("t" + std::to_string(i), at::randn({64, 33}));
  save_file(tensors, path);
  for (Backend backend : {Backend::Mmap, Backend::Pread}) {
    SafeOpen f(path, LoadOptions().backend(backend));
    std::vector<std::thread> threads;
    std::atomic<int> mismatches{0};
    for (int k = 0; k < 8; ++k)
      threads.emplace_back([&, k] {
        for (int rep = 0; rep < 20; ++rep)
          for (const auto& [name, t] : tensors)
            if (!at::equal(f.get_tensor(name), t) ||
                !at::equal(f.get_slice(name)({at::indexing::Slice(k, k + 5)}),
                           t.slice(0, k, k + 5)))
              ++mismatches;
      });
    for (auto& th : threads) th.join();
    EXPECT_EQ(mismatches.load(), 0);
  }
}

// read_into: the file's bytes straight into existing memory when they fit as
// they are, torch's copy_ (converting) otherwise, never a broadcast.
// What info(), header() and friends return points into the handle's state; a
// temporary handle must not leave a caller holding a dangling reference.
template <class T>
using InfoOf = decltype(std::declval<T>().info(std::string()));
static_assert(std::is_same_v<InfoOf<SafeOpen>, TensorInfo>);
static_assert(std::is_same_v<InfoOf<const SafeOpen&>, const TensorInfo&>);
static_assert(std::is_same_v<InfoOf<ShardedOpen>, TensorInfo>);
static_assert(std::is_same_v<InfoOf<const ShardedOpen&>, const TensorInfo&>);
static_assert(std::is_same_v<decltype(std::declval<SafeOpen>().header()), Header>);
static_assert(std::is_same_v<decltype(std::declval<SafeOpen>().metadata()), Metadata>);
static_assert(std::is_same_v<decltype(std::declval<SafeOpen>().path()), std::string>);
static_assert(std::is_same_v<decltype(std::declval<TensorSlice>().info()), TensorInfo>);
static_assert(std::is_same_v<decltype(std::declval<const TensorSlice&>().info()), const TensorInfo&>);
static_assert(std::is_same_v<decltype(std::declval<ShardedOpen>().metadata()), Metadata>);
static_assert(std::is_same_v<decltype(std::declval<SafeOpen>().header().tensors()), std::vector<TensorInfo>>);
static_assert(std::is_same_v<decltype(std::declval<ShardedOpen>().shard_of(std::string())), SafeOpen>);
// Where only a container could be returned, whose elements would dangle again
// (`ShardedOpen(d).shards()[0].info(x)`), a temporary handle cannot be asked.
template <class T, class = void>
struct HasShards : std::false_type {};
template <class T>
struct HasShards<T, std::void_t<decltype(std::declval<T>().shards())>> : std::true_type {};
static_assert(HasShards<const ShardedOpen&>::value && !HasShards<ShardedOpen>::value);
template <class T, class = void>
struct HasIndex : std::false_type {};
template <class T>
struct HasIndex<T, std::void_t<decltype(std::declval<T>().index())>> : std::true_type {};
static_assert(HasIndex<const ShardedOpen&>::value && !HasIndex<ShardedOpen>::value);

TEST_F(Load, ReferencesFromATemporaryHandleStayValid) {
  const TensorInfo& info = SafeOpen(path_).info("a");
  const Header& header = SafeOpen(path_).header();
  const Metadata& metadata = SafeOpen(path_).metadata();
  const std::string& path = SafeOpen(path_).path();
  const TensorInfo& slice_info = SafeOpen(path_).get_slice("b").info();
  const TensorInfo& sharded_info = ShardedOpen(path_).info("b");
  const SafeOpen& shard = ShardedOpen(path_).shard_of("b");
  std::size_t listed = 0;
  for (const TensorInfo& t : SafeOpen(path_).header().tensors()) listed += t.name.size();
  // Allocations in between would reuse freed state (AddressSanitizer reports it).
  TensorDict other = load_file(path_, LoadOptions().copy(true));
  EXPECT_EQ(info.name, "a");
  EXPECT_EQ(info.shape, (std::vector<std::uint64_t>{3, 4}));
  EXPECT_EQ(header.tensors().size(), 2u);
  EXPECT_EQ(metadata.at("format"), "pt");
  EXPECT_EQ(path, path_);
  EXPECT_EQ(slice_info.name, "b");
  EXPECT_EQ(sharded_info.nbytes(), 80u);
  EXPECT_EQ(shard.path(), path_);
  EXPECT_EQ(listed, 2u);
}

TEST(ReadInto, FillsExistingMemoryOrConvertsButNeverBroadcasts) {
  TempDir dir;
  const at::Tensor big = at::randn({3000, 1000});  // 12 MB: read in parallel chunks
  const at::Tensor small = at::arange(6, at::kLong).reshape({2, 3});
  save_file(NamedTensors().add("big", big).add("small", small), dir.file("r.safetensors"));
  for (Backend backend : {Backend::Mmap, Backend::Pread}) {
    SafeOpen f(dir.file("r.safetensors"), LoadOptions().backend(backend));
    at::Tensor dst = at::zeros({3000, 1000});
    void* const memory = dst.data_ptr();
    const auto version = dst._version();
    f.read_into("big", dst);
    EXPECT_EQ(dst.data_ptr(), memory);  // filled in place
    EXPECT_TRUE(test::bitwise_equal(dst, big));
    EXPECT_GT(dst._version(), version);  // autograd sees the write
    // Another dtype, or a strided view: converted through copy_.
    at::Tensor as_double = at::zeros({2, 3}, at::kDouble);
    f.read_into("small", as_double);
    EXPECT_TRUE(as_double.equal(small.to(at::kDouble)));
    at::Tensor wide = at::zeros({3, 2}, at::kLong);
    at::Tensor transposed = wide.t();
    f.read_into("small", transposed);
    EXPECT_TRUE(wide.t().equal(small));
    // A shape that would broadcast is refused, and the memory is untouched.
    at::Tensor row = at::zeros({1, 3}, at::kLong);
    at::Tensor many = at::zeros({4, 2, 3}, at::kLong);
    EXPECT_EQ(error_code_of([&] { f.read_into("small", row); }), ErrorCode::InvalidArgument);
    EXPECT_EQ(error_code_of([&] { f.read_into("small", many); }), ErrorCode::InvalidArgument);
    EXPECT_EQ(many.abs().sum().item<std::int64_t>(), 0);
    EXPECT_EQ(error_code_of([&] { f.read_into("absent", row); }), ErrorCode::TensorNotFound);
  }
}

using detail::StageCpuLoads;

// A destination that requires grad is written only with grad mode off (load_state_dict reads under NoGradGuard), on every
// path: straight from the file, through copy_, and through the staging ring.
TEST(ReadInto, ADestinationThatRequiresGradIsWrittenOnlyWithGradModeOff) {
  TempDir dir;
  const at::Tensor w = at::randn({2, 3});
  save_file({{"w", w}}, dir.file("w.safetensors"));
  const SafeOpen f(dir.file("w.safetensors"));
  for (bool staged : {false, true}) {
    std::optional<StageCpuLoads> stage;
    if (staged) stage.emplace();
    const std::vector<std::pair<const char*, at::Tensor>> destinations = {
        {"direct", at::zeros({2, 3})},                      // the file's dtype, contiguous
        {"converted", at::zeros({2, 3}, at::kDouble)},      // another dtype
        {"strided", at::zeros({3, 2}).t()}};                // not contiguous
    for (const auto& [path, like] : destinations) {
      at::Tensor leaf = like.detach().requires_grad_(true);
      at::Tensor plain = at::zeros({2, 3});
      EXPECT_EQ(error_code_of([&] { f.read_into({{"w", plain}, {"w", leaf}}); }), ErrorCode::InvalidArgument)
          << path << (staged ? " staged" : "");
      EXPECT_EQ(leaf.abs().sum().item<double>(), 0.0) << path;
      EXPECT_EQ(plain.abs().sum().item<double>(), 0.0) << path << ": written before the refusal";
      std::string message;
      try {
        f.read_into("w", leaf);
      } catch (const Error& e) {
        message = e.what();
      }
      EXPECT_NE(message.find("NoGradGuard"), std::string::npos) << message;
      at::Tensor view = like.detach().requires_grad_(true) * 1;  // not a leaf, still tracked
      EXPECT_EQ(error_code_of([&] { f.read_into("w", view); }), ErrorCode::InvalidArgument) << path;
      {
        at::NoGradGuard no_grad;
        f.read_into("w", leaf);
      }
      EXPECT_TRUE(at::equal(leaf.detach(), w.to(leaf.scalar_type()))) << path << (staged ? " staged" : "");
      EXPECT_TRUE(leaf.requires_grad());
    }
  }
}

// Destinations that overlap are written in the order given, as separate calls
// would write them, whichever path each takes.
TEST(ReadInto, OverlappingDestinationsAreWrittenInOrderOnEveryPath) {
  TempDir dir;
  const at::Tensor a = at::arange(4, at::kFloat).reshape({2, 2}), b = a + 10;
  save_file({{"a", a}, {"b", b}}, dir.file("ab.safetensors"));
  for (Backend backend : {Backend::Mmap, Backend::Pread}) {
    const SafeOpen f(dir.file("ab.safetensors"), LoadOptions().backend(backend));
    for (bool staged : {false, true}) {
      std::optional<StageCpuLoads> stage;
      if (staged) stage.emplace();
      at::Tensor x = at::zeros({2, 2});
      f.read_into({{"b", x}, {"a", x.t()}});  // straight, then through copy_
      EXPECT_TRUE(at::equal(x, a.t())) << (staged ? "staged" : "plain");
      f.read_into({{"a", x.t()}, {"b", x}});
      EXPECT_TRUE(at::equal(x, b)) << (staged ? "staged" : "plain");
      at::Tensor d = at::zeros({2, 2}, at::kDouble);
      f.read_into({{"a", d.t()}, {"b", d}});  // converted: through copy_ (or after the ring) both
      EXPECT_TRUE(at::equal(d, b.to(at::kDouble))) << (staged ? "staged" : "plain");
      f.read_into({{"b", d}, {"a", d.t()}});
      EXPECT_TRUE(at::equal(d, a.t().to(at::kDouble))) << (staged ? "staged" : "plain");
    }
  }
}

}  // namespace
}  // namespace safetensors
