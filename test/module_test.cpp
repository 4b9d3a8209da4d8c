// State dicts of torch::nn modules: names, strict and non-strict loads with
// every report field, exact shapes, the dtype policy, copy and zero-copy
// modes, renaming, and tied weights.

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include <torch/torch.h>

#include "safetensors/load.hpp"
#include "safetensors/module.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

using test::error_code_of;
using test::TempDir;
using namespace torch::nn;

struct InnerImpl : Module {
  InnerImpl() : fc(register_module("fc", Linear(3, 2))) {}
  Linear fc;
};
TORCH_MODULE(Inner);

// Every kind of torch::nn container and layer, nested.
struct NetImpl : Module {
  NetImpl()
      : conv(register_module("conv", Conv2d(Conv2dOptions(1, 2, 3)))),
        bn(register_module("bn", BatchNorm2d(2))),
        embed(register_module("embed", Embedding(5, 3))),
        norm(register_module("norm", LayerNorm(LayerNormOptions({3})))),
        seq(register_module("seq", Sequential(Linear(3, 4), ReLU(), Linear(4, 3)))),
        list(register_module("list", ModuleList(Linear(3, 3), Inner()))),
        dict(register_module("dict", ModuleDict(torch::OrderedDict<std::string, std::shared_ptr<Module>>{
                                         {"proj", Linear(3, 1).ptr()}}))),
        inner(register_module("inner", Inner())) {}
  Conv2d conv;
  BatchNorm2d bn;
  Embedding embed;
  LayerNorm norm;
  Sequential seq;
  ModuleList list;
  ModuleDict dict;
  Inner inner;
};
TORCH_MODULE(Net);

const std::vector<std::string> kNetNames = {
    "conv.weight", "conv.bias", "bn.weight", "bn.bias", "embed.weight", "norm.weight", "norm.bias",
    "seq.0.weight", "seq.0.bias", "seq.2.weight", "seq.2.bias", "list.0.weight", "list.0.bias",
    "list.1.fc.weight", "list.1.fc.bias", "dict.proj.weight", "dict.proj.bias", "inner.fc.weight",
    "inner.fc.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"};

// A Linear whose weight is [2, 3]: small modules for precise reports.
struct SmallImpl : Module {
  SmallImpl() : fc(register_module("fc", Linear(3, 2))) {}
  Linear fc;
};
TORCH_MODULE(Small);

// An embedding and an output layer that share one weight.
struct TiedHeadImpl : Module {
  explicit TiedHeadImpl(const torch::Tensor& w) : weight(register_parameter("weight", w)) {}
  torch::Tensor weight;
};
TORCH_MODULE(TiedHead);

struct TiedImpl : Module {
  TiedImpl()
      : embed(register_module("embed", Embedding(4, 3))),
        head(register_module("head", TiedHead(embed->weight))) {}
  Embedding embed;
  TiedHead head;
};
TORCH_MODULE(Tied);

// The same names as Tied, without the tie.
struct UntiedImpl : Module {
  UntiedImpl()
      : embed(register_module("embed", Embedding(4, 3))),
        head(register_module("head", TiedHead(torch::zeros({4, 3})))) {}
  Embedding embed;
  TiedHead head;
};
TORCH_MODULE(Untied);

std::map<std::string, torch::Tensor> state_of(const Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  for (const auto& b : m.named_buffers()) out[b.key()] = b.value().clone();
  return out;
}

bool same_state(const Module& a, const Module& b) {
  auto sa = state_of(a), sb = state_of(b);
  if (sa.size() != sb.size()) return false;
  for (const auto& [name, t] : sa)
    if (!sb.count(name) || !test::bitwise_equal(t, sb[name])) return false;
  return true;
}

