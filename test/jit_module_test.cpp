// State dicts of torch::jit modules: the names and bytes of Python's
// state_dict of scripted and traced modules (fixtures written by torch 1.13,
// test/data/jit/make_fixtures.py and test/data/pickle/make_fixtures.py),
// strict reports that change nothing, the dtype policy, ties, sharded sets,
// zero-copy and tensor-parallel loads.

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>

#include "safetensors/jit_module.hpp"
#include "safetensors/load.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

using test::bitwise_equal;
using test::error_code_of;
using test::TempDir;
namespace jit = torch::jit;

std::string fixture(const std::string& name) { return std::string(SAFETENSORS_TEST_DATA_DIR) + "/" + name; }

// The module's tensor under a dotted name.
torch::Tensor tensor_at(const jit::Module& module, const std::string& name) {
  jit::Module owner = module;
  std::string rest = name;
  for (std::size_t dot; (dot = rest.find('.')) != std::string::npos; rest.erase(0, dot + 1))
    owner = owner.attr(rest.substr(0, dot)).toModule();
  return owner.attr(rest).toTensor();
}

// Parameters and buffers by name, cloned.
std::map<std::string, torch::Tensor> state_of(const jit::Module& module) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : module.named_parameters()) out[p.name] = p.value.detach().clone();
  for (const auto& b : module.named_buffers()) out[b.name] = b.value.clone();
  return out;
}

void zero(jit::Module& module) {
  torch::NoGradGuard no_grad;
  for (torch::Tensor t : module.parameters()) t.zero_();
  for (torch::Tensor t : module.buffers()) t.zero_();
}

struct Slot {
  std::string name;
  torch::Tensor tensor;
  bool parameter = true;
};

// A TorchScript module holding each slot under its dotted name, with
// submodules for the parts before the last dot.
jit::Module make_module(const std::vector<Slot>& slots) {
  auto unit = std::make_shared<jit::CompilationUnit>();
  jit::Module root("__torch__.Root", unit, /*shouldMangle=*/true);
  for (const Slot& slot : slots) {
    jit::Module owner = root;
    std::string rest = slot.name;
    for (std::size_t dot; (dot = rest.find('.')) != std::string::npos; rest.erase(0, dot + 1)) {
      const std::string part = rest.substr(0, dot);
      if (!owner.hasattr(part)) owner.register_module(part, jit::Module("__torch__.Sub", unit, /*shouldMangle=*/true));
      owner = owner.attr(part).toModule();
    }
    if (slot.parameter) {
      owner.register_parameter(rest, slot.tensor, /*is_buffer=*/false);
    } else {
      owner.register_buffer(rest, slot.tensor);
    }
  }
  return root;
}

jit::Module small_module() {
  return make_module({{"fc.weight", torch::randn({2, 3}).requires_grad_()}, {"fc.bias", torch::randn({2}).requires_grad_()}});
}

const LoadMode kModes[] = {LoadMode::Copy, LoadMode::ZeroCopy};

const char* mode_name(LoadMode mode) { return mode == LoadMode::Copy ? "Copy" : "ZeroCopy"; }

