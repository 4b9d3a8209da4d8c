// get_slice: every index expression must give what indexing the whole tensor
// gives, with either backend, while reading only the selected bytes.

#include <random>

#include "safetensors/load.hpp"
#include "safetensors/save.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

using at::indexing::Ellipsis;
using at::indexing::None;
using at::indexing::Slice;
using at::indexing::TensorIndex;
using test::error_code_of;
using test::TempDir;

class SliceTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    at::manual_seed(3);
    tensors_ = {
        {"f32", at::randn({7, 5, 6})},
        {"i64", at::randint(-100, 100, {4, 9}, at::kLong)},
        {"f16", at::randn({3, 4, 5, 2}).to(at::kHalf)},
        {"bool", at::randint(0, 2, {11}).to(at::kBool)},
        {"scalar", at::scalar_tensor(2.5)},
        {"empty", at::empty({3, 0, 2})},
        {"wide", at::randn({2, 3000})},
    };
    path_ = dir_.file("s.safetensors");
    save_file(tensors_, path_);
  }
  SafeOpen open() const { return SafeOpen(path_, LoadOptions().backend(GetParam())); }

  TempDir dir_;
  std::string path_;
  std::vector<std::pair<std::string, at::Tensor>> tensors_;
};

void expect_same(const SafeOpen& f, const std::string& name, const at::Tensor& full,
                 const std::vector<TensorIndex>& index) {
  at::Tensor expected = index.empty() ? full : full.index(index);
  at::Tensor got = f.get_slice(name)(index);
  std::ostringstream where;
  where << name << " [";
  for (const auto& i : index) where << i << ", ";
  where << "]";
  EXPECT_TRUE(test::bitwise_equal(got, expected.contiguous()))
      << where.str() << " got " << got.sizes() << " expected " << expected.sizes();
}

TEST_P(SliceTest, FixedExpressions) {
  SafeOpen f = open();
  const at::Tensor& x = tensors_[0].second;
  std::vector<std::vector<TensorIndex>> cases = {
      {},
      {0},
      {-1},
      {Slice(1, 3)},
      {Slice(), 2},
      {Slice(), Slice(), Slice(1, 4)},
      {Slice(None, None, 2)},
      {Slice(-3, None)},
      {Slice(-100, 100)},
      {Slice(5, 2)},
      {1, 2, 3},
      {Ellipsis, 0},
      {0, Ellipsis},
      {Ellipsis},
      {None, 1},
      {Slice(0, 7, 3), None, Slice(1, 5, 2), Ellipsis},
      {Slice(), Slice(4, 5), Slice(None, None, 5)},
  };
  for (const auto& c : cases) expect_same(f, "f32", x, c);
  expect_same(f, "scalar", tensors_[4].second, {});
  expect_same(f, "scalar", tensors_[4].second, {None});
  expect_same(f, "empty", tensors_[5].second, {Slice(1, 2)});
  expect_same(f, "bool", tensors_[3].second, {Slice(2, 9, 3)});
  EXPECT_EQ(f.get_slice("f32").shape(), (std::vector<std::int64_t>{7, 5, 6}));
  EXPECT_EQ(f.get_slice("f16").dtype(), Dtype::F16);
}

TEST_P(SliceTest, RandomExpressionsMatchTensorIndexing) {
  SafeOpen f = open();
  std::mt19937 rng(11);
  auto pick = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  for (const auto& [name, full] : tensors_) {
    for (int rep = 0; rep < 60; ++rep) {
      std::vector<TensorIndex> index;
      const std::int64_t dims = pick(0, full.dim());
      for (std::int64_t d = 0; d < dims; ++d) {
        const std::int64_t size = full.size(d);
        switch (pick(0, 3)) {
          case 0:
            if (size > 0) {
              index.emplace_back(pick(-size, size - 1));
              break;
            }
            [[fallthrough]];
          case 1: index.emplace_back(Slice()); break;
          case 2: index.emplace_back(Slice(pick(-size - 2, size + 2), pick(-size - 2, size + 2))); break;
          default:
            index.emplace_back(Slice(pick(-size, size), pick(-size, size + 3), pick(1, 4)));
        }
      }
      expect_same(f, name, full, index);
    }
  }
}

TEST_P(SliceTest, BadIndicesAreInvalidSlice) {
  SafeOpen f = open();
  TensorSlice s = f.get_slice("f32");
  EXPECT_EQ(error_code_of([&] { s({7}); }), ErrorCode::InvalidSlice);
  EXPECT_EQ(error_code_of([&] { s({-8}); }), ErrorCode::InvalidSlice);
  EXPECT_EQ(error_code_of([&] { s({0, 0, 0, 0}); }), ErrorCode::InvalidSlice);
  EXPECT_EQ(error_code_of([&] { s({Slice(None, None, -1)}); }), ErrorCode::InvalidSlice);
  EXPECT_EQ(error_code_of([&] { s({Ellipsis, Ellipsis}); }), ErrorCode::InvalidSlice);
  EXPECT_EQ(error_code_of([&] { s({true}); }), ErrorCode::InvalidSlice);
  EXPECT_EQ(error_code_of([&] { s({at::tensor({0, 1})}); }), ErrorCode::InvalidSlice);
  EXPECT_EQ(error_code_of([&] { f.get_slice("scalar")({0}); }), ErrorCode::InvalidSlice);
}

TEST_P(SliceTest, SlicesOutliveTheHandle) {
  TensorSlice s = open().get_slice("i64");
  EXPECT_TRUE(at::equal(s({Slice(1, 3)}), tensors_[1].second.slice(0, 1, 3)));
  EXPECT_TRUE(at::equal(s.all(), tensors_[1].second));
}

TEST_P(SliceTest, OptionsApplyToSlices) {
  SafeOpen f(path_, LoadOptions().backend(GetParam()).dtype(at::kDouble));
  at::Tensor got = f.get_slice("f32")({1});
  EXPECT_EQ(got.scalar_type(), at::kDouble);
  EXPECT_TRUE(at::equal(got, tensors_[0].second[1].to(at::kDouble)));
}

INSTANTIATE_TEST_SUITE_P(Backends, SliceTest, ::testing::Values(Backend::Mmap, Backend::Pread),
                         [](const auto& info) {
                           return info.param == Backend::Mmap ? std::string("Mmap") : std::string("Pread");
                         });

TEST(Slice, RawBytesOfUnsupportedDtypesSliceByElement) {
  // F6 never has a torch dtype; 8-bit types without one slice as bytes.
  const std::string bytes = test::make_file(
      R"({"p":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}})", "abc");
  SafeOpen f(copy_buffer(bytes.data(), bytes.size()), LoadOptions().unsupported_as_bytes(true));
  EXPECT_EQ(error_code_of([&] { f.get_slice("p")({0}); }), ErrorCode::InvalidSlice);
  auto file = save(NamedTensors().add_raw("u", Dtype::U32, {3, 2}, at::arange(24, at::kByte)));
  SafeOpen g(copy_buffer(file.data(), file.size()), LoadOptions().unsupported_as_bytes(true));
  at::Tensor full = g.get_tensor("u");
  EXPECT_TRUE(at::equal(g.get_slice("u")({1}), full[1]));
}

}  // namespace
}  // namespace safetensors