std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(StateDict, RoundTripKeepsEveryParameterAndBufferUnderPythonNames) {
  TempDir dir;
  Net saved;
  saved->bn->running_mean.uniform_();
  saved->bn->running_var.uniform_();
  saved->bn->num_batches_tracked.fill_(7);
  save_state_dict(*saved, dir.file("net.safetensors"));

  SafeOpen f(dir.file("net.safetensors"));
  std::vector<std::string> keys = f.keys(), expected = kNetNames;
  std::sort(keys.begin(), keys.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(keys, expected);
  EXPECT_EQ(f.metadata(), (Metadata{{"format", "pt"}}));

  Net loaded;
  ASSERT_FALSE(same_state(*saved, *loaded));
  LoadReport report = load_state_dict(*loaded, dir.file("net.safetensors"));
  EXPECT_TRUE(report.ok()) << report.describe();
  EXPECT_EQ(report.loaded_keys.size(), kNetNames.size());
  EXPECT_TRUE(same_state(*saved, *loaded));
}

// A header may declare a dimension above int64's range beside a zero one: a
// valid file of no bytes, which no torch tensor can describe.
TEST(StateDict, ADimensionBeyondInt64IsLimitExceededNamingTheFile) {
  TempDir dir;
  const std::string path = dir.file("wide.safetensors");
  test::write_bytes(path, test::make_file(
                              R"({"w":{"dtype":"F32","shape":[0,9223372036854775808],"data_offsets":[0,0]}})"));
  torch::nn::Module module;
  module.register_buffer("w", torch::zeros({0, 1}));
  for (bool tp : {false, true})
    for (LoadMode mode : {LoadMode::Copy, LoadMode::ZeroCopy}) {
      auto options = StateDictLoadOptions().strict(false).mode(mode);
      if (tp) options.tensor_parallel(TensorParallel{PartitionPlan().split("w", 1), 0, 2});
      try {
        load_state_dict(module, path, options);
        ADD_FAILURE() << "loaded";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::LimitExceeded) << e.what();
        EXPECT_EQ(e.file(), path);
        EXPECT_EQ(e.tensor(), "w");
      }
    }
  EXPECT_EQ(module.named_buffers()["w"].sizes(), (std::vector<std::int64_t>{0, 1}));
}

TEST(StateDict, CopyModeFillsTheParametersOwnMemory) {
  TempDir dir;
  Small saved, loaded;
  save_state_dict(*saved, dir.file("m.safetensors"));
  const void* before = loaded->fc->weight.data_ptr();
  SafeOpen f(dir.file("m.safetensors"));
  load_state_dict(*loaded, f);
  EXPECT_EQ(loaded->fc->weight.data_ptr(), before);
  EXPECT_NE(loaded->fc->weight.data_ptr(), f.get_tensor("fc.weight").data_ptr());
  EXPECT_TRUE(loaded->fc->weight.requires_grad());
  EXPECT_TRUE(torch::equal(loaded->fc->weight, saved->fc->weight));
}

// A field of /proc/self/status, in kB.
// Copy mode (by default through the pread backend) reads each tensor straight
// into its parameter: the load adds no memory beyond the model, not even one
// tensor, nor the file's pages mapped into the process.
TEST(StateDict, CopyModeAddsNoMemoryBeyondTheModel) {
  TempDir dir;
  auto make = [] {
    auto m = std::make_shared<torch::nn::Module>();
    for (int i = 0; i < 4; ++i) m->register_parameter("w" + std::to_string(i), torch::ones({4096, 1024}) * i);
    return m;
  };
  save_state_dict(*make(), dir.file("m.safetensors"));
  auto loaded = make();
  for (auto& p : loaded->parameters()) p.data().zero_();
  const long added_kb = test::peak_added_kb([&] { load_state_dict(*loaded, dir.file("m.safetensors")); });
  EXPECT_LT(added_kb, 16 * 1024 / 2) << "one tensor is 16 MB";
  for (int i = 0; i < 4; ++i)
    EXPECT_TRUE(torch::equal(loaded->named_parameters()["w" + std::to_string(i)], torch::ones({4096, 1024}) * i));
}

TEST(StateDict, ZeroCopyModeMakesParametersViewsOfTheFileAndWritesStayPrivate) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  Small saved;
  save_state_dict(*saved, path);
  const std::string bytes = test::read_bytes(path);
  SafeOpen f(path);
  Small a, b;
  load_state_dict(*a, f, StateDictLoadOptions().mode(LoadMode::ZeroCopy));
  load_state_dict(*b, f, StateDictLoadOptions().mode(LoadMode::ZeroCopy));
  // One copy of the bytes, in the mapping, for every module.
  EXPECT_EQ(a->fc->weight.data_ptr(), f.get_tensor("fc.weight").data_ptr());
  EXPECT_EQ(a->fc->bias.data_ptr(), b->fc->bias.data_ptr());
  EXPECT_TRUE(a->fc->weight.requires_grad());
  EXPECT_TRUE(torch::equal(a->fc->weight, saved->fc->weight));
  {
    torch::NoGradGuard no_grad;
    a->fc->weight.add_(1);
  }
  EXPECT_EQ(test::read_bytes(path), bytes);
  Small c;
  load_state_dict(*c, path, StateDictLoadOptions().mode(LoadMode::ZeroCopy));
  EXPECT_TRUE(torch::equal(c->fc->weight, saved->fc->weight));
}