// Python's state_dict of each module (the fixtures' NAME.expected.safetensors)
// fills a module that torch::jit::load made: the same names (strict), the
// same bytes, and for the language model the same output as Python's, with
// its own weights and with others.
TEST(JitStateDict, LoadsPythonsStateDictIntoAModuleFromTorchJitLoad) {
  for (const std::string name : {"jit/tiny_lm", "pickle/scripted", "pickle/traced"}) {
    const SafeOpen expected(fixture(name + ".expected.safetensors"));
    for (LoadMode mode : kModes) {
      SCOPED_TRACE(name + " " + mode_name(mode));
      jit::Module module = jit::load(fixture(name + ".pt"));
      zero(module);
      const LoadReport r = load_state_dict(module, expected, StateDictLoadOptions().mode(mode));
      EXPECT_TRUE(r.ok()) << r.describe();
      const std::vector<std::string> keys = expected.keys();
      EXPECT_EQ(std::set<std::string>(r.loaded_keys.begin(), r.loaded_keys.end()),
                std::set<std::string>(keys.begin(), keys.end()));
      const auto state = state_of(module);
      EXPECT_EQ(state.size(), keys.size());
      for (const std::string& key : keys) EXPECT_TRUE(bitwise_equal(state.at(key), expected.get_tensor(key))) << key;
    }
  }
  const SafeOpen forward(fixture("jit/tiny_lm.forward.safetensors"));
  for (LoadMode mode : kModes) {
    jit::Module module = jit::load(fixture("jit/tiny_lm.pt"));
    zero(module);
    load_state_dict(module, fixture("jit/tiny_lm.expected.safetensors"), StateDictLoadOptions().mode(mode));
    torch::NoGradGuard no_grad;
    const torch::Tensor logits = module.forward({forward.get_tensor("ids")}).toTensor();
    EXPECT_TRUE(torch::allclose(logits, forward.get_tensor("logits"), 1e-5, 1e-6)) << mode_name(mode);
    // Weights other than the archive's: the module computes with the file's.
    load_state_dict(module, fixture("jit/tiny_lm.retrained.safetensors"), StateDictLoadOptions().mode(mode));
    const torch::Tensor retrained = module.forward({forward.get_tensor("ids")}).toTensor();
    EXPECT_TRUE(torch::allclose(retrained, forward.get_tensor("retrained_logits"), 1e-5, 1e-6)) << mode_name(mode);
  }
}

// A buffer the Python module registered with persistent=False is in the
// state dict of its TorchScript module, as in Python's: the file without it
// is a strict failure, as in PyTorch.
TEST(JitStateDict, NonPersistentBuffersAreInTheStateDictAsInPython) {
  TempDir dir;
  const SafeOpen expected(fixture("jit/tiny_lm.expected.safetensors"));
  NamedTensors without;
  for (const std::string& key : expected.keys())
    if (key != "positions") without.add(key, expected.get_tensor(key));
  save_file(without, dir.file("m.safetensors"));
  jit::Module module = jit::load(fixture("jit/tiny_lm.pt"));
  const LoadReport r = load_state_dict(module, dir.file("m.safetensors"), StateDictLoadOptions().strict(false));
  EXPECT_EQ(r.missing_keys, std::vector<std::string>{"positions"});
  EXPECT_EQ(error_code_of([&] { load_state_dict(module, dir.file("m.safetensors")); }), ErrorCode::StateDictMismatch);
}

// What save_state_dict writes of a module from torch::jit::load is Python's
// state_dict of it: every name, kept or recorded as an alias, with its bytes.
TEST(JitStateDict, SavesTheNamesAndBytesOfPythonsStateDict) {
  TempDir dir;
  for (const std::string name : {"jit/tiny_lm", "pickle/scripted", "pickle/traced"}) {
    SCOPED_TRACE(name);
    const std::string path = dir.file("saved.safetensors");
    save_state_dict(jit::load(fixture(name + ".pt")), path);
    const SafeOpen saved(path), expected(fixture(name + ".expected.safetensors"));
    Metadata aliases = saved.metadata();
    EXPECT_EQ(aliases["format"], "pt");
    aliases.erase("format");
    std::set<std::string> names;
    for (const std::string& key : saved.keys()) names.insert(key);
    for (const auto& [removed, kept] : aliases) names.insert(removed);
    const std::vector<std::string> keys = expected.keys();
    EXPECT_EQ(names, std::set<std::string>(keys.begin(), keys.end()));
    for (const std::string& key : keys) {
      const std::string source = aliases.count(key) ? aliases.at(key) : key;
      EXPECT_TRUE(bitwise_equal(saved.get_tensor(source), expected.get_tensor(key))) << key;
    }
    if (name == "jit/tiny_lm") {
      EXPECT_EQ(aliases, (Metadata{{"head.weight", "embed.weight"}}));
    }
  }
}

