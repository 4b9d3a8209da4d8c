// Optimizer state and training checkpoints: the layout of Python's
// optimizer.state_dict(), exact resumes for every supported optimizer, the
// checks of a load (nothing changes when one fails), and interop with Python's
// torch (test/interop/optimizer_interop.py).
//
// The interop tests run SAFETENSORS_INTEROP_PYTHON (a command line, default
// /usr/bin/python3) from the current folder, with paths relative to it, and
// are skipped when it cannot import torch. For torch 2.6 and the safetensors
// package of the reference root, run from the source folder:
//   SAFETENSORS_INTEROP_PYTHON="tools/reference-root.sh run -- python3" build/test/optimizer_test
//       --gtest_filter='OptimizerInterop*'   (one command line)

#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <type_traits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "safetensors/load.hpp"
#include "safetensors/module.hpp"
#include "safetensors/optimizer.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "safetensors/training.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

namespace fs = std::filesystem;
namespace optim = torch::optim;
using json = nlohmann::json;
using test::TempDir;

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 5));
    fc2 = register_module("fc2", torch::nn::Linear(5, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2->forward(torch::tanh(fc1->forward(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Net);

Net make_net(std::uint64_t seed) {
  torch::manual_seed(seed);
  return Net();
}

// The batch every step trains on.
std::pair<torch::Tensor, torch::Tensor> batch() {
  torch::manual_seed(42);
  return {torch::randn({16, 4}), torch::randn({16, 3})};
}

void train(Net& net, optim::Optimizer& optimizer, int steps) {
  const auto [x, y] = batch();
  for (int i = 0; i < steps; ++i) {
    optimizer.zero_grad();
    torch::Tensor loss = torch::mse_loss(net->forward(x), y);
    loss.backward();
    optimizer.step();
  }
}

// An optimizer of a kind over two groups (fc1 and fc2, with their own lr),
// and the same as Python's constructor keywords.
struct Spec {
  std::string name;
  std::string python;  // torch.optim class
  std::string kwargs;  // JSON, Python's names
  std::function<std::unique_ptr<optim::Optimizer>(Net&)> make;
};

template <typename Optimizer, typename Options>
std::unique_ptr<optim::Optimizer> two_groups(Net& net, const Options& options, double lr0, double lr1) {
  std::vector<optim::OptimizerParamGroup> groups;
  groups.emplace_back(net->fc1->parameters(), std::make_unique<Options>(Options(options).lr(lr0)));
  groups.emplace_back(net->fc2->parameters(), std::make_unique<Options>(Options(options).lr(lr1)));
  return std::make_unique<Optimizer>(std::move(groups), options);
}

std::vector<Spec> specs() {
  return {
      {"SgdMomentum", "SGD", R"({"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01})",
       [](Net& n) {
         return two_groups<optim::SGD>(n, optim::SGDOptions(0.1).momentum(0.9).dampening(0.1).weight_decay(0.01),
                                       0.05, 0.02);
       }},
      {"SgdNesterov", "SGD", R"({"momentum": 0.8, "nesterov": true})",
       [](Net& n) { return two_groups<optim::SGD>(n, optim::SGDOptions(0.1).momentum(0.8).nesterov(true), 0.05, 0.02); }},
      {"Adam", "Adam", R"({"betas": [0.8, 0.99], "eps": 1e-7, "weight_decay": 0.01})",
       [](Net& n) {
         return two_groups<optim::Adam>(
             n, optim::AdamOptions(0.01).betas(std::make_tuple(0.8, 0.99)).eps(1e-7).weight_decay(0.01), 0.01, 0.005);
       }},
      {"AdamAmsgrad", "Adam", R"({"amsgrad": true})",
       [](Net& n) { return two_groups<optim::Adam>(n, optim::AdamOptions(0.01).amsgrad(true), 0.01, 0.005); }},
      {"AdamW", "AdamW", R"({"weight_decay": 0.05, "amsgrad": true})",
       [](Net& n) {
         return two_groups<optim::AdamW>(n, optim::AdamWOptions(0.01).weight_decay(0.05).amsgrad(true), 0.01, 0.005);
       }},
      {"RMSprop", "RMSprop", R"({"momentum": 0.5, "centered": true, "alpha": 0.9})",
       [](Net& n) {
         return two_groups<optim::RMSprop>(n, optim::RMSpropOptions(0.01).momentum(0.5).centered(true).alpha(0.9),
                                           0.01, 0.005);
       }},
      {"RMSpropPlain", "RMSprop", R"({})",
       [](Net& n) { return two_groups<optim::RMSprop>(n, optim::RMSpropOptions(0.01), 0.01, 0.005); }},
      {"Adagrad", "Adagrad", R"({"lr_decay": 0.01, "initial_accumulator_value": 0.1})",
       [](Net& n) {
         return two_groups<optim::Adagrad>(
             n, optim::AdagradOptions(0.1).lr_decay(0.01).initial_accumulator_value(0.1), 0.1, 0.05);
       }},
  };
}

void PrintTo(const Spec& spec, std::ostream* out) { *out << spec.name; }

void expect_same_parameters(Net& a, Net& b) {
  const auto pa = a->named_parameters();
  const auto pb = b->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(test::bitwise_equal(pa[i].value(), pb[i].value())) << pa[i].key();
}

class Resume : public ::testing::TestWithParam<Spec> {};

// N steps, save, load into a fresh module and optimizer, M more: the same
// bits as N + M steps without a break.
TEST_P(Resume, IsExact) {
  const Spec& spec = GetParam();
  TempDir dir;
  Net straight = make_net(1);
  auto straight_opt = spec.make(straight);
  train(straight, *straight_opt, 7);

  Net first = make_net(1);
  auto first_opt = spec.make(first);
  train(first, *first_opt, 4);
  save_state_dict(*first, dir.file("model.safetensors"));
  save_optimizer(*first_opt, dir.file("optimizer.safetensors"));

  Net second = make_net(2);
  auto second_opt = spec.make(second);
  load_state_dict(*second, dir.file("model.safetensors"));
  const LoadReport report = load_optimizer(*second_opt, dir.file("optimizer.safetensors"));
  EXPECT_TRUE(report.ok()) << report.describe();
  train(second, *second_opt, 3);
  expect_same_parameters(straight, second);
}

// The same through one training checkpoint, in one file and sharded.
TEST_P(Resume, IsExactThroughTrainingCheckpoint) {
  const Spec& spec = GetParam();
  for (const bool sharded : {false, true}) {
    SCOPED_TRACE(sharded ? "sharded" : "one file");
    TempDir dir;
    Net straight = make_net(1);
    auto straight_opt = spec.make(straight);
    train(straight, *straight_opt, 6);

    Net first = make_net(1);
    auto first_opt = spec.make(first);
    train(first, *first_opt, 2);
    const std::string path = sharded ? dir.path().string() : dir.file("ckpt.safetensors");
    save_training_checkpoint(path, *first, *first_opt, {2, 1, {{"run", "a"}}},
                             sharded ? TrainingSaveOptions().max_shard_size(200) : TrainingSaveOptions());
    if (sharded) {
      EXPECT_TRUE(fs::exists(dir.path() / kIndexFileName));
    }

    Net second = make_net(2);
    auto second_opt = spec.make(second);
    const TrainingLoadResult loaded = load_training_checkpoint(path, *second, *second_opt);
    EXPECT_EQ(loaded.state.step, 2);
    EXPECT_EQ(loaded.state.epoch, 1);
    EXPECT_EQ(loaded.state.metadata, (Metadata{{"run", "a"}}));
    EXPECT_TRUE(loaded.model.ok()) << loaded.model.describe();
    EXPECT_TRUE(loaded.optimizer.ok()) << loaded.optimizer.describe();
    train(second, *second_opt, 4);
    expect_same_parameters(straight, second);
  }
}

INSTANTIATE_TEST_SUITE_P(Optimizers, Resume, ::testing::ValuesIn(specs()),
                         [](const auto& info) { return info.param.name; });

// What Python's state_dict() flattens to: names, dtypes, the step as a 0-dim
// float32 tensor, and the param groups with Python's names and numbering.
TEST(Optimizer, LayoutIsPythons) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[3].make(net);  // Adam, amsgrad
  train(net, *opt, 3);
  save_optimizer(*opt, dir.file("o.safetensors"));
  SafeOpen file(dir.file("o.safetensors"));
  std::vector<std::string> keys = file.keys();
  std::sort(keys.begin(), keys.end());
  std::vector<std::string> want;
  for (int i = 0; i < 4; ++i)
    for (const char* key : {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"})
      want.push_back("state." + std::to_string(i) + "." + key);
  EXPECT_EQ(keys, want);
  const TensorInfo& step = file.info("state.2.step");
  EXPECT_EQ(step.dtype, Dtype::F32);
  EXPECT_TRUE(step.shape.empty());
  EXPECT_EQ(file.get_tensor("state.2.step").item<float>(), 3.0f);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  const json groups = json::parse(file.metadata().at("param_groups"));
  const json want_groups = json::parse(R"([
    {"lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.0, "amsgrad": true, "maximize": false,
     "foreach": null, "capturable": false, "differentiable": false, "fused": null, "params": [0, 1]},
    {"lr": 0.005, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.0, "amsgrad": true, "maximize": false,
     "foreach": null, "capturable": false, "differentiable": false, "fused": null, "params": [2, 3]}])");
  EXPECT_EQ(groups, want_groups);
  // Python's key order, which its state_dict() keeps.
  EXPECT_EQ(nlohmann::ordered_json::parse(file.metadata().at("param_groups"))[0].begin().key(), "lr");
}

// A parameter's state, whichever key type the LibTorch in use has.
template <typename Map>
const optim::OptimizerParamState& find_state(const Map& state, const at::Tensor& p) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;
    text << static_cast<const void*>(p.unsafeGetTensorImpl());
    return *state.at(text.str());
  } else {
    return *state.at(static_cast<Key>(p.unsafeGetTensorImpl()));
  }
}