TEST(StateDict, AStrictLoadsListEscapesNamesFromTheFile) {
  TempDir dir;
  const std::string path = dir.file("forged.safetensors");
  save_file({{"evil\nINFO all checks passed", torch::zeros({1})}}, path);
  torch::nn::Module module;
  try {
    load_state_dict(module, path);
    ADD_FAILURE() << "loaded";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find("\nINFO"), std::string::npos) << what;
    EXPECT_NE(what.find("unexpected: 'evil\\x0aINFO all checks passed'"), std::string::npos) << what;
  }
}

TEST(StateDict, StrictLoadListsEveryProblemAtOnceAndChangesNothing) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_file({{"fc.weight", torch::ones({3, 2})}, {"extra", torch::ones({1})}}, path);
  Small m;
  auto before = state_of(*m);
  std::string message;
  try {
    load_state_dict(*m, path);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::StateDictMismatch);
    message = e.what();
  }
  EXPECT_NE(message.find("missing: 'fc.bias'"), std::string::npos) << message;
  EXPECT_NE(message.find("unexpected: 'extra'"), std::string::npos) << message;
  EXPECT_NE(message.find("mismatched: 'fc.weight'"), std::string::npos) << message;
  EXPECT_NE(message.find("F32 [2, 3]"), std::string::npos) << message;
  for (const auto& [name, t] : state_of(*m)) EXPECT_TRUE(torch::equal(t, before[name])) << name;
}

TEST(StateDict, NonStrictLoadsWhatMatchesAndReportsTheRest) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  torch::Tensor bias = torch::tensor({5.0f, 6.0f});
  save_file({{"fc.weight", torch::ones({3, 2}, torch::kDouble)}, {"fc.bias", bias}, {"extra", torch::ones({1})}},
            path);
  Small m;
  torch::Tensor weight = m->fc->weight.detach().clone();
  LoadReport r = load_state_dict(*m, path, StateDictLoadOptions().strict(false));
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.loaded_keys, std::vector<std::string>{"fc.bias"});
  EXPECT_TRUE(r.missing_keys.empty());
  ASSERT_EQ(r.unexpected_keys.size(), 1u);
  EXPECT_EQ(r.unexpected_keys[0].file_name, "extra");
  EXPECT_EQ(r.unexpected_keys[0].module_name, "extra");
  ASSERT_EQ(r.mismatched.size(), 1u);
  const LoadReport::Mismatch& mm = r.mismatched[0];
  EXPECT_EQ(mm.file_name, "fc.weight");
  EXPECT_EQ(mm.module_name, "fc.weight");
  EXPECT_EQ(mm.expected_shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(mm.expected_dtype, torch::kFloat);
  EXPECT_EQ(mm.found_shape, (std::vector<std::uint64_t>{3, 2}));
  EXPECT_EQ(mm.found_dtype, Dtype::F64);
  EXPECT_EQ(mm.reason, "shape");
  EXPECT_TRUE(torch::equal(m->fc->bias, bias));
  EXPECT_TRUE(torch::equal(m->fc->weight, weight));

  save_file({{"fc.weight", torch::ones({2, 3})}}, path);
  r = load_state_dict(*m, path, StateDictLoadOptions().strict(false));
  EXPECT_EQ(r.missing_keys, std::vector<std::string>{"fc.bias"});
  EXPECT_EQ(r.loaded_keys, std::vector<std::string>{"fc.weight"});
  EXPECT_TRUE(r.unexpected_keys.empty());
  EXPECT_TRUE(r.mismatched.empty());
  EXPECT_TRUE(torch::equal(m->fc->bias, bias));  // a missing entry keeps its value
}