// Every dtype, parameters and buffers of nested submodules, both modes.
TEST(JitStateDict, RoundTripKeepsEveryParameterAndBuffer) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const std::vector<Slot> slots = {
      {"w", torch::randn({2, 3}).requires_grad_()},
      {"a.b.w64", torch::randn({4}, torch::kDouble)},
      {"a.b.w16", torch::randn({3, 1}).to(torch::kHalf)},
      {"a.bf", torch::randn({5}).to(torch::kBFloat16)},
      {"a.count", torch::tensor(7, torch::kLong), false},
      {"a.b.mask", torch::tensor({true, false, true}), false},
      {"bytes", torch::arange(6, torch::kUInt8).reshape({2, 3}), false},
      {"empty", torch::zeros({0, 4}), false},
  };
  const jit::Module saved = make_module(slots);
  save_state_dict(saved, path, Metadata{{"note", "mine"}});
  EXPECT_EQ(SafeOpen(path).metadata(), (Metadata{{"format", "pt"}, {"note", "mine"}}));
  for (LoadMode mode : kModes) {
    SCOPED_TRACE(mode_name(mode));
    std::vector<Slot> zeros = slots;
    for (Slot& s : zeros) s.tensor = torch::zeros_like(s.tensor).requires_grad_(s.tensor.requires_grad());
    jit::Module loaded = make_module(zeros);
    const LoadReport r = load_state_dict(loaded, path, StateDictLoadOptions().mode(mode));
    EXPECT_TRUE(r.ok()) << r.describe();
    // Parameters then buffers, each depth first in the order of the modules' attributes.
    EXPECT_EQ(r.loaded_keys, (std::vector<std::string>{"w", "a.b.w64", "a.b.w16", "a.bf", "a.b.mask", "a.count",
                                                        "bytes", "empty"}));
    const auto expected = state_of(saved);
    for (const auto& [name, t] : state_of(loaded)) EXPECT_TRUE(bitwise_equal(t, expected.at(name))) << name;
    EXPECT_TRUE(tensor_at(loaded, "w").requires_grad());
  }
}

TEST(JitStateDict, StrictLoadListsEveryProblemAndChangesNothing) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_file({{"fc.weight", torch::ones({3, 2})}, {"extra", torch::ones({1})}}, path);
  for (LoadMode mode : kModes) {
    SCOPED_TRACE(mode_name(mode));
    jit::Module m = small_module();
    const auto before = state_of(m);
    const void* weight = tensor_at(m, "fc.weight").data_ptr();
    std::string message;
    try {
      load_state_dict(m, path, StateDictLoadOptions().mode(mode));
      ADD_FAILURE() << "loaded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::StateDictMismatch);
      message = e.what();
    }
    EXPECT_NE(message.find("missing: 'fc.bias'"), std::string::npos) << message;
    EXPECT_NE(message.find("unexpected: 'extra'"), std::string::npos) << message;
    EXPECT_NE(message.find("mismatched: 'fc.weight'"), std::string::npos) << message;
    EXPECT_NE(message.find("F32 [2, 3]"), std::string::npos) << message;
    for (const auto& [name, t] : state_of(m)) EXPECT_TRUE(bitwise_equal(t, before.at(name))) << name;
    EXPECT_EQ(tensor_at(m, "fc.weight").data_ptr(), weight);
  }

  // Non-strict: what fits is loaded, the rest reported and left as it was.
  const torch::Tensor bias = torch::tensor({5.0f, 6.0f});
  save_file({{"fc.weight", torch::ones({3, 2})}, {"fc.bias", bias}, {"extra", torch::ones({1})}}, path);
  jit::Module m = small_module();
  const torch::Tensor weight = tensor_at(m, "fc.weight").detach().clone();
  const LoadReport r = load_state_dict(m, path, StateDictLoadOptions().strict(false));
  EXPECT_EQ(r.loaded_keys, std::vector<std::string>{"fc.bias"});
  EXPECT_TRUE(r.missing_keys.empty());
  ASSERT_EQ(r.unexpected_keys.size(), 1u);
  EXPECT_EQ(r.unexpected_keys[0].file_name, "extra");
  ASSERT_EQ(r.mismatched.size(), 1u);
  EXPECT_EQ(r.mismatched[0].module_name, "fc.weight");
  EXPECT_EQ(r.mismatched[0].expected_shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(r.mismatched[0].found_shape, (std::vector<std::uint64_t>{3, 2}));
  EXPECT_EQ(r.mismatched[0].reason, "shape");
  EXPECT_TRUE(torch::equal(tensor_at(m, "fc.bias"), bias));
  EXPECT_TRUE(torch::equal(tensor_at(m, "fc.weight"), weight));
}