const optim::OptimizerParamState& state_of(const optim::Optimizer& opt, const at::Tensor& p) {
  return find_state(opt.state(), p);
}

// The default CPU generator's state.
at::Tensor rng_state() {
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

// Each state tensor equals the optimizer's own, bit for bit.
TEST(Optimizer, SavesTheStateTensors) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[5].make(net);  // RMSprop, momentum and centered
  train(net, *opt, 2);
  save_optimizer(*opt, dir.file("o.safetensors"));
  SafeOpen file(dir.file("o.safetensors"));
  std::size_t i = 0;
  for (const auto& group : opt->param_groups())
    for (const auto& p : group.params()) {
      const auto& state = static_cast<const optim::RMSpropParamState&>(state_of(*opt, p));
      const std::string name = "state." + std::to_string(i++) + ".";
      EXPECT_TRUE(test::bitwise_equal(file.get_tensor(name + "square_avg"), state.square_avg()));
      EXPECT_TRUE(test::bitwise_equal(file.get_tensor(name + "momentum_buffer"), state.momentum_buffer()));
      EXPECT_TRUE(test::bitwise_equal(file.get_tensor(name + "grad_avg"), state.grad_avg()));
      EXPECT_EQ(file.get_tensor(name + "step").item<float>(), 2.0f);
    }
}

// A step float32 would round is saved as float64, and loads exactly.
TEST(Optimizer, LargeStepStaysExact) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[2].make(net);
  train(net, *opt, 1);
  const std::int64_t big = (std::int64_t{1} << 24) + 1;
  for (auto& [key, state] : opt->state()) static_cast<optim::AdamParamState&>(*state).step(big);
  save_optimizer(*opt, dir.file("o.safetensors"));
  EXPECT_EQ(SafeOpen(dir.file("o.safetensors")).info("state.0.step").dtype, Dtype::F64);
  Net other = make_net(1);
  auto loaded = specs()[2].make(other);
  load_optimizer(*loaded, dir.file("o.safetensors"));
  ASSERT_EQ(loaded->state().size(), 4u);
  for (auto& [key, state] : loaded->state()) EXPECT_EQ(static_cast<optim::AdamParamState&>(*state).step(), big);
}

// The optimizer's state as it is, to compare before and after a failed load.
std::string snapshot(const optim::Optimizer& opt) {
  TempDir dir;
  save_optimizer(opt, dir.file("s.safetensors"), std::nullopt, OptimizerSaveOptions().fsync(false));
  return test::read_bytes(dir.file("s.safetensors"));
}