TEST(StateDict, ShapesMustMatchExactlyWithoutBroadcastingOrReplacement) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_file({{"fc.weight", torch::ones({1})}, {"fc.bias", torch::ones({1, 2})}}, path);
  Small m;
  torch::Tensor weight = m->fc->weight.detach().clone();
  EXPECT_EQ(error_code_of([&] { load_state_dict(*m, path); }), ErrorCode::StateDictMismatch);
  LoadReport r = load_state_dict(*m, path, StateDictLoadOptions().strict(false).mode(LoadMode::ZeroCopy));
  EXPECT_EQ(r.mismatched.size(), 2u);
  EXPECT_EQ(m->fc->weight.sizes(), (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(m->fc->bias.sizes(), (std::vector<std::int64_t>{2}));
  EXPECT_TRUE(torch::equal(m->fc->weight, weight));
}

TEST(StateDict, ADifferentDtypeIsAMismatchUnlessConversionIsAllowed) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  torch::Tensor w = torch::randn({2, 3}).to(torch::kBFloat16);
  save_file({{"fc.weight", w}, {"fc.bias", torch::ones({2}, torch::kBFloat16)}}, path);
  Small m;
  LoadReport r = load_state_dict(*m, path, StateDictLoadOptions().strict(false));
  ASSERT_EQ(r.mismatched.size(), 2u);
  EXPECT_EQ(r.mismatched[0].reason, "dtype");
  EXPECT_EQ(r.mismatched[0].found_dtype, Dtype::BF16);

  for (LoadMode mode : {LoadMode::Copy, LoadMode::ZeroCopy}) {
    Small converted;
    load_state_dict(*converted, path, StateDictLoadOptions().convert_dtype(true).mode(mode));
    EXPECT_EQ(converted->fc->weight.scalar_type(), torch::kFloat);
    EXPECT_TRUE(torch::equal(converted->fc->weight, w.to(torch::kFloat)));
  }
  // Conversion is between floating-point dtypes only.
  save_file({{"fc.weight", torch::ones({2, 3}, torch::kInt)}, {"fc.bias", torch::ones({2})}}, path);
  r = load_state_dict(*m, path, StateDictLoadOptions().strict(false).convert_dtype(true));
  ASSERT_EQ(r.mismatched.size(), 1u);
  EXPECT_EQ(r.mismatched[0].found_dtype, Dtype::I32);
}

TEST(StateDict, RenamingStripsAndAddsPrefixesAndMapsOrDropsNames) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  torch::Tensor w = torch::randn({2, 3}), b = torch::randn({2});
  save_file({{"model.transformer.fc.weight", w}, {"model.transformer.fc.bias", b}, {"model.pooler", b.clone()}}, path);
  auto rename = [](const std::string& name) -> std::optional<std::string> {
    if (name == "pooler") return std::nullopt;
    return "head." + name.substr(std::string("transformer.").size());
  };
  struct WrapImpl : Module {
    WrapImpl() : head(register_module("head", Small())) {}
    Small head;
  };
  auto wrapped = std::make_shared<WrapImpl>();
  LoadReport r = load_state_dict(*wrapped, path, StateDictLoadOptions().strip_prefix("model.").rename(rename));
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_TRUE(torch::equal(wrapped->head->fc->weight, w));

  Small m;  // add_prefix runs after strip_prefix; the report names both sides
  r = load_state_dict(*m, path,
                      StateDictLoadOptions().strict(false).strip_prefix("model.transformer.").add_prefix("x."));
  EXPECT_EQ(r.missing_keys, (std::vector<std::string>{"fc.weight", "fc.bias"}));
  ASSERT_EQ(r.unexpected_keys.size(), 3u);  // in file order
  EXPECT_EQ(r.unexpected_keys[0].file_name, "model.pooler");
  EXPECT_EQ(r.unexpected_keys[0].module_name, "x.model.pooler");  // no prefix to strip
  EXPECT_EQ(r.unexpected_keys[2].file_name, "model.transformer.fc.weight");
  EXPECT_EQ(r.unexpected_keys[2].module_name, "x.fc.weight");

  EXPECT_EQ(error_code_of([&] {
              load_state_dict(*m, path, StateDictLoadOptions().rename([](const std::string&) {
                return std::optional<std::string>("fc.bias");
              }));
            }),
            ErrorCode::InvalidArgument);  // two tensors for one parameter
}

