// Files written by other implementations (data/vectors, see its README), checked
// against data/vectors/expected.json. That file comes from make_expected.py, a
// reader written from the format specification alone, so these tests do not
// compare the library with itself.

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "safetensors/load.hpp"
#include "safetensors/torch_dtype.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::error_code_of;

fs::path vectors_dir() { return fs::path(SAFETENSORS_TEST_DATA_DIR) / "vectors"; }

json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  return json::parse(in);
}

// Keyed by the file's path relative to vectors_dir().
const json& expected() {
  static const json j = read_json(vectors_dir() / "expected.json");
  return j;
}

std::vector<std::string> expected_files(bool malformed) {
  std::vector<std::string> out;
  for (const auto& [file, entry] : expected().items())
    if (entry.value("malformed", false) == malformed) out.push_back(file);
  return out;
}

// "fluxml_sharded/model-00001-of-00006.safetensors" -> "fluxml_sharded_model_00001_of_00006"
std::string case_name(const testing::TestParamInfo<std::string>& info) {
  std::string name = fs::path(info.param).replace_extension().generic_string();
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
}

std::string fnv1a64(const void* data, std::size_t n) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

Dtype dtype_of(const json& tensor) {
  auto dtype = parse_dtype(tensor["dtype"].get<std::string>());
  if (!dtype) throw std::runtime_error("unknown dtype in " + tensor.dump());
  return *dtype;
}

bool supported(Dtype dtype) { return to_torch_dtype(dtype).has_value(); }

// expected.json writes NaN and the infinities as strings.
double expected_double(const json& v) {
  if (v.is_number()) return v.get<double>();
  const auto s = v.get<std::string>();
  if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
  if (s == "inf") return std::numeric_limits<double>::infinity();
  if (s == "-inf") return -std::numeric_limits<double>::infinity();
  throw std::runtime_error("bad expected value " + v.dump());
}

std::uint64_t bits_of(double d) {
  std::uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

// Compares `values` (a 1-D part of a loaded tensor) with the expected numbers:
// floats bit for bit (so -0.0 is not 0.0), NaN as any NaN; bool and integers
// exactly.
void expect_values(const at::Tensor& values, const json& want, const char* which) {
  ASSERT_EQ(values.numel(), static_cast<std::int64_t>(want.size())) << which;
  if (c10::isFloatingType(values.scalar_type())) {
    const at::Tensor d = values.to(at::kDouble).contiguous();
    const double* got = d.data_ptr<double>();
    for (std::size_t i = 0; i < want.size(); ++i) {
      const double w = expected_double(want[i]);
      if (std::isnan(w)) {
        EXPECT_TRUE(std::isnan(got[i])) << which << "[" << i << "]: got " << got[i];
      } else {
        EXPECT_EQ(bits_of(got[i]), bits_of(w))
            << which << "[" << i << "]: got " << got[i] << ", expected " << w;
      }
    }
  } else {
    // Through int64: U64 values above INT64_MAX wrap, so they compare as uint64.
    const at::Tensor l = values.to(at::kLong).contiguous();
    const std::int64_t* got = l.data_ptr<std::int64_t>();
    for (std::size_t i = 0; i < want.size(); ++i) {
      if (want[i].is_number_unsigned())
        EXPECT_EQ(static_cast<std::uint64_t>(got[i]), want[i].get<std::uint64_t>())
            << which << "[" << i << "]";
      else
        EXPECT_EQ(got[i], want[i].get<std::int64_t>()) << which << "[" << i << "]";
    }
  }
}

// One loaded tensor against its expected.json entry.
void expect_tensor(const at::Tensor& tensor, const json& want) {
  SCOPED_TRACE("tensor " + want["name"].get<std::string>());
  const Dtype dtype = dtype_of(want);
  auto shape = want["shape"].get<std::vector<std::int64_t>>();
  if (supported(dtype)) {
    EXPECT_EQ(tensor.scalar_type(), *to_torch_dtype(dtype));
  } else {
    // Raw bytes: a trailing dimension holds each element's bytes.
    EXPECT_EQ(tensor.scalar_type(), at::kByte);
    if (dtype_bits(dtype) > 8) shape.push_back(dtype_bits(dtype) / 8);
  }
  EXPECT_EQ(tensor.sizes().vec(), shape);

  const at::Tensor dense = tensor.contiguous();
  EXPECT_EQ(fnv1a64(dense.data_ptr(), dense.nbytes()), want["fnv1a64"].get<std::string>());

  if (!supported(dtype)) return;  // no torch dtype to decode with; the hash covers the bytes
  const at::Tensor flat = dense.reshape({-1});
  const std::int64_t n = flat.numel();
  const std::int64_t edge = std::min<std::int64_t>(16, n);
  expect_values(flat.slice(0, 0, edge), want["head"], "head");
  expect_values(flat.slice(0, n - edge, n), want["tail"], "tail");
}

struct Mode {
  const char* name;
  LoadOptions options;
};

const std::vector<Mode>& modes() {
  static const std::vector<Mode> m = {
      {"mmap", LoadOptions()},
      {"pread", LoadOptions().backend(Backend::Pread)},
      {"copy", LoadOptions().copy(true)},
  };
  return m;
}

// ----------------------------------------------------------------- valid files

TEST(Vectors, ExpectedCoversEveryFile) {
  std::set<std::string> on_disk;
  for (const auto& entry : fs::recursive_directory_iterator(vectors_dir()))
    if (entry.path().extension() == ".safetensors")
      on_disk.insert(entry.path().lexically_relative(vectors_dir()).generic_string());
  std::set<std::string> listed;
  for (const auto& [file, entry] : expected().items()) listed.insert(file);
  EXPECT_EQ(on_disk, listed) << "rerun data/vectors/make_expected.py";
}

class ValidFile : public testing::TestWithParam<std::string> {};

TEST_P(ValidFile, LoadsWithExpectedContents) {
  const std::string path = (vectors_dir() / GetParam()).string();
  const json& want = expected().at(GetParam());
  const json& tensors = want["tensors"];

  std::vector<std::string> names;
  for (const json& t : tensors) names.push_back(t["name"].get<std::string>());
  const Metadata metadata = want["metadata"].is_null() ? Metadata{} : want["metadata"].get<Metadata>();
  // The first tensor this LibTorch has no dtype for stops a plain load.
  const auto unsupported = std::find_if(tensors.begin(), tensors.end(),
                                        [](const json& t) { return !supported(dtype_of(t)); });

  for (const Mode& mode : modes()) {
    SCOPED_TRACE(std::string("mode ") + mode.name);

    SafeOpen file(path, mode.options);
    EXPECT_EQ(file.keys(), names);
    EXPECT_EQ(file.metadata(), metadata);
    for (const json& t : tensors) {
      const TensorInfo& info = file.info(t["name"].get<std::string>());
      EXPECT_EQ(dtype_name(info.dtype), t["dtype"].get<std::string>()) << info.name;
      EXPECT_EQ(info.shape, t["shape"].get<std::vector<std::uint64_t>>()) << info.name;
      EXPECT_EQ(info.begin, t["data_offsets"][0].get<std::uint64_t>()) << info.name;
      EXPECT_EQ(info.end, t["data_offsets"][1].get<std::uint64_t>()) << info.name;
    }

    LoadOptions options = mode.options;
    if (unsupported != tensors.end()) {
      const std::string dtype = (*unsupported)["dtype"].get<std::string>();
      try {
        load_file(path, options);
        ADD_FAILURE() << "loading " << dtype << " without unsupported_as_bytes did not throw";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::UnsupportedDtype) << e.what();
        EXPECT_EQ(e.tensor(), (*unsupported)["name"].get<std::string>());
        EXPECT_NE(std::string(e.what()).find(dtype), std::string::npos) << e.what();
      }
      options.unsupported_as_bytes(true);
    }

    const TensorDict loaded = load_file(path, options);
    EXPECT_EQ(loaded.keys(), names);
    for (const json& t : tensors) {
      const at::Tensor* tensor = loaded.find(t["name"].get<std::string>());
      ASSERT_NE(tensor, nullptr) << t["name"];
      expect_tensor(*tensor, t);
    }
  }
}