TEST(JitStateDict, ADifferentDtypeIsAMismatchUnlessConversionIsAllowed) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const torch::Tensor w = torch::randn({2, 3}).to(torch::kBFloat16);
  save_file({{"fc.weight", w}, {"fc.bias", torch::ones({2}, torch::kBFloat16)}}, path);
  jit::Module m = small_module();
  const auto before = state_of(m);
  EXPECT_EQ(error_code_of([&] { load_state_dict(m, path); }), ErrorCode::StateDictMismatch);
  const LoadReport r = load_state_dict(m, path, StateDictLoadOptions().strict(false));
  ASSERT_EQ(r.mismatched.size(), 2u);
  EXPECT_EQ(r.mismatched[0].reason, "dtype");
  EXPECT_EQ(r.mismatched[0].expected_dtype, torch::kFloat);
  EXPECT_EQ(r.mismatched[0].found_dtype, Dtype::BF16);
  for (const auto& [name, t] : state_of(m)) EXPECT_TRUE(bitwise_equal(t, before.at(name))) << name;

  for (LoadMode mode : kModes) {
    jit::Module converted = small_module();
    load_state_dict(converted, path, StateDictLoadOptions().convert_dtype(true).mode(mode));
    EXPECT_EQ(tensor_at(converted, "fc.weight").scalar_type(), torch::kFloat) << mode_name(mode);
    EXPECT_TRUE(torch::equal(tensor_at(converted, "fc.weight"), w.to(torch::kFloat))) << mode_name(mode);
  }
  // Conversion is between floating-point dtypes only.
  save_file({{"fc.weight", torch::ones({2, 3}, torch::kInt)}, {"fc.bias", torch::ones({2})}}, path);
  const LoadReport ints = load_state_dict(m, path, StateDictLoadOptions().strict(false).convert_dtype(true));
  ASSERT_EQ(ints.mismatched.size(), 1u);
  EXPECT_EQ(ints.mismatched[0].found_dtype, Dtype::I32);
}

TEST(JitStateDict, RenamingStripsAndAddsPrefixesAndMapsOrDropsNames) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const SafeOpen expected(fixture("jit/tiny_lm.expected.safetensors"));
  NamedTensors prefixed;
  for (const std::string& key : expected.keys()) prefixed.add("model." + key, expected.get_tensor(key));
  prefixed.add("model.pooler", torch::ones({1}));
  save_file(prefixed, path);
  jit::Module module = jit::load(fixture("jit/tiny_lm.pt"));
  zero(module);
  const auto drop_pooler = [](const std::string& name) -> std::optional<std::string> {
    if (name == "pooler") return std::nullopt;
    return name;
  };
  const LoadReport r = load_state_dict(module, path, StateDictLoadOptions().strip_prefix("model.").rename(drop_pooler));
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_TRUE(bitwise_equal(tensor_at(module, "blocks.1.mlp.2.weight"), expected.get_tensor("blocks.1.mlp.2.weight")));
}