// Rewrites a saved optimizer file: `edit` changes its tensors and metadata.
void rewrite(const std::string& path, const std::function<void(std::map<std::string, at::Tensor>&, Metadata&)>& edit) {
  SafeOpen file(path, LoadOptions().copy(true));
  std::map<std::string, at::Tensor> tensors;
  for (const std::string& key : file.keys()) tensors.emplace(key, file.get_tensor(key));
  Metadata meta = file.metadata();
  edit(tensors, meta);
  save_file(tensors, path, meta);
}

TEST(Optimizer, StrictLoadListsEveryProblemAndChangesNothing) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[2].make(net);  // Adam
  train(net, *opt, 2);
  const std::string path = dir.file("o.safetensors");
  save_optimizer(*opt, path);
  rewrite(path, [](auto& t, Metadata&) {
    t["state.0.exp_avg"] = torch::zeros({4, 5});                  // shape
    t["state.1.exp_avg_sq"] = t["state.1.exp_avg_sq"].to(torch::kFloat64);  // dtype
    t.erase("state.2.exp_avg");                                   // missing
    t["state.3.step"] = torch::tensor(1.5);                       // not a count
    t["state.9.exp_avg"] = torch::zeros({3});                     // no such parameter
    t["state.0.bogus"] = torch::zeros({3});                       // no such key
    t["other"] = torch::zeros({1});                               // outside the layout
  });
  Net target_net = make_net(1);
  auto target = specs()[2].make(target_net);
  train(target_net, *target, 1);
  const std::string before = snapshot(*target);
  try {
    load_optimizer(*target, path);
    FAIL() << "loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::StateDictMismatch);
    const std::string what = e.what();
    for (const char* needle : {"mismatched: 'state.0.exp_avg'", "F32 [5, 4], the checkpoint F32 [4, 5] (shape)",
                               "mismatched: 'state.1.exp_avg_sq'", "dtype: F64 state for a F32 parameter",
                               "missing: 'state.2.exp_avg'", "mismatched: 'state.3.step'", "found 1.5",
                               "unexpected: 'state.9.exp_avg'", "unexpected: 'state.0.bogus'", "unexpected: 'other'",
                               "Adam optimizer"})
      EXPECT_NE(what.find(needle), std::string::npos) << needle << "\n" << what;
    EXPECT_NE(what.find(path), std::string::npos);
  }
  EXPECT_EQ(snapshot(*target), before);

  // Not strict: the parameters whose state fits take it, the others keep theirs.
  const LoadReport report = load_optimizer(*target, path, OptimizerLoadOptions().strict(false));
  EXPECT_EQ(report.mismatched.size(), 3u);
  EXPECT_EQ(report.missing_keys, std::vector<std::string>{"state.2.exp_avg"});
  EXPECT_EQ(report.unexpected_keys.size(), 3u);
  EXPECT_EQ(report.loaded_keys.size(), 0u);  // every parameter has a problem
  EXPECT_EQ(snapshot(*target), before);
}

TEST(Optimizer, NonStrictLoadTakesWhatFits) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[0].make(net);  // SGD with momentum: one buffer per parameter
  train(net, *opt, 2);
  const std::string path = dir.file("o.safetensors");
  save_optimizer(*opt, path);
  rewrite(path, [](auto& t, Metadata&) { t["state.1.momentum_buffer"] = torch::zeros({2}); });
  Net target_net = make_net(1);
  auto target = specs()[0].make(target_net);
  const LoadReport report = load_optimizer(*target, path, OptimizerLoadOptions().strict(false));
  EXPECT_EQ(report.loaded_keys, (std::vector<std::string>{"state.0.momentum_buffer", "state.2.momentum_buffer",
                                                          "state.3.momentum_buffer"}));
  ASSERT_EQ(report.mismatched.size(), 1u);
  EXPECT_EQ(target->state().size(), 3u);
}

TEST(Optimizer, ParamGroupProblemsAreListedAndChangeNothing) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[2].make(net);  // Adam
  train(net, *opt, 1);
  const std::string path = dir.file("o.safetensors");
  save_optimizer(*opt, path);
  Net target_net = make_net(1);
  auto target = specs()[2].make(target_net);
  train(target_net, *target, 2);
  const std::string before = snapshot(*target);
  const auto expect_refused = [&](const std::function<void(json&)>& edit, std::vector<std::string> needles) {
    rewrite(path, [&](auto&, Metadata& meta) {
      json groups = json::parse(meta.at("param_groups"));
      edit(groups);
      meta["param_groups"] = groups.dump();
    });
    for (const bool strict : {true, false}) {
      try {
        load_optimizer(*target, path, OptimizerLoadOptions().strict(strict));
        ADD_FAILURE() << "loaded: " << needles.front();
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::StateDictMismatch);
        for (const std::string& needle : needles)
          EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << needle << "\n" << e.what();
      }
    }
    EXPECT_EQ(snapshot(*target), before);
    save_optimizer(*opt, path);
  };
  expect_refused([](json& g) { g.erase(1); }, {"the checkpoint has 1 param groups, the optimizer 2"});
  expect_refused([](json& g) { g[0]["params"] = {0}; }, {"param_groups[0]: 1 parameters in the checkpoint, 2"});
  expect_refused([](json& g) { g[1]["params"] = {1, 2}; }, {"param_groups[1]: parameter number 1 appears twice"});
  expect_refused(
      [](json& g) {
        g[0]["maximize"] = true;
        g[0]["lr"] = -1;
        g[0]["betas"] = {0.9};
        g[1].erase("eps");
        g[1]["amsgrad"] = "yes";
        g[1]["foreach"] = 3;
      },
      {"param_groups[0]: 'maximize' is true: LibTorch's optimizers cannot maximize",
       "param_groups[0]: 'lr' must be a number >= 0, found -1", "param_groups[0]: 'betas' must be two numbers",
       "param_groups[1]: 'eps' is missing",
       "param_groups[1]: 'amsgrad' must be true or false, found \"yes\"",
       "param_groups[1]: 'foreach' must be true, false or null, found 3"});
  expect_refused([](json& g) { g[0]["decoupled_weight_decay"] = true; }, {"that is AdamW"});
  expect_refused([](json& g) { g = json::object(); }, {"is not a list of param groups"});

  rewrite(path, [](auto&, Metadata& meta) { meta["param_groups"] = "[{"; });
  EXPECT_THROW(load_optimizer(*target, path), Error);
  rewrite(path, [](auto&, Metadata& meta) { meta.erase("param_groups"); });
  try {
    load_optimizer(*target, path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no metadata key 'param_groups'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(snapshot(*target), before);
}

// The hyperparameters come from the file, as in Python's load_state_dict.
TEST(Optimizer, TakesTheHyperparameters) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[2].make(net);
  static_cast<optim::AdamOptions&>(opt->param_groups()[1].options()).lr(0.125).betas(std::make_tuple(0.5, 0.75));
  save_optimizer(*opt, dir.file("o.safetensors"));  // no state yet: only groups
  EXPECT_TRUE(SafeOpen(dir.file("o.safetensors")).keys().empty());
  Net other = make_net(1);
  auto target = specs()[2].make(other);
  train(other, *target, 1);
  load_optimizer(*target, dir.file("o.safetensors"));
  const auto& o = static_cast<const optim::AdamOptions&>(target->param_groups()[1].options());
  EXPECT_EQ(o.lr(), 0.125);
  EXPECT_EQ(o.betas(), std::make_tuple(0.5, 0.75));
  EXPECT_EQ(o.eps(), 1e-7);
  EXPECT_TRUE(target->state().empty());  // no state in the file: none after, as in Python
}