TEST(StateDict, TiedWeightsAreSavedOnceAndTheTieIsRestored) {
  TempDir dir;
  const std::string path = dir.file("tied.safetensors");
  Tied saved;
  save_state_dict(*saved, path, Metadata{{"note", "mine"}});
  SafeOpen f(path);
  EXPECT_EQ(f.keys(), std::vector<std::string>{"embed.weight"});  // the first name in byte order
  EXPECT_EQ(f.metadata(), (Metadata{{"format", "pt"}, {"head.weight", "embed.weight"}, {"note", "mine"}}));

  Tied copied;
  LoadReport r = load_state_dict(*copied, path);
  EXPECT_EQ(r.loaded_keys, (std::vector<std::string>{"embed.weight", "head.weight"}));
  EXPECT_TRUE(torch::equal(copied->head->weight, saved->embed->weight));

  Tied viewed;
  load_state_dict(*viewed, f, StateDictLoadOptions().mode(LoadMode::ZeroCopy));
  EXPECT_EQ(viewed->head->weight.data_ptr(), viewed->embed->weight.data_ptr());
  EXPECT_EQ(viewed->head->weight.data_ptr(), f.get_tensor("embed.weight").data_ptr());

  // A module without the tie gets the alias filled from the kept tensor.
  Untied untied;
  r = load_state_dict(*untied, path);
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_TRUE(torch::equal(untied->head->weight, saved->embed->weight));

  // A tie the module has and the file does not record (transformers omits lm_head).
  save_file({{"embed.weight", torch::ones({4, 3})}}, path);
  Tied plain;
  r = load_state_dict(*plain, path);
  EXPECT_EQ(r.loaded_keys, (std::vector<std::string>{"embed.weight", "head.weight"}));
  EXPECT_TRUE(torch::equal(plain->head->weight, torch::ones({4, 3})));
}

// The modes agree on memory: an alias fills an entry the module keeps apart
// with its own memory, in ZeroCopy mode as in Copy mode, and in its own dtype.
TEST(StateDict, EntriesTheModuleKeepsApartStayApartInBothModes) {
  TempDir dir;
  const std::string path = dir.file("tied.safetensors");
  Tied saved;
  save_state_dict(*saved, path);  // embed.weight, and head.weight as its alias
  const torch::Tensor weight = saved->embed->weight.detach().clone();
  for (LoadMode mode : {LoadMode::Copy, LoadMode::ZeroCopy}) {
    Untied untied;
    LoadReport r = load_state_dict(*untied, path, StateDictLoadOptions().mode(mode));
    EXPECT_TRUE(r.ok()) << r.describe();
    EXPECT_TRUE(torch::equal(untied->head->weight, weight));
    EXPECT_NE(untied->head->weight.data_ptr(), untied->embed->weight.data_ptr());
    {
      torch::NoGradGuard no_grad;
      untied->embed->weight.add_(1);
    }
    EXPECT_TRUE(torch::equal(untied->head->weight, weight)) << "an untied entry changed with another";

    // The alias in another dtype than the kept name's entry: each gets its own.
    Untied mixed;
    mixed->head->weight.set_data(torch::zeros({4, 3}, torch::kDouble));
    r = load_state_dict(*mixed, path, StateDictLoadOptions().mode(mode).convert_dtype(true));
    EXPECT_TRUE(r.ok()) << r.describe();
    EXPECT_EQ(mixed->head->weight.scalar_type(), torch::kDouble);
    EXPECT_EQ(mixed->embed->weight.scalar_type(), torch::kFloat);
    EXPECT_TRUE(torch::equal(mixed->head->weight, weight.to(torch::kDouble)));
    EXPECT_TRUE(torch::equal(mixed->embed->weight, weight));
  }
}

