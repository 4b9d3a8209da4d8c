// Interop with the reference implementation. test/interop/reference_write.py
// writes files with the Python `safetensors` package and records, from the
// bytes the tensors were made of, what each must hold. Here every file is
// loaded with both backends and compared bit for bit, sliced as the reference
// sliced it, and re-saved with the same metadata; the re-saved file must equal
// the reference's byte for byte (test/interop/reference_check.py then loads
// ours with the reference).
//
// SAFETENSORS_INTEROP_DIR names the folder reference_write.py wrote; unset, the
// suite is skipped. Re-saved files go to SAFETENSORS_INTEROP_OUT (default:
// DIR/ours).

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "safetensors/load.hpp"
#include "safetensors/save.hpp"
#include "safetensors/torch_dtype.hpp"

namespace safetensors {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct ExpectedTensor {
  std::string name;
  Dtype dtype;
  std::vector<std::uint64_t> shape;
  std::string bytes;  // raw little-endian bytes, as the reference built them
};

struct ExpectedFile {
  std::string file;
  std::optional<Metadata> metadata;  // nullopt: the file has no __metadata__
  std::vector<ExpectedTensor> tensors;
};

struct SliceCase {
  std::string tensor;
  json index;
  const ExpectedTensor* result;
};

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Names are full of control characters and quotes: print them as JSON.
std::string quoted(const std::string& s) { return json(s).dump(); }

// What reference_write.py recorded; loaded once.
class Reference {
 public:
  static const Reference* get() {
    static const std::optional<Reference> instance = load();
    return instance ? &*instance : nullptr;
  }
  const fs::path& dir() const { return dir_; }
  const fs::path& out() const { return out_; }
  const std::vector<ExpectedFile>& files() const { return files_; }
  const ExpectedFile& file(const std::string& name) const { return files_[by_name_.at(name)]; }
  const std::map<std::string, std::vector<SliceCase>>& slices() const { return slices_; }

  std::vector<std::string> file_names() const {
    std::vector<std::string> names;
    for (const auto& f : files_) names.push_back(f.file);
    return names;
  }
  std::vector<std::string> sliced_file_names() const {
    std::vector<std::string> names;
    for (const auto& [file, cases] : slices_) names.push_back(file);
    return names;
  }

 private:
  static std::optional<Reference> load() {
    const char* dir = std::getenv("SAFETENSORS_INTEROP_DIR");
    if (!dir || !*dir) return std::nullopt;
    const char* out = std::getenv("SAFETENSORS_INTEROP_OUT");
    Reference r;
    r.dir_ = dir;
    r.out_ = out && *out ? fs::path(out) : r.dir_ / "ours";
    const json manifest = json::parse(read_all(r.dir_ / "manifest.json"));
    const std::string expected = read_all(r.dir_ / "expected.bin");
    for (const json& f : manifest.at("files")) {
      ExpectedFile file{f.at("file").get<std::string>(), std::nullopt, {}};
      if (!f.at("metadata").is_null()) file.metadata = f.at("metadata").get<Metadata>();
      for (const json& t : f.at("tensors")) {
        auto dtype = parse_dtype(t.at("dtype").get<std::string>());
        if (!dtype) throw std::runtime_error("unknown dtype in manifest: " + t.at("dtype").dump());
        file.tensors.push_back({t.at("name").get<std::string>(), *dtype,
                                t.at("shape").get<std::vector<std::uint64_t>>(),
                                expected.substr(t.at("offset").get<std::size_t>(),
                                                t.at("nbytes").get<std::size_t>())});
      }
      r.by_name_[file.file] = r.files_.size();
      r.files_.push_back(std::move(file));
    }
    for (const json& s : manifest.at("slices")) {
      const ExpectedFile& results = r.file(s.at("result_file").get<std::string>());
      const auto name = s.at("result").get<std::string>();
      const ExpectedTensor* result = nullptr;
      for (const auto& t : results.tensors)
        if (t.name == name) result = &t;
      if (!result) throw std::runtime_error("manifest: no slice result " + name);
      r.slices_[s.at("file").get<std::string>()].push_back(
          {s.at("tensor").get<std::string>(), s.at("index"), result});
    }
    return r;
  }

