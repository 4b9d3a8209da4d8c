// AOTInductor packages filled from safetensors (load_constants), against
// Python: test/interop/aoti_package.py compiles a two-layer model with
// torch._inductor.aoti_compile_and_package once per run and writes other
// weights and the eager model's outputs with Python's safetensors. Built only
// where LibTorch has AOTInductor's package loader (SAFETENSORS_TORCH_HAS_AOTI).
//
// Python is SAFETENSORS_INTEROP_PYTHON (a command line, default
// /usr/bin/python3), run from the current folder with paths relative to it;
// the suite is skipped when it cannot import torch._inductor. Compiling needs
// a C++ compiler and setuptools (python3-setuptools) beside torch.

#include <gtest/gtest.h>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "safetensors/aoti.hpp"
#include "safetensors/error.hpp"
#include "safetensors/load.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

namespace fs = std::filesystem;
using torch::inductor::AOTIModelPackageLoader;

std::string python_command() {
  const char* env = std::getenv("SAFETENSORS_INTEROP_PYTHON");
  return env && *env ? env : "/usr/bin/python3";
}

// The package and the files of aoti_package.py, made once for the suite.
class AotiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string python = python_command();
    if (std::system((python + " -c 'import torch._inductor' >/dev/null 2>&1").c_str()) != 0) {
      skip_ = "'" + python + "' cannot import torch._inductor";
      return;
    }
    dir_ = new fs::path("aoti_test." + std::to_string(::getpid()));  // under the current folder
    fs::create_directories(*dir_);
    const fs::path script = fs::path(SAFETENSORS_TEST_DATA_DIR).parent_path() / "interop" / "aoti_package.py";
    const std::string line = python + " " + fs::relative(script, fs::current_path()).string() + " " + dir_->string();
    const auto start = std::chrono::steady_clock::now();
    made_ = std::system(line.c_str()) == 0;
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    std::cout << "aoti_package.py: " << took.count() << " s\n";
    if (!made_) skip_ = "";  // a failure, reported by every test
  }
  static void TearDownTestSuite() {
    if (!dir_) return;
    std::error_code ec;
    fs::remove_all(*dir_, ec);
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << skip_;
    ASSERT_TRUE(made_) << "test/interop/aoti_package.py failed (is python3-setuptools installed?)";
  }

  static std::string file(const std::string& name) { return (*dir_ / name).string(); }
  static std::unique_ptr<AOTIModelPackageLoader> package() {
    return std::make_unique<AOTIModelPackageLoader>(file("model.pt2"));
  }
  static at::Tensor expected(const std::string& name) { return SafeOpen(file("expected.safetensors")).get_tensor(name); }
  static at::Tensor run(AOTIModelPackageLoader& p) { return p.run({expected("x")}).at(0); }
  // A copy of other.safetensors with `change` applied to its tensors.
  static std::string variant(const std::string& name, const std::function<void(std::map<std::string, at::Tensor>&)>& change) {
    std::map<std::string, at::Tensor> tensors;
    for (const auto& item : load_file(file("other.safetensors"))) tensors.emplace(item.key(), item.value().clone());
    change(tensors);
    save_file(tensors, file(name));
    return file(name);
  }

  static inline fs::path* dir_ = nullptr;
  static inline std::string skip_;
  static inline bool made_ = false;
};

void expect_close(const at::Tensor& got, const at::Tensor& want) {
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(torch::allclose(got, want, 1e-5, 1e-6)) << "max difference " << (got - want).abs().max().item<double>();
}

// The package runs as compiled, and its 8-element fc2.bias is no constant:
// AOTInductor folded it into the generated code.
TEST_F(AotiTest, PackageKeepsLargeTensorsAsConstants) {
  auto p = package();
  expect_close(run(*p), expected("initial"));
  std::vector<std::string> fqns = p->get_constant_fqns();
  std::sort(fqns.begin(), fqns.end());
  EXPECT_EQ(fqns, (std::vector<std::string>{"fc1.bias", "fc1.weight", "fc2.weight"}));
}