// Every dtype this LibTorch lacks is refused by name, tensor by tensor.
TEST_P(ValidFile, NamesEachUnsupportedDtype) {
  const SafeOpen file((vectors_dir() / GetParam()).string());
  for (const json& t : expected().at(GetParam())["tensors"]) {
    if (supported(dtype_of(t))) continue;
    const std::string dtype = t["dtype"].get<std::string>();
    try {
      file.get_tensor(t["name"].get<std::string>());
      ADD_FAILURE() << t["name"] << ": " << dtype << " loaded without unsupported_as_bytes";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::UnsupportedDtype) << e.what();
      EXPECT_NE(std::string(e.what()).find(dtype), std::string::npos) << e.what();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Vectors, ValidFile, testing::ValuesIn(expected_files(false)), case_name);

// ------------------------------------------------------------- malformed files

class MalformedFile : public testing::TestWithParam<std::string> {};

TEST_P(MalformedFile, IsRejectedWithExpectedCode) {
  const std::string path = (vectors_dir() / GetParam()).string();
  const std::string code = expected().at(GetParam())["error"].get<std::string>();
  for (Backend backend : {Backend::Mmap, Backend::Pread}) {
    SCOPED_TRACE(backend == Backend::Mmap ? "mmap" : "pread");
    EXPECT_EQ(to_string(error_code_of([&] { load_file(path, LoadOptions().backend(backend)); })),
              code);
  }
}

INSTANTIATE_TEST_SUITE_P(Vectors, MalformedFile, testing::ValuesIn(expected_files(true)),
                         case_name);

// ------------------------------------------------------------ sharded checkpoint

// The shards hold exactly the index's weight_map, each tensor in its listed
// shard, and their data adds up to the index's total_size.
TEST(Vectors, ShardedCheckpointMatchesIndex) {
  const fs::path dir = vectors_dir() / "fluxml_sharded";
  const json index = read_json(dir / "model.safetensors.index.json");
  const auto weight_map = index["weight_map"].get<std::map<std::string, std::string>>();
  std::set<std::string> shards;
  for (const auto& [name, shard] : weight_map) shards.insert(shard);
  ASSERT_EQ(shards.size(), 6u);

  std::map<std::string, std::string> found;  // tensor -> the shard it was loaded from
  std::uint64_t data_bytes = 0;
  for (const std::string& shard : shards) {
    SCOPED_TRACE(shard);
    const std::string path = (dir / shard).string();
    const TensorDict tensors = load_file(path, LoadOptions().unsupported_as_bytes(true));
    EXPECT_GT(tensors.size(), 0u);
    for (const auto& item : tensors)
      EXPECT_TRUE(found.emplace(item.key(), shard).second) << item.key() << " is in two shards";
    data_bytes += SafeOpen(path).header().data_size();
  }
  EXPECT_EQ(found, weight_map);
  EXPECT_EQ(data_bytes, index["metadata"]["total_size"].get<std::uint64_t>());
}

}  // namespace
}  // namespace safetensors