// Python's tie of the output layer to the embedding survives torch.jit.save:
// the weight is saved once, and a load fills both names with one memory.
TEST(JitStateDict, TiedWeightsAreSavedOnceAndTheTieIsRestored) {
  TempDir dir;
  const std::string path = dir.file("tied.safetensors");
  save_state_dict(jit::load(fixture("jit/tiny_lm.pt")), path);
  const SafeOpen f(path);
  const std::vector<std::string> keys = f.keys();
  EXPECT_EQ(std::count(keys.begin(), keys.end(), "head.weight"), 0);
  EXPECT_EQ(f.metadata().at("head.weight"), "embed.weight");

  const SafeOpen forward(fixture("jit/tiny_lm.forward.safetensors"));
  for (LoadMode mode : kModes) {
    SCOPED_TRACE(mode_name(mode));
    jit::Module module = jit::load(fixture("jit/tiny_lm.pt"));
    zero(module);
    const LoadReport r = load_state_dict(module, f, StateDictLoadOptions().mode(mode));
    EXPECT_TRUE(r.ok()) << r.describe();
    EXPECT_NE(std::find(r.loaded_keys.begin(), r.loaded_keys.end(), "head.weight"), r.loaded_keys.end());
    EXPECT_EQ(tensor_at(module, "head.weight").data_ptr(), tensor_at(module, "embed.weight").data_ptr());
    if (mode == LoadMode::ZeroCopy) {
      EXPECT_EQ(tensor_at(module, "head.weight").data_ptr(), f.get_tensor("embed.weight").data_ptr());
    }
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::allclose(module.forward({forward.get_tensor("ids")}).toTensor(), forward.get_tensor("logits"),
                                1e-5, 1e-6));
  }

  // A module that keeps the two apart gets the alias filled from the kept tensor, in memory of its own.
  const torch::Tensor embed = f.get_tensor("embed.weight");
  for (LoadMode mode : kModes) {
    jit::Module untied = make_module({{"embed.weight", torch::zeros({11, 8})}, {"head.weight", torch::zeros({11, 8})}});
    const LoadReport r = load_state_dict(untied, f, StateDictLoadOptions().mode(mode).strict(false));
    EXPECT_EQ(r.loaded_keys, (std::vector<std::string>{"embed.weight", "head.weight"})) << mode_name(mode);
    EXPECT_TRUE(torch::equal(tensor_at(untied, "head.weight"), embed)) << mode_name(mode);
    EXPECT_NE(tensor_at(untied, "head.weight").data_ptr(), tensor_at(untied, "embed.weight").data_ptr());
  }
}

TEST(JitStateDict, SavesAndLoadsShardedSets) {
  TempDir dir;
  const std::string folder = dir.file("set");
  std::filesystem::create_directory(folder);
  save_state_dict(jit::load(fixture("jit/tiny_lm.pt")), folder, std::nullopt,
                  StateDictSaveOptions().max_shard_size(1024));
  const ShardedOpen set(folder);
  EXPECT_GT(set.shards().size(), 1u);
  for (const SafeOpen& shard : set.shards()) EXPECT_EQ(shard.metadata().at("head.weight"), "embed.weight");
  const SafeOpen expected(fixture("jit/tiny_lm.expected.safetensors"));
  auto check = [&](const std::function<LoadReport(jit::Module&)>& load, const std::string& how) {
    jit::Module module = jit::load(fixture("jit/tiny_lm.pt"));
    zero(module);
    const LoadReport r = load(module);
    EXPECT_TRUE(r.ok()) << how << ": " << r.describe();
    for (const std::string& key : expected.keys())
      EXPECT_TRUE(bitwise_equal(tensor_at(module, key), expected.get_tensor(key))) << how << ": " << key;
  };
  check([&](jit::Module& m) { return load_state_dict(m, folder); }, "folder");
  check([&](jit::Module& m) { return load_state_dict(m, folder + "/model.safetensors.index.json"); }, "index");
  check([&](jit::Module& m) { return load_state_dict(m, set, StateDictLoadOptions().mode(LoadMode::ZeroCopy)); },
        "ShardedOpen, ZeroCopy");
}