// A full state dict names the folded bias: strict refuses it, and nothing changes.
TEST_F(AotiTest, StrictRefusesWhatThePackageFolded) {
  auto p = package();
  try {
    load_constants(*p, file("other.safetensors"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::StateDictMismatch);
    EXPECT_NE(std::string(e.what()).find("unexpected: 'fc2.bias'"), std::string::npos) << e.what();
  }
  expect_close(run(*p), expected("initial"));
}

// Weights written by Python's safetensors fill the package: its output is the
// eager model's with them (and the folded bias the package keeps).
TEST_F(AotiTest, FillsConstantsFromPythonFile) {
  auto p = package();
  const LoadReport report = load_constants(*p, file("other.safetensors"), StateDictLoadOptions().strict(false));
  EXPECT_EQ(report.loaded_keys, (std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight"}));
  EXPECT_TRUE(report.missing_keys.empty());
  EXPECT_TRUE(report.mismatched.empty());
  ASSERT_EQ(report.unexpected_keys.size(), 1u);
  EXPECT_EQ(report.unexpected_keys[0].file_name, "fc2.bias");
  expect_close(run(*p), expected("other"));
}

// Each load swaps the whole set in again: the third set after the second, and
// back (LibTorch 2.6's CPU runtime would keep the package's own weights on the
// second swap).
TEST_F(AotiTest, SwapsAgainAndAgain) {
  auto p = package();
  const auto options = StateDictLoadOptions().strict(false);
  load_constants(*p, file("other.safetensors"), options);
  expect_close(run(*p), expected("other"));
  load_constants(*p, file("third.safetensors"), options);
  expect_close(run(*p), expected("third"));
  load_constants(*p, SafeOpen(file("other.safetensors")), options);
  expect_close(run(*p), expected("other"));
}

// A shape that differs from the package's is refused, strict or not, before
// anything changes, on the first load and on later ones.
TEST_F(AotiTest, ShapeMismatchChangesNothing) {
  const std::string wrong = variant("wrong_shape.safetensors", [](auto& t) { t["fc1.weight"] = torch::zeros({32, 15}); });
  for (bool strict : {true, false}) {
    SCOPED_TRACE(strict ? "strict" : "not strict");
    auto p = package();
    const auto options = StateDictLoadOptions().strict(strict);
    try {
      load_constants(*p, wrong, options);
      FAIL() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::StateDictMismatch);
      EXPECT_NE(std::string(e.what()).find("'fc1.weight'"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("(shape)"), std::string::npos) << e.what();
    }
    expect_close(run(*p), expected("initial"));
    load_constants(*p, file("third.safetensors"), StateDictLoadOptions().strict(false));
    if (strict) {
      EXPECT_THROW(load_constants(*p, wrong, options), Error);
      expect_close(run(*p), expected("third"));
    }
  }
}

// A tensor the file lacks: refused when strict; and a first load, which
// replaces the whole buffer, cannot do without it even when not strict.
TEST_F(AotiTest, MissingTensorChangesNothing) {
  const std::string lacking = variant("lacking.safetensors", [](auto& t) { t.erase("fc2.weight"); });
  auto p = package();
  try {
    load_constants(*p, lacking);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::StateDictMismatch);
    EXPECT_NE(std::string(e.what()).find("missing: 'fc2.weight'"), std::string::npos) << e.what();
  }
  expect_close(run(*p), expected("initial"));
  EXPECT_THROW(load_constants(*p, lacking, StateDictLoadOptions().strict(false)), Error);
  expect_close(run(*p), expected("initial"));

  // Once loaded, a CPU package is written in place: strict still refuses,
  // and not strict keeps the constants the file lacks.
  load_constants(*p, file("third.safetensors"), StateDictLoadOptions().strict(false));
  EXPECT_THROW(load_constants(*p, lacking), Error);
  expect_close(run(*p), expected("third"));
  const LoadReport report = load_constants(*p, lacking, StateDictLoadOptions().strict(false));
  EXPECT_EQ(report.missing_keys, std::vector<std::string>{"fc2.weight"});
  EXPECT_EQ(report.loaded_keys, (std::vector<std::string>{"fc1.weight", "fc1.bias"}));
  // fc1 from the file, fc2.weight still the third set's.
  const at::Tensor out = run(*p);
  EXPECT_FALSE(torch::allclose(out, expected("third"), 1e-5, 1e-6));
  EXPECT_FALSE(torch::allclose(out, expected("other"), 1e-5, 1e-6));
  load_constants(*p, file("other.safetensors"), StateDictLoadOptions().strict(false));
  expect_close(run(*p), expected("other"));
}

// Dtypes must match; floating-point ones are converted when asked.
TEST_F(AotiTest, DtypeChecksAndConversion) {
  const std::string doubles = variant("doubles.safetensors", [](auto& t) {
    t.erase("fc2.bias");
    for (auto& [name, tensor] : t) tensor = tensor.to(torch::kFloat64);
  });
  auto p = package();
  try {
    load_constants(*p, doubles);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::StateDictMismatch);
    EXPECT_NE(std::string(e.what()).find("(dtype)"), std::string::npos) << e.what();
  }
  expect_close(run(*p), expected("initial"));
  const LoadReport report = load_constants(*p, doubles, StateDictLoadOptions().convert_dtype(true));
  EXPECT_TRUE(report.ok()) << report.describe();
  expect_close(run(*p), expected("other"));
}

// A sharded set, renamed on the way (a file saved with a "model." prefix),
// and constants that are views of the mapping (ZeroCopy).
TEST_F(AotiTest, ShardedRenamedAndZeroCopy) {
  test::TempDir dir;
  NamedTensors tensors;
  for (const auto& item : load_file(file("other.safetensors")))
    if (item.key() != "fc2.bias") tensors.add("model." + item.key(), item.value());
  save_sharded(tensors, dir.path().string(), std::nullopt, ShardedSaveOptions().max_shard_size(1000));
  ASSERT_TRUE(fs::exists(dir.file("model.safetensors.index.json")));
  auto p = package();
  const auto options = StateDictLoadOptions().strip_prefix("model.").mode(LoadMode::ZeroCopy);
  const LoadReport report = load_constants(*p, ShardedOpen(dir.path().string()), options);
  EXPECT_TRUE(report.ok()) << report.describe();
  expect_close(run(*p), expected("other"));
  // Later loads write those views in place (privately: the file is untouched).
  load_constants(*p, file("third.safetensors"), StateDictLoadOptions().strict(false));
  expect_close(run(*p), expected("third"));
  ShardedOpen again(dir.path().string());
  EXPECT_TRUE(torch::equal(again.get_tensor("model.fc1.weight"), load_file(file("other.safetensors"))["fc1.weight"]));
}

// What a load costs beside the package's own start.
TEST_F(AotiTest, Timing) {
  const auto start = std::chrono::steady_clock::now();
  auto p = package();
  const auto opened = std::chrono::steady_clock::now();
  load_constants(*p, file("other.safetensors"), StateDictLoadOptions().strict(false));
  const auto loaded = std::chrono::steady_clock::now();
  const std::chrono::duration<double, std::milli> open_ms = opened - start, load_ms = loaded - opened;
  std::cout << "AOTIModelPackageLoader: " << open_ms.count() << " ms, load_constants: " << load_ms.count() << " ms\n";
  expect_close(run(*p), expected("other"));
}

}  // namespace
}  // namespace safetensors
