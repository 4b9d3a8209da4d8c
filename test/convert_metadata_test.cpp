// Tests of converting Python training checkpoints: their non-tensor values
// kept as JSON metadata, and `key({"optimizer"})` giving a file load_optimizer
// resumes from. The checkpoints are written at test time by Debian's torch
// (data/pickle/make_training_resume.py), or by the command line
// SAFETENSORS_INTEROP_PYTHON names, run with paths relative to the current
// folder (so that a root binding it sees the same paths):
//
//   SAFETENSORS_INTEROP_PYTHON="tools/reference-root.sh run -- python3" build/test/convert_metadata_test

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/nn.h>
#include <torch/optim.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>

#include "safetensors/migrate.hpp"
#include "safetensors/optimizer.hpp"
#include "safetensors/safetensors.hpp"
#include "test_util.hpp"

namespace {

namespace st = safetensors;
using nlohmann::json;
using st::ErrorCode;
using st::test::error_code_of;
using st::test::TempDir;

namespace fs = std::filesystem;

const fs::path kScript = fs::path(SAFETENSORS_TEST_DATA_DIR) / "pickle" / "make_training_resume.py";
constexpr int kSteps = 3, kResumed = 4;

std::string python() {
  const char* chosen = std::getenv("SAFETENSORS_INTEROP_PYTHON");
  return chosen && *chosen ? chosen : "/usr/bin/python3";
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The checkpoints of make_training_resume.py, written once for the suite in a
// folder under the current one.
class ConvertMetadata : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = "convert_metadata." + std::to_string(::getpid());
    fs::create_directories(dir_);
    const std::string command = python() + " " + fs::relative(kScript).string() + " " + dir_.string() + " " +
                                std::to_string(kSteps) + " " + std::to_string(kResumed) + " >/dev/null 2>&1";
    ready_ = std::system(command.c_str()) == 0;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void SetUp() override {
    if (!ready_) GTEST_SKIP() << python() << " could not run " << kScript.string() << " (needs torch)";
  }
  static std::string in(const std::string& name) { return (dir_ / name).string(); }
  std::string out(const std::string& name) const { return (tmp_.path() / name).string(); }

  static inline fs::path dir_;
  static inline bool ready_ = false;
  TempDir tmp_;
};

// The small model of make_training_resume.py, with Python's parameter names.
torch::nn::Sequential make_model() {
  return torch::nn::Sequential(torch::nn::Linear(4, 3), torch::nn::Tanh(), torch::nn::Linear(3, 2));
}

// A parameter's state: keyed by its TensorImpl's address, as text in LibTorch
// 1.13 and as the pointer in 2.x.
template <typename Map>
torch::optim::OptimizerParamState& state_of(Map& state, const at::Tensor& param) {
  if constexpr (std::is_same_v<typename Map::key_type, std::string>) {
    std::ostringstream text;
    text << static_cast<const void*>(param.unsafeGetTensorImpl());
    return *state.at(text.str());
  } else {
    return *state.at(static_cast<typename Map::key_type>(param.unsafeGetTensorImpl()));
  }
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& kind, torch::nn::Module& model) {
  if (kind == "adam") return std::make_unique<torch::optim::Adam>(model.parameters(), torch::optim::AdamOptions(1));
  return std::make_unique<torch::optim::SGD>(model.parameters(), torch::optim::SGDOptions(1));
}

TEST_F(ConvertMetadata, NonTensorValuesBecomeTheJsonPythonWrites) {
  for (const std::string kind : {"adam", "sgd"}) {
    SCOPED_TRACE(kind);
    const st::ConvertReport report = st::convert_checkpoint(in(kind + ".pt"), out(kind + ".safetensors"));
    const st::SafeOpen file(out(kind + ".safetensors"));
    const json expected = json::parse(read_text(in(kind + ".expected.json")));
    for (const auto& [key, text] : expected.items()) {
      SCOPED_TRACE(key);
      ASSERT_TRUE(file.metadata().count(key));
      EXPECT_EQ(json::parse(file.metadata().at(key)), json::parse(text.get<std::string>()));
    }
    // nlohmann reads no Infinity or NaN: their text is Python's, exactly.
    EXPECT_EQ(file.metadata().at("data.specials"), read_text(in(kind + ".specials.txt")));
    EXPECT_EQ(report.metadata_keys.size(), expected.size() + 1);
    EXPECT_EQ(file.metadata().size(), expected.size() + 2);  // and "format"
    EXPECT_TRUE(report.non_tensors.empty());
    EXPECT_TRUE(file.contains(kind == "adam" ? "optimizer.state.0.exp_avg" : "optimizer.state.0.momentum_buffer"));
  }
}

TEST_F(ConvertMetadata, KeepNonTensorsOffWritesNone) {
  const st::ConvertReport report = st::convert_checkpoint(in("adam.pt"), out("adam.safetensors"),
                                                          st::ConvertOptions().keep_non_tensors(false));
  EXPECT_EQ(st::SafeOpen(out("adam.safetensors")).metadata(), (st::Metadata{{"format", "pt"}}));
  EXPECT_TRUE(report.metadata_keys.empty());
  std::map<std::string, std::string> reported;
  for (const st::NonTensorEntry& e : report.non_tensors) reported[e.name] = e.description;
  EXPECT_EQ(reported.count("epoch"), 1u);
  EXPECT_EQ(reported.count("optimizer.param_groups"), 1u);
}

// The metadata given takes precedence; the value is reported, not written.
TEST_F(ConvertMetadata, MetadataGivenTakesPrecedence) {
  const st::ConvertReport report = st::convert_checkpoint(
      in("adam.pt"), out("adam.safetensors"), st::ConvertOptions().metadata({{"epoch", "mine"}}));
  EXPECT_EQ(st::SafeOpen(out("adam.safetensors")).metadata().at("epoch"), "mine");
  ASSERT_EQ(report.non_tensors.size(), 1u);
  EXPECT_EQ(report.non_tensors[0].name, "epoch");
  EXPECT_NE(report.non_tensors[0].description.find("not kept: its name is a metadata key already"),
            std::string::npos);
}

TEST_F(ConvertMetadata, OptimizerKeyLoadsIntoLibTorch) {
  for (const std::string kind : {"adam", "sgd"}) {
    SCOPED_TRACE(kind);
    const st::ConvertReport report = st::convert_checkpoint(in(kind + ".pt"), out("optimizer.safetensors"),
                                                            st::ConvertOptions().key({"optimizer"}));
    EXPECT_EQ(report.metadata_keys, std::vector<std::string>{"param_groups"});
    auto model = make_model();
    auto optimizer = make_optimizer(kind, *model);
    st::load_optimizer(*optimizer, out("optimizer.safetensors"));

    const st::Checkpoint python_state = st::read_checkpoint(in(kind + ".pt"), st::CheckpointOptions().key({"optimizer"}));
    const auto params = model->parameters();
    ASSERT_EQ(params.size(), 4u);
    for (std::size_t i = 0; i < params.size(); ++i) {
      SCOPED_TRACE(i);
      auto& state = state_of(optimizer->state(), params[i]);
      const std::string at = "state." + std::to_string(i) + ".";
      if (kind == "adam") {
        auto& adam = static_cast<torch::optim::AdamParamState&>(state);
        EXPECT_TRUE(at::equal(adam.exp_avg(), python_state.tensors[at + "exp_avg"]));
        EXPECT_TRUE(at::equal(adam.exp_avg_sq(), python_state.tensors[at + "exp_avg_sq"]));
        EXPECT_EQ(adam.step(), kSteps);
      } else {
        auto& sgd = static_cast<torch::optim::SGDParamState&>(state);
        EXPECT_TRUE(at::equal(sgd.momentum_buffer(), python_state.tensors[at + "momentum_buffer"]));
      }
    }
    const auto& group = optimizer->param_groups().at(0).options();
    if (kind == "adam") {
      const auto& o = static_cast<const torch::optim::AdamOptions&>(group);
      EXPECT_DOUBLE_EQ(o.lr(), 0.01);
      EXPECT_DOUBLE_EQ(o.weight_decay(), 0.001);
    } else {
      const auto& o = static_cast<const torch::optim::SGDOptions&>(group);
      EXPECT_DOUBLE_EQ(o.lr(), 0.05);
      EXPECT_DOUBLE_EQ(o.momentum(), 0.9);
    }
  }
}

// The values are names of the checkpoint's tree: selecting and renaming the
// optimizer's subtree writes what key({"optimizer"}) writes, param_groups included.
TEST_F(ConvertMetadata, ValuesAreSelectedAndRenamedWithTheirTree) {
  const st::ConvertReport report = st::convert_checkpoint(
      in("adam.pt"), out("optimizer.safetensors"),
      st::ConvertOptions().transform(st::TensorTransform().include({"optimizer.*"}).strip_prefix("optimizer.")));
  EXPECT_EQ(report.metadata_keys, std::vector<std::string>{"param_groups"});
  EXPECT_TRUE(report.non_tensors.empty());
  const st::ConvertReport by_key = st::convert_checkpoint(in("adam.pt"), out("by_key.safetensors"),
                                                          st::ConvertOptions().key({"optimizer"}));
  EXPECT_EQ(st::SafeOpen(out("optimizer.safetensors")).metadata(), st::SafeOpen(out("by_key.safetensors")).metadata());
  EXPECT_TRUE(st::diff_checkpoints(out("optimizer.safetensors"), out("by_key.safetensors")).equal());
  auto model = make_model();
  auto optimizer = make_optimizer("adam", *model);
  st::load_optimizer(*optimizer, out("optimizer.safetensors"));
  EXPECT_DOUBLE_EQ(static_cast<const torch::optim::AdamOptions&>(optimizer->param_groups().at(0).options()).lr(), 0.01);
}

// Python trained kSteps steps and saved; C++ resumes from the converted model
// and optimizer for kResumed steps and reaches the parameters Python reached.
TEST_F(ConvertMetadata, ResumesPythonTraining) {
  for (const std::string kind : {"adam", "sgd"}) {
    SCOPED_TRACE(kind);
    st::convert_checkpoint(in(kind + ".pt"), out("model.safetensors"), st::ConvertOptions().key({"model"}));
    st::convert_checkpoint(in(kind + ".pt"), out("optimizer.safetensors"), st::ConvertOptions().key({"optimizer"}));
    auto model = make_model();
    st::load_state_dict(*model, out("model.safetensors"));
    auto optimizer = make_optimizer(kind, *model);
    st::load_optimizer(*optimizer, out("optimizer.safetensors"));

    st::Checkpoint data = st::read_checkpoint(in(kind + ".pt"), st::CheckpointOptions().key({"data"}));
    const at::Tensor x = data.tensors["x"], y = data.tensors["y"];
    for (int i = 0; i < kResumed; ++i) {
      optimizer->zero_grad();
      torch::mse_loss(model->forward(x), y).backward();
      optimizer->step();
    }
    st::Checkpoint reached = st::read_checkpoint(in(kind + ".resumed.pt"));
    for (const auto& item : model->named_parameters()) {
      SCOPED_TRACE(item.key());
      ASSERT_TRUE(reached.tensors.contains(item.key()));
      EXPECT_TRUE(at::allclose(item.value().detach(), reached.tensors[item.key()], 1e-5, 1e-6))
          << (item.value().detach() - reached.tensors[item.key()]).abs().max().item<float>();
    }
  }
}

// A string the memo repeats writes out to 50 MB of JSON, more than an entry
// may keep (kMaxJsonEntry) and than the bound on what flattening makes: the
// entry keeps no text and is reported, and the rest converts.
TEST_F(ConvertMetadata, SharedStringsStayWithinTheBound) {
  const st::ConvertReport report = st::convert_checkpoint(in("hostile_json.pt"), out("h.safetensors"));
  EXPECT_EQ(report.metadata_keys, std::vector<std::string>{"epoch"});
  ASSERT_EQ(report.non_tensors.size(), 1u);
  EXPECT_EQ(report.non_tensors[0].name, "big");
  EXPECT_NE(report.non_tensors[0].description.find("JSON text over"), std::string::npos)
      << report.non_tensors[0].description;
  const st::SafeOpen f(out("h.safetensors"));
  EXPECT_EQ(f.keys(), std::vector<std::string>{"t"});
  EXPECT_EQ(f.metadata(), (st::Metadata{{"format", "pt"}, {"epoch", "2"}}));
}

// A value whose text is a tensor's name would read back as an alias of that
// tensor: it is reported, not kept.
TEST_F(ConvertMetadata, AValueNamingATensorIsNotKept) {
  const st::ConvertReport report = st::convert_checkpoint(in("list_value.pt"), out("l.safetensors"));
  EXPECT_TRUE(report.metadata_keys.empty());
  ASSERT_EQ(report.non_tensors.size(), 1u);
  EXPECT_EQ(report.non_tensors[0].name, "3");
  EXPECT_NE(report.non_tensors[0].description.find("tensor's name"), std::string::npos);
  EXPECT_TRUE(st::diff_checkpoints(in("list_value.pt"), out("l.safetensors")).equal());
}

// Values share the tensors' names: a prefix strip that makes a value's name
// that of a tensor or of another value is refused, as for two tensors.
TEST_F(ConvertMetadata, RenamingRefusesNamesItMakesOneWithValues) {
  const auto strip = st::ConvertOptions().transform(st::TensorTransform().strip_prefix("p."));
  EXPECT_EQ(error_code_of([&] { st::convert_checkpoint(in("colliding.pt"), out("c.safetensors"), strip); }),
            ErrorCode::InvalidArgument);
  EXPECT_FALSE(fs::exists(out("c.safetensors")));
  // Without the value of the tensor's new name, the values still collide.
  const auto strip_b = st::ConvertOptions().transform(st::TensorTransform().exclude({"a"}).strip_prefix("p."));
  try {
    st::convert_checkpoint(in("colliding.pt"), out("c.safetensors"), strip_b);
    FAIL() << "converted";
  } catch (const st::Error& e) {
    EXPECT_NE(std::string(e.what()).find("both 'p.b' and 'b'"), std::string::npos) << e.what();
  }
}

// A selection is of tensors and values alike: a pattern that matches only a
// value matches, and a selection of values alone is no empty selection. An
// optimizer without tensor state is one value, "optimizer" (the largest
// subtree without a tensor), which `optimizer.*` does not select: key()
// takes it apart, and gives a file load_optimizer reads.
TEST_F(ConvertMetadata, ValuesCountForTheSelection) {
  const auto below = st::ConvertOptions().transform(st::TensorTransform().include({"optimizer.*"}));
  EXPECT_EQ(error_code_of([&] { st::convert_checkpoint(in("plain_sgd.pt"), out("o.safetensors"), below); }),
            ErrorCode::InvalidArgument);
  const st::ConvertReport report =
      st::convert_checkpoint(in("plain_sgd.pt"), out("o.safetensors"), st::ConvertOptions().key({"optimizer"}));
  EXPECT_EQ(report.tensors, 0u);
  EXPECT_EQ(report.metadata_keys, (std::vector<std::string>{"state", "param_groups"}));
  auto model = torch::nn::Linear(2, 1);
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(1));
  st::load_optimizer(sgd, out("o.safetensors"));
  EXPECT_DOUBLE_EQ(static_cast<const torch::optim::SGDOptions&>(sgd.param_groups().at(0).options()).lr(), 0.5);