// ZeroCopy changes the module's tensors, not its attribute slots: a handle
// taken before the load is the module's tensor after it, viewing the mapping,
// and the module's code computes with the file's values.
TEST(JitStateDict, ZeroCopyMakesTheModulesOwnTensorsViewsOfTheFile) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const torch::Tensor w = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f});
  save_file({{"w", w}}, path);
  const std::string bytes = test::read_bytes(path);
  const SafeOpen f(path);
  for (LoadMode mode : kModes) {
    SCOPED_TRACE(mode_name(mode));
    jit::Module m = make_module({{"w", torch::zeros({4}).requires_grad_()}});
    m.define("def forward(self, x):\n    return x * self.w\n");
    const torch::Tensor handle = tensor_at(m, "w");
    const void* before = handle.data_ptr();
    load_state_dict(m, f, StateDictLoadOptions().mode(mode));
    EXPECT_EQ(tensor_at(m, "w").unsafeGetTensorImpl(), handle.unsafeGetTensorImpl());
    EXPECT_EQ(handle.data_ptr(), mode == LoadMode::ZeroCopy ? f.get_tensor("w").data_ptr() : before);
    EXPECT_TRUE(handle.requires_grad());
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::equal(m.forward({torch::ones({4})}).toTensor(), w));
    handle.add_(1);  // private to the process
    EXPECT_TRUE(torch::equal(m.forward({torch::ones({4})}).toTensor(), w + 1));
  }
  EXPECT_EQ(test::read_bytes(path), bytes);
}

// The plan is matched against the module's names; each rank's module holds
// its part, and only that part is read.
TEST(JitStateDict, TensorParallelLoadsThisRanksPart) {
  const SafeOpen expected(fixture("jit/tiny_lm.expected.safetensors"));
  const PartitionPlan plan =
      PartitionPlan().split("blocks.*.mlp.0.weight", 0).split("blocks.*.mlp.0.bias", 0).split("blocks.*.mlp.2.weight", 1);
  const std::map<std::string, std::int64_t> split = {
      {"blocks.0.mlp.0.weight", 0}, {"blocks.0.mlp.0.bias", 0}, {"blocks.0.mlp.2.weight", 1},
      {"blocks.1.mlp.0.weight", 0}, {"blocks.1.mlp.0.bias", 0}, {"blocks.1.mlp.2.weight", 1}};
  for (LoadMode mode : kModes) {
    for (int rank = 0; rank < 2; ++rank) {
      SCOPED_TRACE(std::string(mode_name(mode)) + " rank " + std::to_string(rank));
      jit::Module module = jit::load(fixture("jit/tiny_lm.pt"));
      const TensorParallel tp{plan, rank, 2};
      for (const auto& [name, dim] : split) {
        torch::Tensor t = tensor_at(module, name);
        std::vector<std::int64_t> shape = t.sizes().vec();
        shape[static_cast<std::size_t>(dim)] /= 2;
        t.set_data(torch::zeros(shape));
      }
      const LoadReport r = load_state_dict(module, fixture("jit/tiny_lm.expected.safetensors"),
                                           StateDictLoadOptions().tensor_parallel(tp).mode(mode));
      EXPECT_TRUE(r.ok()) << r.describe();
      for (const std::string& key : expected.keys()) {
        torch::Tensor want = expected.get_tensor(key);
        if (const auto it = split.find(key); it != split.end())
          want = want.narrow(it->second, rank * (want.size(it->second) / 2), want.size(it->second) / 2);
        EXPECT_TRUE(bitwise_equal(tensor_at(module, key), want)) << key;
      }
    }
  }
}

}  // namespace
}  // namespace safetensors