  fs::path dir_, out_;
  std::vector<ExpectedFile> files_;
  std::map<std::string, std::size_t> by_name_;
  std::map<std::string, std::vector<SliceCase>> slices_;
};

// The sizes a loaded tensor has: the header's shape, or for a dtype the
// LibTorch in use lacks, its raw bytes (LoadOptions::unsupported_as_bytes).
std::vector<std::int64_t> torch_sizes(Dtype dtype, const std::vector<std::uint64_t>& shape) {
  std::vector<std::int64_t> sizes(shape.begin(), shape.end());
  if (!to_torch_dtype(dtype) && dtype_bits(dtype) > 8) sizes.push_back(dtype_bits(dtype) / 8);
  return sizes;
}

// "" when `t` has the given sizes and exactly the given bytes; else what differs.
std::string compare(const at::Tensor& t, const std::vector<std::int64_t>& sizes,
                    const std::string& bytes) {
  if (t.sizes().vec() != sizes)
    return "sizes " + c10::str(t.sizes()) + ", expected " + c10::str(at::IntArrayRef(sizes));
  const at::Tensor c = t.contiguous();
  const std::size_t n = static_cast<std::size_t>(c.numel()) * c.element_size();
  if (n != bytes.size())
    return std::to_string(n) + " bytes, expected " + std::to_string(bytes.size());
  const char* data = static_cast<const char*>(c.data_ptr());
  for (std::size_t i = 0; i < n; ++i)
    if (data[i] != bytes[i])
      return "element " + std::to_string(i / c.element_size()) + " differs (byte " +
             std::to_string(i) + ")";
  return "";
}

at::ScalarType torch_dtype_of(Dtype dtype) {
  return to_torch_dtype(dtype).value_or(at::kByte);
}

LoadOptions options(Backend backend) {
  return LoadOptions().backend(backend).unsupported_as_bytes(true);
}

std::vector<at::indexing::TensorIndex> to_index(const json& items) {
  using namespace at::indexing;
  auto bound = [](const json& v) -> c10::optional<std::int64_t> {
    if (v.is_null()) return c10::nullopt;
    return v.get<std::int64_t>();
  };
  std::vector<TensorIndex> index;
  for (const json& item : items) {
    if (item.is_null()) {
      index.emplace_back(None);
    } else if (item.is_string()) {
      index.emplace_back(Ellipsis);
    } else if (item.is_number_integer()) {
      index.emplace_back(item.get<std::int64_t>());
    } else {
      const json& s = item.at("slice");
      index.emplace_back(Slice(bound(s[0]), bound(s[1]), bound(s[2])));
    }
  }
  return index;
}

// ---------------------------------------------------------------------------

TEST(Interop, ReferenceFilesPresent) {
  const Reference* ref = Reference::get();
  if (!ref) GTEST_SKIP() << "SAFETENSORS_INTEROP_DIR is not set";
  EXPECT_FALSE(ref->files().empty());
  EXPECT_FALSE(ref->slices().empty());
}

std::vector<std::string> reference_files() {
  const Reference* ref = Reference::get();
  return ref ? ref->file_names() : std::vector<std::string>{};
}

std::vector<std::string> sliced_files() {
  const Reference* ref = Reference::get();
  return ref ? ref->sliced_file_names() : std::vector<std::string>{};
}

std::string test_name(const testing::TestParamInfo<std::string>& info) {
  std::string name = info.param.substr(0, info.param.rfind(".safetensors"));
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
}

class InteropFile : public testing::TestWithParam<std::string> {
 protected:
  const Reference& ref() const { return *Reference::get(); }
  const ExpectedFile& expected() const { return ref().file(GetParam()); }
  std::string path() const { return (ref().dir() / GetParam()).string(); }