// What torch 1.13 writes: its own sets of keys, RMSprop's step as an integer
// (here an I64 tensor), ints where LibTorch has doubles.
TEST(Optimizer, AcceptsTorch113Groups) {
  TempDir dir;
  struct Case {
    std::size_t spec;
    const char* group;
  };
  const Case cases[] = {
      {0, R"({"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 0, "nesterov": false, "maximize": false,
              "foreach": null, "differentiable": false})"},
      {2, R"({"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0, "amsgrad": false,
              "maximize": false, "foreach": null, "capturable": false, "differentiable": false, "fused": false})"},
      {4, R"({"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.01, "amsgrad": true,
              "foreach": null, "maximize": false, "capturable": false})"},
      {5, R"({"lr": 0.01, "momentum": 0.5, "alpha": 0.99, "eps": 1e-08, "centered": true, "weight_decay": 0,
              "foreach": null, "maximize": false, "differentiable": false})"},
      {7, R"({"lr": 0.01, "lr_decay": 0, "eps": 1e-10, "weight_decay": 0, "initial_accumulator_value": 0,
              "foreach": null, "maximize": false})"},
  };
  for (const Case& c : cases) {
    const Spec spec = specs()[c.spec];
    SCOPED_TRACE(spec.name);
    Net net = make_net(1);
    auto opt = spec.make(net);
    train(net, *opt, 2);
    const std::string path = dir.file(spec.name + ".safetensors");
    save_optimizer(*opt, path);
    rewrite(path, [&](auto& t, Metadata& meta) {
      json groups = json::array();
      for (int g = 0; g < 2; ++g) {
        json group = json::parse(c.group);
        group["params"] = g == 0 ? json{0, 1} : json{2, 3};
        groups.push_back(group);
      }
      meta["param_groups"] = groups.dump();
      if (spec.python == "RMSprop")
        for (int i = 0; i < 4; ++i) t["state." + std::to_string(i) + ".step"] = torch::tensor(std::int64_t{2});
    });
    Net other = make_net(1);
    auto target = spec.make(other);
    const LoadReport report = load_optimizer(*target, path);
    EXPECT_TRUE(report.ok()) << report.describe();
    EXPECT_EQ(target->param_groups()[0].options().get_lr(), json::parse(c.group)["lr"].get<double>());
  }
}

// Python's json.dumps writes non-finite floats as bare NaN, Infinity and
// -Infinity: the texts /usr/bin/python3 (torch 1.13) writes for an Adam with
// eps=inf and a key of the user's holding inf, and for an SGD with NaN and
// -inf dampening (which neither Python nor LibTorch bounds).
constexpr const char* kPythonAdamGroups =
    R"([{"eps": Infinity, "lr": 0.01, "betas": [0.9, 0.999], "weight_decay": 0, "amsgrad": false, )"
    R"("maximize": false, "foreach": null, "capturable": false, "differentiable": false, "fused": false, )"
    R"("params": [0, 1]}, {"lr": 0.005, "max_grad_norm": Infinity, "betas": [0.9, 0.999], "eps": 1e-08, )"
    R"("weight_decay": 0, "amsgrad": false, "maximize": false, "foreach": null, "capturable": false, )"
    R"("differentiable": false, "fused": false, "params": [2, 3]}])";
constexpr const char* kPythonSgdGroups =
    R"([{"dampening": NaN, "lr": 0.1, "momentum": 0.9, "weight_decay": 0, "nesterov": false, "maximize": false, )"
    R"("foreach": null, "differentiable": false, "params": [0, 1]}, {"dampening": -Infinity, "lr": 0.1, )"
    R"("momentum": 0.9, "weight_decay": 0, "nesterov": false, "maximize": false, "foreach": null, )"
    R"("differentiable": false, "params": [2, 3]}])";

// A saved optimizer's file with its param groups replaced by `groups`.
std::string with_groups(const TempDir& dir, const Spec& spec, const std::string& groups) {
  Net net = make_net(1);
  auto opt = spec.make(net);
  train(net, *opt, 2);
  const std::string path = dir.file(spec.name + ".safetensors");
  save_optimizer(*opt, path);
  rewrite(path, [&](auto&, Metadata& meta) { meta["param_groups"] = groups; });
  return path;
}

// Param groups nested far deeper than any optimizer's are refused before a
// document is built from them (nlohmann copies documents recursively).
TEST(Optimizer, DeeplyNestedGroupsAreRefused) {
  TempDir dir;
  const std::string deep = "[{\"lr\": " + std::string(100000, '[') + std::string(100000, ']') + ", \"params\": [0]}]";
  const std::string path = with_groups(dir, specs()[0], deep);
  Net net = make_net(1);
  auto sgd = specs()[0].make(net);
  const std::string before = snapshot(*sgd);
  try {
    load_optimizer(*sgd, path);
    FAIL() << "loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::StateDictMismatch);
    EXPECT_NE(std::string(e.what()).find("nests deeper than"), std::string::npos) << e.what();
  }
  EXPECT_EQ(snapshot(*sgd), before);
}

