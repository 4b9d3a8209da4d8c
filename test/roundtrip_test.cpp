// Save then load, for every dtype this LibTorch has (and the raw bytes of those
// it lacks), over shapes from scalar and zero-size to rank 8, with random
// values, names and metadata.

#include <random>

#include "safetensors/load.hpp"
#include "safetensors/save.hpp"
#include "safetensors/torch_dtype.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

using test::bitwise_equal;
using test::TempDir;

// Random bytes reinterpreted as the dtype: every bit pattern, NaN payloads
// included, must survive.
at::Tensor random_tensor(c10::ScalarType type, const std::vector<std::int64_t>& shape, std::mt19937& rng) {
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
  auto* p = static_cast<std::uint8_t*>(t.data_ptr());
  for (std::size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<std::uint8_t>(rng());
  if (type == c10::kBool)
    for (std::size_t i = 0; i < t.nbytes(); ++i) p[i] &= 1;  // torch bools are 0 or 1
  return t;
}

std::vector<std::vector<std::int64_t>> shapes(std::mt19937& rng) {
  std::vector<std::vector<std::int64_t>> out = {{}, {0}, {3, 0}, {0, 5, 2}, {1}, {17}};
  for (int rank = 1; rank <= 8; ++rank) {
    std::vector<std::int64_t> s;
    for (int d = 0; d < rank; ++d) s.push_back(1 + static_cast<std::int64_t>(rng() % (rank > 4 ? 3 : 6)));
    out.push_back(s);
  }
  return out;
}

std::vector<Dtype> torch_dtypes() {
  std::vector<Dtype> out;
  for (Dtype d : kAllDtypes)
    if (to_torch_dtype(d) && dtype_bits(d) >= 8) out.push_back(d);
  return out;
}

TEST(RoundTrip, EveryDtypeAndShapeThroughBytesAndFiles) {
  std::mt19937 rng(2024);
  TempDir dir;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (Dtype d : torch_dtypes()) {
    int k = 0;
    for (const auto& shape : shapes(rng))
      tensors.emplace_back(std::string(dtype_name(d)) + "/" + std::to_string(k++),
                           random_tensor(*to_torch_dtype(d), shape, rng));
  }
  ASSERT_GE(tensors.size(), 11u * 14u);
  const Metadata metadata{{"format", "pt"}, {"note", "round trip"}};
  auto bytes = save(tensors, metadata);
  const std::string path = dir.file("all.safetensors");
  save_file(tensors, path, metadata);
  EXPECT_EQ(test::read_bytes(path), test::as_string(bytes));

  std::vector<TensorDict> loaded;
  loaded.push_back(load(bytes.data(), bytes.size()));
  loaded.push_back(load_file(path));
  loaded.push_back(load_file(path, LoadOptions().backend(Backend::Pread)));
  loaded.push_back(load_file(path, LoadOptions().copy(true)));
  for (const TensorDict& back : loaded) {
    ASSERT_EQ(back.size(), tensors.size());
    for (const auto& [name, t] : tensors) {
      const at::Tensor* got = back.find(name);
      ASSERT_NE(got, nullptr) << name;
      EXPECT_TRUE(bitwise_equal(*got, t)) << name << " " << t.sizes();
    }
  }
  EXPECT_EQ(SafeOpen(path).metadata(), metadata);
}

TEST(RoundTrip, DtypesThisLibTorchLacksRoundTripAsRawBytes) {
  std::mt19937 rng(5);
  for (Dtype d : kAllDtypes) {
    if (to_torch_dtype(d)) continue;
    const unsigned bits = dtype_bits(d);
    const std::vector<std::uint64_t> shape = {3, 8};  // 24 elements: whole bytes for 4 and 6 bits
    at::Tensor raw = random_tensor(c10::kByte, {static_cast<std::int64_t>(24 * bits / 8)}, rng);
    auto bytes = save(NamedTensors().add_raw("x", d, shape, raw));
    SafeOpen f(copy_buffer(bytes.data(), bytes.size()), LoadOptions().unsupported_as_bytes(true));
    EXPECT_EQ(f.info("x").dtype, d);
    EXPECT_EQ(f.info("x").shape, shape);
    at::Tensor back = f.get_tensor("x").contiguous();
    ASSERT_EQ(back.nbytes(), raw.nbytes()) << dtype_name(d);
    EXPECT_EQ(std::memcmp(back.data_ptr(), raw.data_ptr(), raw.nbytes()), 0) << dtype_name(d);
    // Writing the loaded bytes back gives the same file.
    EXPECT_EQ(save(NamedTensors().add_raw("x", d, shape, back.flatten())), bytes);
  }
}

TEST(RoundTrip, RandomFilesWithRandomNames) {
  std::mt19937 rng(99);
  const std::vector<Dtype> dtypes = torch_dtypes();
  const std::string alphabet = "abcXYZ019._-/ \"\\\n\t";
  const std::vector<std::string> unicode = {"ü", "权重", "😀", "\xd7\x90"};
  for (int file = 0; file < 25; ++file) {
    std::map<std::string, at::Tensor> tensors;
    const int count = static_cast<int>(rng() % 40);
    for (int i = 0; i < count; ++i) {
      std::string name;
      for (unsigned c = rng() % 12; c > 0; --c)
        name += rng() % 5 ? std::string(1, alphabet[rng() % alphabet.size()]) : unicode[rng() % unicode.size()];
      if (name == "__metadata__") continue;
      std::vector<std::int64_t> shape;
      for (unsigned r = rng() % 5; r > 0; --r) shape.push_back(static_cast<std::int64_t>(rng() % 5));
      tensors[name] = random_tensor(*to_torch_dtype(dtypes[rng() % dtypes.size()]), shape, rng);
    }
    std::optional<Metadata> metadata;
    if (rng() % 2) metadata = Metadata{{"k" + std::to_string(rng() % 100), "v\xc3\xa9"}};
    auto bytes = save(tensors, metadata);
    SafeOpen f(copy_buffer(bytes.data(), bytes.size()));
    ASSERT_EQ(f.size(), tensors.size());
    EXPECT_EQ(f.header().has_metadata(), metadata.has_value());
    if (metadata) {
      EXPECT_EQ(f.metadata(), *metadata);
    }
    for (const auto& [name, t] : tensors) EXPECT_TRUE(bitwise_equal(f.get_tensor(name), t)) << name;
    // The same tensors give the same bytes: saving is deterministic.
    EXPECT_EQ(save(f.tensors(), metadata), bytes);
  }
}

}  // namespace
}  // namespace safetensors