  const st::ConvertReport some = st::convert_checkpoint(
      in("plain_sgd.pt"), out("m.safetensors"),
      st::ConvertOptions().transform(st::TensorTransform().include({"model.*", "epoch"})));
  EXPECT_TRUE(some.transform.unmatched_include.empty());
  EXPECT_EQ(some.metadata_keys, std::vector<std::string>{"epoch"});
  EXPECT_EQ(some.tensors, 2u);
  const st::ConvertReport only_value = st::convert_checkpoint(
      in("plain_sgd.pt"), out("e.safetensors"), st::ConvertOptions().transform(st::TensorTransform().include({"epoch"})));
  EXPECT_EQ(only_value.tensors, 0u);
  EXPECT_EQ(st::SafeOpen(out("e.safetensors")).metadata().at("epoch"), "4");
}

TEST_F(ConvertMetadata, ValuesWithoutJsonAreReported) {
  const st::ConvertReport report = st::convert_checkpoint(in("no_json.pt"), out("n.safetensors"));
  EXPECT_EQ(report.metadata_keys, std::vector<std::string>{"epoch"});
  std::vector<std::string> reported;
  for (const st::NonTensorEntry& e : report.non_tensors) reported.push_back(e.name);
  EXPECT_EQ(reported, (std::vector<std::string>{"z", "where"}));
  EXPECT_EQ(st::SafeOpen(out("n.safetensors")).metadata(), (st::Metadata{{"format", "pt"}, {"epoch", "1"}}));
}

// Python pickles a lone surrogate as bytes that are not UTF-8: refused by the
// reader, naming the rule, before any metadata is made of it.
TEST_F(ConvertMetadata, InvalidUtf8StringIsRefused) {
  try {
    st::convert_checkpoint(in("surrogate.pt"), out("s.safetensors"));
    FAIL() << "converted";
  } catch (const st::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidCheckpoint);
    EXPECT_NE(std::string(e.what()).find("not valid UTF-8"), std::string::npos) << e.what();
  }
}

}  // namespace