  void check_load(Backend backend) const {
    const ExpectedFile& want = expected();
    SafeOpen f(path(), options(backend));
    EXPECT_EQ(f.header().has_metadata(), want.metadata.has_value());
    EXPECT_EQ(f.metadata(), want.metadata.value_or(Metadata{}));
    EXPECT_EQ(f.size(), want.tensors.size());
    TensorDict all = f.tensors();
    for (const ExpectedTensor& t : want.tensors) {
      SCOPED_TRACE("tensor " + quoted(t.name));
      ASSERT_TRUE(f.contains(t.name));
      EXPECT_EQ(f.info(t.name).dtype, t.dtype);
      EXPECT_EQ(f.info(t.name).shape, t.shape);
      const auto sizes = torch_sizes(t.dtype, t.shape);
      at::Tensor got = f.get_tensor(t.name);
      EXPECT_EQ(got.scalar_type(), torch_dtype_of(t.dtype));
      EXPECT_EQ(compare(got, sizes, t.bytes), "");
      EXPECT_EQ(compare(f.get_slice(t.name).all(), sizes, t.bytes), "") << "get_slice().all()";
      EXPECT_EQ(compare(all[t.name], sizes, t.bytes), "") << "tensors()";
    }
  }
};

TEST_P(InteropFile, LoadsBitExactWithMmap) { check_load(Backend::Mmap); }
TEST_P(InteropFile, LoadsBitExactWithPread) { check_load(Backend::Pread); }

TEST_P(InteropFile, ResavesTheReferenceBytes) {
  // Owned copies, so the re-saved file never aliases the one it came from.
  SafeOpen f(path(), options(Backend::Pread));
  NamedTensors tensors;
  for (const TensorInfo& info : f.header().tensors()) {
    at::Tensor t = f.get_tensor(info.name);
    if (to_torch_dtype(info.dtype)) {
      tensors.add(info.name, t);
    } else {
      tensors.add_raw(info.name, info.dtype, info.shape, t.reshape({-1}));
    }
  }
  const std::optional<Metadata> metadata =
      f.header().has_metadata() ? std::optional<Metadata>(f.metadata()) : std::nullopt;
  fs::create_directories(ref().out());
  const fs::path out = ref().out() / GetParam();
  save_file(tensors, out.string(), metadata, SaveOptions().fsync(false));

  const std::string reference = read_all(path());
  const std::string ours = read_all(out);
  EXPECT_EQ(ours.size(), reference.size());
  const auto diff = std::mismatch(ours.begin(), ours.end(), reference.begin(), reference.end());
  EXPECT_TRUE(diff.first == ours.end() && diff.second == reference.end())
      << "first difference at byte " << (diff.first - ours.begin()) << " (header is "
      << 8 + f.header().header_size() << " bytes)";
  const std::vector<std::uint8_t> bytes = save(tensors, metadata);
  EXPECT_TRUE(std::string(bytes.begin(), bytes.end()) == ours) << "save() and save_file() differ";
}

INSTANTIATE_TEST_SUITE_P(Reference, InteropFile, testing::ValuesIn(reference_files()), test_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(InteropFile);

class InteropSlices : public testing::TestWithParam<std::string> {};

TEST_P(InteropSlices, MatchTheReference) {
  const Reference& ref = *Reference::get();
  for (Backend backend : {Backend::Mmap, Backend::Pread}) {
    SafeOpen f((ref.dir() / GetParam()).string(), options(backend));
    for (const SliceCase& c : ref.slices().at(GetParam())) {
      SCOPED_TRACE("tensor " + quoted(c.tensor) + " index " + c.index.dump() +
                   (backend == Backend::Mmap ? " (mmap)" : " (pread)"));
      at::Tensor got;
      try {
        got = f.get_slice(c.tensor)(to_index(c.index));
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
        continue;
      }
      EXPECT_EQ(got.scalar_type(), torch_dtype_of(c.result->dtype));
      EXPECT_EQ(compare(got, torch_sizes(c.result->dtype, c.result->shape), c.result->bytes), "");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, InteropSlices, testing::ValuesIn(sliced_files()), test_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(InteropSlices);

}  // namespace
}  // namespace safetensors