TEST(Optimizer, ReadsPythonsNonFiniteHyperparameters) {
  TempDir dir;
  const double inf = std::numeric_limits<double>::infinity();
  {
    Net net = make_net(1);
    auto sgd = specs()[0].make(net);
    const LoadReport report = load_optimizer(*sgd, with_groups(dir, specs()[0], kPythonSgdGroups));
    EXPECT_TRUE(report.ok()) << report.describe();
    EXPECT_EQ(report.loaded_keys.size(), 4u);
    EXPECT_TRUE(std::isnan(static_cast<const optim::SGDOptions&>(sgd->param_groups()[0].options()).dampening()));
    EXPECT_EQ(static_cast<const optim::SGDOptions&>(sgd->param_groups()[1].options()).dampening(), -inf);
  }
  // A key LibTorch's Adam has no place for: named by a strict load, which
  // changes nothing; dropped and reported by a load that is not strict.
  const std::string path = with_groups(dir, specs()[2], kPythonAdamGroups);
  Net net = make_net(1);
  auto adam = specs()[2].make(net);
  train(net, *adam, 1);
  const std::string before = snapshot(*adam);
  try {
    load_optimizer(*adam, path);
    FAIL() << "loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::StateDictMismatch);
    const std::string what = e.what();
    for (const char* needle : {"unexpected: 'param_groups[1].max_grad_norm'", "a hyperparameter LibTorch's Adam does not have",
                               "strict(false) loads without it"})
      EXPECT_NE(what.find(needle), std::string::npos) << needle << "\n" << what;
  }
  EXPECT_EQ(snapshot(*adam), before);
  const LoadReport report = load_optimizer(*adam, path, OptimizerLoadOptions().strict(false));
  ASSERT_EQ(report.unexpected_keys.size(), 1u);
  EXPECT_EQ(report.unexpected_keys[0].file_name, "param_groups[1].max_grad_norm");
  EXPECT_EQ(report.loaded_keys.size(), 12u);
  EXPECT_EQ(static_cast<const optim::AdamOptions&>(adam->param_groups()[0].options()).eps(), inf);
  EXPECT_EQ(static_cast<const optim::AdamOptions&>(adam->param_groups()[1].options()).lr(), 0.005);
}

// A Python LR scheduler adds `initial_lr` to every group, which LibTorch's
// options have no place for: refused by a strict load, dropped otherwise.
TEST(Optimizer, UnknownHyperparametersAreUnexpected) {
  TempDir dir;
  std::string text = kPythonSgdGroups;
  for (const std::string token : {"-Infinity", "NaN"}) text.replace(text.find(token), token.size(), "0.1");
  json groups = json::parse(text);
  for (json& g : groups) g["initial_lr"] = 0.1;
  groups[1]["my_key"] = "x";
  const std::string path = with_groups(dir, specs()[0], groups.dump());
  Net net = make_net(1);
  auto sgd = specs()[0].make(net);
  try {
    load_optimizer(*sgd, path);
    FAIL() << "loaded";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const char* needle : {"unexpected: 'param_groups[0].initial_lr'", "unexpected: 'param_groups[1].initial_lr'",
                               "unexpected: 'param_groups[1].my_key'", "strict(false) loads without it"})
      EXPECT_NE(what.find(needle), std::string::npos) << needle << "\n" << what;
  }
  EXPECT_TRUE(sgd->state().empty());
  const LoadReport report = load_optimizer(*sgd, path, OptimizerLoadOptions().strict(false));
  ASSERT_EQ(report.unexpected_keys.size(), 3u);
  EXPECT_EQ(report.unexpected_keys[2].file_name, "param_groups[1].my_key");
  EXPECT_EQ(report.loaded_keys.size(), 4u);
  EXPECT_EQ(sgd->state().size(), 4u);
}

// Where a hyperparameter cannot be NaN the message says NaN, not null.
TEST(Optimizer, NonFiniteOutOfRangeIsNamed) {
  TempDir dir;
  std::string groups = kPythonAdamGroups;
  const auto replace = [&](const std::string& from, const std::string& to) {
    groups.replace(groups.find(from), from.size(), to);
  };
  replace("\"lr\": 0.01", "\"lr\": NaN");
  replace("\"eps\": 1e-08", "\"eps\": -Infinity");
  const std::string path = with_groups(dir, specs()[2], groups);
  Net net = make_net(1);
  auto adam = specs()[2].make(net);
  for (const bool strict : {true, false}) {
    try {
      load_optimizer(*adam, path, OptimizerLoadOptions().strict(strict));
      ADD_FAILURE() << "loaded";
    } catch (const Error& e) {
      for (const char* needle : {"param_groups[0]: 'lr' must be a number >= 0, found NaN",
                                 "param_groups[1]: 'eps' must be a number >= 0, found -Infinity"})
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << needle << "\n" << e.what();
    }
  }
}

// A non-finite hyperparameter is saved as Python writes it (not as null) and
// loads back as it was.
TEST(Optimizer, NonFiniteHyperparametersRoundTrip) {
  TempDir dir;
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Net net = make_net(1);
  auto sgd = specs()[0].make(net);
  static_cast<optim::SGDOptions&>(sgd->param_groups()[0].options()).dampening(nan);
  static_cast<optim::SGDOptions&>(sgd->param_groups()[1].options()).dampening(-inf).weight_decay(inf);
  train(net, *sgd, 1);
  const std::string path = dir.file("sgd.safetensors");
  save_optimizer(*sgd, path);
  const std::string text = SafeOpen(path).metadata().at("param_groups");
  EXPECT_NE(text.find("\"dampening\":NaN"), std::string::npos) << text;
  EXPECT_NE(text.find("\"dampening\":-Infinity"), std::string::npos) << text;
  EXPECT_NE(text.find("\"weight_decay\":Infinity"), std::string::npos) << text;
  std::size_t nulls = 0;  // foreach and fused of each group
  for (std::size_t at = text.find("null"); at != std::string::npos; at = text.find("null", at + 1)) ++nulls;
  EXPECT_EQ(nulls, 4u) << text;
  Net other = make_net(1);
  auto loaded = specs()[0].make(other);
  const LoadReport report = load_optimizer(*loaded, path);
  EXPECT_TRUE(report.ok()) << report.describe();
  const auto& o0 = static_cast<const optim::SGDOptions&>(loaded->param_groups()[0].options());
  const auto& o1 = static_cast<const optim::SGDOptions&>(loaded->param_groups()[1].options());
  EXPECT_TRUE(std::isnan(o0.dampening()));
  EXPECT_EQ(o1.dampening(), -inf);
  EXPECT_EQ(o1.weight_decay(), inf);
  EXPECT_EQ(snapshot(*loaded), snapshot(*sgd));

  Net adam_net = make_net(1);
  auto adam = specs()[2].make(adam_net);
  static_cast<optim::AdamOptions&>(adam->param_groups()[1].options()).eps(inf).lr(inf);
  save_optimizer(*adam, path);
  Net adam_other = make_net(1);
  auto adam_loaded = specs()[2].make(adam_other);
  load_optimizer(*adam_loaded, path);
  EXPECT_EQ(static_cast<const optim::AdamOptions&>(adam_loaded->param_groups()[1].options()).eps(), inf);
  EXPECT_EQ(adam_loaded->param_groups()[1].options().get_lr(), inf);
}