// Entries the module ties are written once, from the file tensor of the one
// that comes last in the module's order (the last copy wins, as in PyTorch's
// load_state_dict), and stay one memory in both modes.
TEST(StateDict, AModuleTieFilledFromTwoFileTensorsKeepsTheLastInModuleOrder) {
  TempDir dir;
  const std::string path = dir.file("two.safetensors");
  save_file({{"embed.weight", torch::full({4, 3}, 1.0f)}, {"head.weight", torch::full({4, 3}, 2.0f)}}, path);
  for (LoadMode mode : {LoadMode::Copy, LoadMode::ZeroCopy}) {
    Tied tied;
    LoadReport r = load_state_dict(*tied, path, StateDictLoadOptions().mode(mode));
    EXPECT_TRUE(r.ok()) << r.describe();
    EXPECT_EQ(tied->head->weight.data_ptr(), tied->embed->weight.data_ptr());
    EXPECT_TRUE(torch::equal(tied->embed->weight, torch::full({4, 3}, 2.0f)));
  }
}

// An entry whose memory overlaps another's without being the same view (a
// transposed buffer over a parameter) keeps sharing it in ZeroCopy mode: it
// is filled in place, as in Copy mode.
TEST(StateDict, EntriesOverlappingWithoutBeingTheSameViewStayLinkedInBothModes) {
  TempDir dir;
  const std::string path = dir.file("linked.safetensors");
  const torch::Tensor w = torch::arange(6, torch::kFloat).reshape({2, 3});
  save_file({{"w", w}}, path);
  for (LoadMode mode : {LoadMode::Copy, LoadMode::ZeroCopy}) {
    auto m = std::make_shared<Module>();
    torch::Tensor p = m->register_parameter("w", torch::zeros({2, 3}));
    m->register_buffer("wt", p.detach().t());
    LoadReport r = load_state_dict(*m, path, StateDictLoadOptions().mode(mode).strict(false));
    EXPECT_EQ(r.loaded_keys, std::vector<std::string>{"w"});
    EXPECT_TRUE(torch::equal(m->named_buffers()["wt"], w.t())) << "the transposed buffer no longer sees the parameter";
  }
}

// Tie filling and the modes' writes hash the module's memory: a module of
// many parameters, half of them tied to the other half under names the file
// lacks, loads in time linear in its size.
TEST(StateDict, ManyTiedParametersLoadInNearLinearTime) {
  TempDir dir;
  const std::string path = dir.file("many.safetensors");
  constexpr int kPairs = 10'000;
  auto make = [] {
    auto m = std::make_shared<Module>();
    for (int i = 0; i < kPairs; ++i) {
      torch::Tensor p = m->register_parameter("p" + std::to_string(i), torch::zeros({2}));
      m->register_parameter("tied" + std::to_string(i), p);  // the same tensor under a second name
    }
    return m;
  };
  {
    NamedTensors file;
    for (int i = 0; i < kPairs; ++i) file.add("p" + std::to_string(i), torch::full({2}, static_cast<float>(i)));
    save_file(file, path);
  }
  for (LoadMode mode : {LoadMode::Copy, LoadMode::ZeroCopy}) {
    auto m = make();
    const auto start = std::chrono::steady_clock::now();
    LoadReport r = load_state_dict(*m, path, StateDictLoadOptions().mode(mode));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("load_state_dict of %d parameters, %d of them tied (%s): %.3f s\n", 2 * kPairs, kPairs,
                mode == LoadMode::Copy ? "Copy" : "ZeroCopy", seconds);
    EXPECT_TRUE(r.ok()) << r.describe().substr(0, 1000);
    EXPECT_EQ(r.loaded_keys.size(), static_cast<std::size_t>(2 * kPairs));
    const auto params = m->named_parameters();
    for (int i : {0, 1, kPairs / 2, kPairs - 1}) {
      const torch::Tensor& tied = params["tied" + std::to_string(i)];
      EXPECT_TRUE(torch::equal(tied, torch::full({2}, static_cast<float>(i)))) << i;
      EXPECT_EQ(tied.data_ptr(), params["p" + std::to_string(i)].data_ptr()) << i;
    }
  }
}

TEST(StateDict, UserMetadataKeysAreNotOverwrittenByAliases) {
  TempDir dir;
  const std::string path = dir.file("tied.safetensors");
  Tied saved;
  save_state_dict(*saved, path, Metadata{{"head.weight", "user value"}, {"format", "custom"}});
  EXPECT_EQ(SafeOpen(path).metadata(), (Metadata{{"format", "custom"}, {"head.weight", "user value"}}));
}