TEST(Optimizer, PrefixSelectsThePartOfACheckpoint) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[4].make(net);  // AdamW
  train(net, *opt, 3);
  save_optimizer(*opt, dir.file("o.safetensors"), Metadata{{"note", "x"}},
                 OptimizerSaveOptions().prefix("optimizer."));
  SafeOpen file(dir.file("o.safetensors"));
  EXPECT_TRUE(file.contains("optimizer.state.0.exp_avg"));
  EXPECT_EQ(file.metadata().count("optimizer.param_groups"), 1u);
  EXPECT_EQ(file.metadata().at("note"), "x");
  // With other tensors beside it, which the prefix leaves alone.
  rewrite(dir.file("o.safetensors"), [](auto& t, Metadata&) { t["model.fc1.weight"] = torch::zeros({5, 4}); });

  Net other = make_net(1);
  auto target = specs()[4].make(other);
  EXPECT_THROW(load_optimizer(*target, dir.file("o.safetensors")), Error);  // no `param_groups`
  const LoadReport report =
      load_optimizer(*target, SafeOpen(dir.file("o.safetensors")), OptimizerLoadOptions().prefix("optimizer."));
  EXPECT_TRUE(report.ok()) << report.describe();
  EXPECT_EQ(report.loaded_keys.size(), 16u);
  EXPECT_EQ(snapshot(*target), snapshot(*opt));
  EXPECT_THROW(save_optimizer(*opt, dir.file("p.safetensors"), Metadata{{"param_groups", "[]"}}), Error);
}

TEST(Optimizer, Sharded) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[2].make(net);
  train(net, *opt, 3);
  save_optimizer(*opt, dir.path().string(), std::nullopt, OptimizerSaveOptions().max_shard_size(100));
  ShardedOpen set(dir.path().string());
  EXPECT_GT(set.shards().size(), 1u);
  Net other = make_net(1);
  auto target = specs()[2].make(other);
  EXPECT_TRUE(load_optimizer(*target, set).ok());
  EXPECT_EQ(snapshot(*target), snapshot(*opt));
  Net third = make_net(1);
  auto again = specs()[2].make(third);
  EXPECT_TRUE(load_optimizer(*again, dir.path().string()).ok());
  EXPECT_EQ(snapshot(*again), snapshot(*opt));
}

// fsync and progress are those of every save (WriteOptions): progress counts
// the bytes of every file the save writes, sharded or not.
TEST(Optimizer, SavesReportProgress) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[2].make(net);
  train(net, *opt, 3);
  for (const std::optional<std::uint64_t> shard : {std::optional<std::uint64_t>(), std::optional<std::uint64_t>(100)}) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
    const auto record = [&](std::uint64_t done, std::uint64_t total) { calls.emplace_back(done, total); };
    const std::string path = shard ? dir.file("set") : dir.file("o.safetensors");
    if (shard) std::filesystem::create_directories(path);
    save_optimizer(*opt, path, std::nullopt,
                   OptimizerSaveOptions().max_shard_size(shard).fsync(false).progress(record));
    ASSERT_FALSE(calls.empty());
    EXPECT_EQ(calls.back().first, calls.back().second);
    calls.clear();
    const std::string ckpt = shard ? dir.file("ckpt-set") : dir.file("ckpt.safetensors");
    if (shard) std::filesystem::create_directories(ckpt);
    save_training_checkpoint(ckpt, *net, *opt, {3, 0, {}},
                             TrainingSaveOptions().max_shard_size(shard).progress(record));
    ASSERT_FALSE(calls.empty());
    EXPECT_EQ(calls.back().first, calls.back().second);
  }
}

TEST(Optimizer, AdagradNeedsStateForEveryParameter) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[7].make(net);
  const std::string path = dir.file("o.safetensors");
  save_optimizer(*opt, path);
  rewrite(path, [](auto& t, Metadata&) {
    t.erase("state.3.sum");
    t.erase("state.3.step");
  });
  Net other = make_net(1);
  auto target = specs()[7].make(other);
  try {
    load_optimizer(*target, path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing: 'state.3.step'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("missing: 'state.3.sum'"), std::string::npos) << e.what();
  }
}

TEST(Optimizer, StepMustBeACount) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[2].make(net);
  train(net, *opt, 1);
  const std::string path = dir.file("o.safetensors");
  const std::vector<std::pair<at::Tensor, const char*>> steps = {
      {torch::tensor(-1.0f), "found -1"},
      {torch::tensor(std::nan("")), "found NaN"},
      {torch::tensor(1e30), "found 1.0000000150474662e+30"},
      {torch::tensor(std::int64_t{-3}), "found -3"},
      {torch::ones({1}), "a step is a 0-dim tensor"},
      {torch::tensor(true), "a step is a float or integer tensor"},
  };
  for (const auto& [step, needle] : steps) {
    save_optimizer(*opt, path);
    rewrite(path, [&](auto& t, Metadata&) { t["state.1.step"] = step; });
    Net other = make_net(1);
    auto target = specs()[2].make(other);
    try {
      load_optimizer(*target, path);
      ADD_FAILURE() << "loaded " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
}

TEST(Optimizer, OddStateNamesAreUnexpected) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[0].make(net);
  train(net, *opt, 1);
  const std::string path = dir.file("o.safetensors");
  save_optimizer(*opt, path);
  const char* names[] = {"state.01.momentum_buffer", "state.x.momentum_buffer", "state..momentum_buffer",
                         "state.0.",  "state.99999999999999999999.momentum_buffer", "state.0.step", "state"};
  rewrite(path, [&](auto& t, Metadata&) {
    for (const char* name : names) t[name] = torch::zeros({1});
  });
  Net other = make_net(1);
  auto target = specs()[0].make(other);
  const LoadReport report = load_optimizer(*target, path, OptimizerLoadOptions().strict(false));
  std::vector<std::string> unexpected;
  for (const auto& u : report.unexpected_keys) unexpected.push_back(u.file_name);
  std::sort(unexpected.begin(), unexpected.end());
  std::vector<std::string> want(std::begin(names), std::end(names));
  std::sort(want.begin(), want.end());
  EXPECT_EQ(unexpected, want);
  EXPECT_EQ(report.loaded_keys.size(), 4u);
}

// LBFGS keeps one history for all parameters: refused by name, both ways, and
// a refused save leaves the previous file as it was.
TEST(Optimizer, LbfgsIsRefused) {
  TempDir dir;
  Net net = make_net(1);
  optim::LBFGS lbfgs(net->parameters());
  const std::string path = dir.file("o.safetensors");
  auto adam = specs()[2].make(net);
  save_optimizer(*adam, path);
  const std::string before = test::read_bytes(path);
  for (int load = 0; load < 2; ++load) {
    try {
      if (load) {
        load_optimizer(lbfgs, path);
      } else {
        save_optimizer(lbfgs, path);
      }
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("LBFGS is not supported"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(test::read_bytes(path), before);
  // Nor a mismatch of kinds: Adam's state into SGD is unexpected, and its groups' keys unknown.
  auto sgd = specs()[0].make(net);
  EXPECT_THROW(load_optimizer(*sgd, path), Error);
}

// Names Python loads as they are, and a checkpoint that does not fit the
// model leaves model, optimizer and generator as they were.
TEST(TrainingCheckpoint, LayoutAndAllOrNothing) {
  TempDir dir;
  Net net = make_net(1);
  auto opt = specs()[2].make(net);
  train(net, *opt, 2);
  const std::string path = dir.file("ckpt.safetensors");
  EXPECT_THROW(save_training_checkpoint(path, *net, *opt, {1, 0, {{"step", "3"}}}), Error);
  EXPECT_THROW(save_training_checkpoint(path, *net, *opt, {1, 0, {{"model.x", "3"}}}), Error);
  EXPECT_FALSE(fs::exists(path));
  torch::manual_seed(7);
  const at::Tensor rng = rng_state();
  save_training_checkpoint(path, *net, *opt, {123, 4, {}});
  {
    SafeOpen file(path);
    for (const char* name : {"model.fc1.weight", "model.fc2.bias", "optimizer.state.3.exp_avg", "rng_state"})
      EXPECT_TRUE(file.contains(name)) << name;
    EXPECT_EQ(file.metadata().at("step"), "123");
    EXPECT_EQ(file.metadata().at("epoch"), "4");
    EXPECT_EQ(file.metadata().count("optimizer.param_groups"), 1u);
    EXPECT_TRUE(test::bitwise_equal(file.get_tensor("rng_state"), rng));
  }
  // The generator is restored.
  Net other = make_net(2);
  auto target = specs()[2].make(other);
  torch::manual_seed(9);
  load_training_checkpoint(path, *other, *target);
  EXPECT_TRUE(test::bitwise_equal(rng_state(), rng));

  // A model that does not fit: nothing changes.
  struct Wider : torch::nn::Module {
    Wider() {
      fc1 = register_module("fc1", torch::nn::Linear(4, 6));
      fc2 = register_module("fc2", torch::nn::Linear(6, 3));
    }
    torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  };
  Wider wider;
  optim::Adam wider_opt(wider.parameters());  // one group: the optimizer does not fit either
  Net fresh = make_net(3);
  auto fresh_opt = specs()[2].make(fresh);
  train(fresh, *fresh_opt, 1);
  const std::string opt_before = snapshot(*fresh_opt);
  torch::manual_seed(11);
  const at::Tensor rng_before = rng_state();
  // Optimizer fits, model does not (a mismatched entry).
  rewrite(path, [](auto& t, Metadata&) { t["model.fc2.bias"] = torch::zeros({4}); });
  const at::Tensor bias_before = fresh->fc2->bias.clone();
  EXPECT_THROW(load_training_checkpoint(path, *fresh, *fresh_opt), Error);
  EXPECT_EQ(snapshot(*fresh_opt), opt_before);
  EXPECT_TRUE(test::bitwise_equal(rng_state(), rng_before));
  EXPECT_TRUE(test::bitwise_equal(fresh->fc2->bias, bias_before));
  EXPECT_THROW(load_training_checkpoint(path, wider, wider_opt), Error);

  rewrite(path, [](auto& t, Metadata& meta) {
    t["model.fc2.bias"] = torch::zeros({3});
    meta["step"] = "12x";
  });
  EXPECT_THROW(load_training_checkpoint(path, *fresh, *fresh_opt), Error);
  rewrite(path, [](auto& t, Metadata& meta) {
    meta["step"] = "12";
    t["rng_state"] = torch::zeros({3}, torch::kUInt8);
  });
  try {
    load_training_checkpoint(path, *fresh, *fresh_opt);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the CPU generator's state is U8"), std::string::npos) << e.what();
  }
  EXPECT_EQ(snapshot(*fresh_opt), opt_before);
  const TrainingLoadResult loaded =
      load_training_checkpoint(path, *fresh, *fresh_opt, TrainingLoadOptions().restore_rng(false));
  EXPECT_EQ(loaded.state.step, 12);
  EXPECT_TRUE(test::bitwise_equal(rng_state(), rng_before));
}

// Tied parameters are saved once under `model.` and filled again on load.
TEST(TrainingCheckpoint, TiedParameters) {
  struct Tied : torch::nn::Module {
    Tied() {
      w = register_parameter("emb", torch::randn({6, 4}));
      register_parameter("head", w);
    }
    torch::Tensor w;
  };
  TempDir dir;
  Tied model;
  optim::SGD opt({model.w}, optim::SGDOptions(0.1).momentum(0.9));
  opt.zero_grad();
  model.w.square().sum().backward();
  opt.step();
  save_training_checkpoint(dir.file("ckpt.safetensors"), model, opt, {1, 0, {}});
  SafeOpen file(dir.file("ckpt.safetensors"));
  EXPECT_TRUE(file.contains("model.emb"));
  EXPECT_FALSE(file.contains("model.head"));
  EXPECT_EQ(file.metadata().at("model.head"), "model.emb");
  Tied other;
  optim::SGD other_opt({other.w}, optim::SGDOptions(0.1).momentum(0.9));
  const TrainingLoadResult loaded = load_training_checkpoint(dir.file("ckpt.safetensors"), other, other_opt);
  EXPECT_TRUE(loaded.model.ok()) << loaded.model.describe();
  EXPECT_TRUE(loaded.state.metadata.empty());
  EXPECT_TRUE(test::bitwise_equal(other.w, model.w));
  EXPECT_EQ(snapshot(other_opt), snapshot(opt));
}

// ---- Python ----

// The Python command line, or nullopt (with why) when it cannot import torch.
std::optional<std::string> python(std::string& why) {
  const char* env = std::getenv("SAFETENSORS_INTEROP_PYTHON");
  const std::string command = env && *env ? env : "/usr/bin/python3";
  if (!env && !fs::exists(command)) {
    why = "no /usr/bin/python3 (set SAFETENSORS_INTEROP_PYTHON)";
    return std::nullopt;
  }
  if (std::system((command + " -c 'import torch' >/dev/null 2>&1").c_str()) != 0) {
    why = "'" + command + "' cannot import torch";
    return std::nullopt;
  }
  return command;
}

// A folder under the current one (so that a command running in a root that
// binds it sees the same relative paths).
class LocalDir {
 public:
  LocalDir() : path_("optimizer_interop." + std::to_string(::getpid())) { fs::create_directories(path_); }
  ~LocalDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::string script() {
  const fs::path abs = fs::path(SAFETENSORS_TEST_DATA_DIR).parent_path() / "interop" / "optimizer_interop.py";
  return fs::relative(abs, fs::current_path()).string();
}

void run_python(const std::string& command, const std::string& args) {
  const std::string line = command + " " + script() + " " + args;
  ASSERT_EQ(std::system(line.c_str()), 0) << line;
}

void expect_close(Net& net, const std::string& path) {
  SafeOpen file(path);
  for (const auto& item : net->named_parameters()) {
    const at::Tensor theirs = file.get_tensor("model." + item.key());
    EXPECT_TRUE(torch::allclose(item.value(), theirs, 1e-4, 1e-6))
        << item.key() << ": max difference " << (item.value() - theirs).abs().max().item<double>();
  }
}

void save_setup(const std::string& path, const Spec& spec, Net& net) {
  const auto [x, y] = batch();
  std::map<std::string, at::Tensor> tensors{{"data.x", x}, {"data.y", y}};
  for (const auto& item : net->named_parameters()) tensors.emplace("model." + item.key(), item.value().detach());
  json lrs = json::array();
  auto opt = spec.make(net);
  for (const auto& g : opt->param_groups()) lrs.push_back(g.options().get_lr());
  save_file(tensors, path, Metadata{{"optimizer", spec.python}, {"kwargs", spec.kwargs}, {"lrs", lrs.dump()}});
}

class OptimizerInterop : public ::testing::TestWithParam<Spec> {};

// Saved here after 3 steps, continued 4 steps by Python: the parameters this
// side reaches in 7 steps, within float tolerance.
TEST_P(OptimizerInterop, CppToPython) {
  std::string why;
  const auto py = python(why);
  if (!py) GTEST_SKIP() << why;
  const Spec& spec = GetParam();
  LocalDir dir;
  Net net = make_net(1);
  save_setup(dir.file("setup.safetensors"), spec, net);
  auto opt = spec.make(net);
  train(net, *opt, 3);
  save_training_checkpoint(dir.file("ckpt.safetensors"), *net, *opt, {3, 0, {}});
  train(net, *opt, 4);
  run_python(*py, "continue " + dir.file("setup.safetensors") + " " + dir.file("ckpt.safetensors") + " 4 " +
                      dir.file("out.safetensors"));
  expect_close(net, dir.file("out.safetensors"));
}

// Saved by Python after 3 steps (the same layout), continued 4 steps here:
// the parameters Python reaches in 7 steps.
TEST_P(OptimizerInterop, PythonToCpp) {
  std::string why;
  const auto py = python(why);
  if (!py) GTEST_SKIP() << why;
  const Spec& spec = GetParam();
  LocalDir dir;
  Net init = make_net(1);
  save_setup(dir.file("setup.safetensors"), spec, init);
  run_python(*py, "start " + dir.file("setup.safetensors") + " 3 4 " + dir.file("ckpt.safetensors") + " " +
                      dir.file("final.safetensors"));
  Net net = make_net(5);
  auto opt = spec.make(net);
  const TrainingLoadResult loaded = load_training_checkpoint(dir.file("ckpt.safetensors"), *net, *opt);
  EXPECT_EQ(loaded.state.step, 3);
  EXPECT_TRUE(loaded.optimizer.ok()) << loaded.optimizer.describe();
  train(net, *opt, 4);
  expect_close(net, dir.file("final.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(Optimizers, OptimizerInterop, ::testing::ValuesIn(specs()),
                         [](const auto& info) { return info.param.name; });

// An SGD Python saved with NaN and -inf dampening and a key of the user's
// holding inf (json.dumps writes them bare) loads here, and saved here it
// loads in Python with the same values.
TEST(OptimizerInteropGroups, NonFiniteHyperparametersBothWays) {
  std::string why;
  const auto py = python(why);
  if (!py) GTEST_SKIP() << why;
  LocalDir dir;
  run_python(*py, "nonfinite " + dir.file("python.safetensors"));
  Net net = make_net(1);
  auto sgd = specs()[0].make(net);
  EXPECT_THROW(load_optimizer(*sgd, dir.file("python.safetensors")), Error);  // max_grad_norm
  const LoadReport report = load_optimizer(*sgd, dir.file("python.safetensors"), OptimizerLoadOptions().strict(false));
  ASSERT_EQ(report.unexpected_keys.size(), 1u);
  EXPECT_EQ(report.unexpected_keys[0].file_name, "param_groups[1].max_grad_norm");
  EXPECT_EQ(report.loaded_keys.size(), 4u);
  EXPECT_TRUE(std::isnan(static_cast<const optim::SGDOptions&>(sgd->param_groups()[0].options()).dampening()));
  EXPECT_EQ(static_cast<const optim::SGDOptions&>(sgd->param_groups()[1].options()).dampening(),
            -std::numeric_limits<double>::infinity());
  save_optimizer(*sgd, dir.file("cpp.safetensors"));
  run_python(*py, "check-nonfinite " + dir.file("cpp.safetensors"));
}

}  // namespace
}  // namespace safetensors