TEST(Deduplicate, KeepsOneNamePerStorageAndRefusesWhenNoneCoversIt) {
  torch::Tensor w = torch::randn({4, 4});
  Deduplicated d = deduplicate_shared({{"z", w}, {"b", w.t()}, {"row", w[1]}, {"other", torch::ones({2})}});
  EXPECT_EQ(d.aliases, (std::map<std::string, std::string>{{"row", "b"}, {"z", "b"}}));
  ASSERT_EQ(d.tensors.size(), 2u);
  EXPECT_EQ(d.tensors.items()[0].name, "b");
  EXPECT_EQ(d.tensors.items()[1].name, "other");
  // Disjoint halves of one storage are separate tensors.
  EXPECT_TRUE(deduplicate_shared({{"top", w.slice(0, 0, 2)}, {"bottom", w.slice(0, 2, 4)}}).aliases.empty());
  EXPECT_EQ(error_code_of([&] { deduplicate_shared({{"a", w.slice(0, 0, 3)}, {"b", w.slice(0, 1, 4)}}); }),
            ErrorCode::InvalidArgument);
  std::string message = error_message([&] { deduplicate_shared({{"a", w[0]}, {"b", w[0]}}); });
  EXPECT_NE(message.find("none covers the whole storage"), std::string::npos) << message;
}

TEST(StateDict, SavesParametersFromAnyLayoutAsContiguousValues) {
  TempDir dir;
  struct TransposedImpl : Module {
    TransposedImpl() : w(register_parameter("w", torch::randn({3, 5}).t())) {}
    torch::Tensor w;
  };
  auto m = std::make_shared<TransposedImpl>();
  save_state_dict(*m, dir.file("t.safetensors"));
  EXPECT_TRUE(torch::equal(SafeOpen(dir.file("t.safetensors")).get_tensor("w"), m->w));
}

// Progress counts every tensor byte of the save, in one file or over the
// shards of a set, and its setters chain with those of the state-dict options.
TEST(StateDict, ReportsProgressOverEveryFileOfTheSave) {
  TempDir dir;
  Net saved;
  std::uint64_t bytes = 0;
  for (const auto& t : saved->parameters()) bytes += t.nbytes();
  for (const auto& t : saved->buffers()) bytes += t.nbytes();
  std::filesystem::create_directory(dir.file("set"));
  for (const std::optional<std::uint64_t> shard_size : {std::optional<std::uint64_t>(), std::optional<std::uint64_t>(256)}) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
    save_state_dict(*saved, shard_size ? dir.file("set") : dir.file("net.safetensors"), std::nullopt,
                    StateDictSaveOptions()
                        .fsync(false)
                        .progress([&](std::uint64_t done, std::uint64_t total) { calls.emplace_back(done, total); })
                        .max_shard_size(shard_size));
    ASSERT_EQ(calls.size(), kNetNames.size());
    std::uint64_t previous = 0;
    for (const auto& [done, total] : calls) {
      EXPECT_GE(done, previous);
      EXPECT_EQ(total, bytes);
      previous = done;
    }
    EXPECT_EQ(calls.back().first, bytes);
    if (shard_size) {
      const ShardedOpen set(dir.file("set"));
      EXPECT_GT(set.shards().size(), 1u);
    }
  }
}

TEST(StateDict, FillsCudaParametersStraightFromTheFile) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  TempDir dir;
  Small saved;
  save_state_dict(*saved, dir.file("m.safetensors"));
  for (LoadMode mode : {LoadMode::Copy, LoadMode::ZeroCopy}) {
    Small gpu;
    gpu->to(torch::kCUDA);
    load_state_dict(*gpu, dir.file("m.safetensors"), StateDictLoadOptions().mode(mode));
    EXPECT_TRUE(gpu->fc->weight.is_cuda());
    EXPECT_TRUE(torch::equal(gpu->fc->weight.cpu(), saved->fc->weight));
  }
  Small from_gpu;
  from_gpu->to(torch::kCUDA);
  save_state_dict(*from_gpu, dir.file("gpu.safetensors"));
  EXPECT_TRUE(torch::equal(SafeOpen(dir.file("gpu.safetensors")).get_tensor("fc.bias"), from_gpu->fc->bias.cpu()));
}

}  // namespace
}  // namespace safetensors
