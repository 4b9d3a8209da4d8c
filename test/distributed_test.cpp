// Tensor-parallel loading and saving. The plan arithmetic and the per-rank
// loads run in this process; the collectives run in real ranks: this
// executable starts itself 2 or 4 times as workers (`--worker SCENARIO RANK
// WORLD PORT DIR`), joined by a c10d TCPStore on 127.0.0.1 that the test
// process serves and a ProcessGroupGloo.

#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include "safetensors/distributed.hpp"
#include "safetensors/load.hpp"
#include "safetensors/module.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "support/module.hpp"
#include "test_util.hpp"

extern char** environ;

namespace st = safetensors;
namespace fs = std::filesystem;
using st::test::bitwise_equal;
using st::test::error_code_of;
using st::test::TempDir;
using torch::indexing::Slice;

namespace {

// ---------------------------------------------------------------------------
// The model every test uses: uneven splits, every split dimension, several
// dtypes, replicated tensors, parts of zero rows, and one large tensor so
// that reads are dominated by split data.

std::vector<std::pair<std::string, torch::Tensor>> model_tensors() {
  torch::manual_seed(7);
  std::vector<std::pair<std::string, torch::Tensor>> t;
  t.emplace_back("embed.weight", torch::randn({11, 6}));
  t.emplace_back("layers.0.q.weight", torch::randn({9, 6}).to(torch::kBFloat16));
  t.emplace_back("layers.0.q.bias", torch::randn({9}));
  t.emplace_back("layers.0.o.weight", torch::randn({6, 9}));
  t.emplace_back("layers.0.o.bias", torch::randn({6}));
  t.emplace_back("layers.0.norm.weight", torch::randn({6}).to(torch::kHalf));
  t.emplace_back("layers.1.mlp.weight", torch::randn({3, 5, 7}, torch::kDouble));
  t.emplace_back("layers.1.count", torch::arange(3, torch::kLong));
  t.emplace_back("tiny.weight", torch::randn({2, 3}));
  t.emplace_back("big.weight", torch::randn({256, 512}));
  return t;
}

st::PartitionPlan model_plan() {
  return st::PartitionPlan()
      .split("embed.weight", 0)
      .split("*.q.weight", 0)
      .split("*.q.bias", 0)
      .split("*.o.weight", 1)
      .split("layers.1.mlp.weight", -1)
      .split("tiny.*", 0)
      .split("big.*", 0);
}

// Writes the model as one file and as a sharded set.
void write_model(const fs::path& dir) {
  st::save_file(model_tensors(), (dir / "model.safetensors").string());
  fs::create_directories(dir / "sharded");
  st::save_sharded(model_tensors(), (dir / "sharded").string(), std::nullopt,
                   st::ShardedSaveOptions().max_shard_size(100'000).fsync(false));
}

// Rank `rank`'s part of a tensor, computed with torch's narrow.
torch::Tensor expected_part(const std::string& name, const torch::Tensor& whole, const st::TensorParallel& tp) {
  const auto range = tp.range(name, whole.sizes().vec());
  if (!range) return whole;
  const std::int64_t dim = *tp.placement(name, whole.dim()).split_dim;
  return whole.narrow(dim, range->start, range->length).contiguous();
}

// A module holding zeros of the given tensors' shapes and dtypes under their
// dotted names; integer tensors are buffers.
std::shared_ptr<torch::nn::Module> make_module(const std::vector<std::pair<std::string, torch::Tensor>>& like) {
  return st::test::make_module(like, st::test::ModuleFill::zeros);
}

std::vector<std::pair<std::string, torch::Tensor>> local_parts(const st::TensorParallel& tp) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, t] : model_tensors()) out.emplace_back(name, expected_part(name, t, tp));
  return out;
}

// Counts the bytes read through it (a pread source: every byte goes through read()).
class CountingSource : public st::Source {
 public:
  explicit CountingSource(std::shared_ptr<st::Source> inner)
      : Source(inner->path(), inner->size(), nullptr), inner_(std::move(inner)) {}
  void read(std::uint64_t offset, void* dst, std::size_t n) const override {
    bytes_ += n;
    inner_->read(offset, dst, n);
  }
  std::uint64_t bytes() const { return bytes_; }

 private:
  std::shared_ptr<st::Source> inner_;
  mutable std::atomic<std::uint64_t> bytes_{0};
};

std::uint64_t header_bytes(const std::string& path) {
  const std::string head = st::test::read_bytes(path).substr(0, 8);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(head[i]);
  return 8 + n;
}

// ---------------------------------------------------------------------------
// In this process: the plan and the per-rank loads, which need no communication.

TEST(PartRange, SplitsUnevenlyFirstRanksTakeMore) {
  EXPECT_EQ(st::part_range(10, 0, 4), (st::PartRange{0, 3}));
  EXPECT_EQ(st::part_range(10, 1, 4), (st::PartRange{3, 3}));
  EXPECT_EQ(st::part_range(10, 2, 4), (st::PartRange{6, 2}));
  EXPECT_EQ(st::part_range(10, 3, 4), (st::PartRange{8, 2}));
  EXPECT_EQ(st::part_range(2, 3, 4), (st::PartRange{2, 0}));
  EXPECT_EQ(st::part_range(0, 0, 1), (st::PartRange{0, 0}));
  for (int world = 1; world <= 9; ++world)
    for (std::int64_t size = 0; size <= 30; ++size) {
      std::int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        const st::PartRange range = st::part_range(size, r, world);
        EXPECT_EQ(range.start, next);
        EXPECT_LE(range.length, size / world + 1);
        EXPECT_GE(range.length, size / world);
        next += range.length;
      }
      EXPECT_EQ(next, size);
    }
  EXPECT_EQ(error_code_of([] { st::part_range(4, 2, 2); }), st::ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([] { st::part_range(4, -1, 2); }), st::ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([] { st::part_range(4, 0, 0); }), st::ErrorCode::InvalidArgument);
}

TEST(PartitionPlan, ExactNamesWinThenFirstMatchingPattern) {
  const auto plan = st::PartitionPlan()
                        .split("*.weight", 0)
                        .split("layers.?.o.weight", 1)
                        .replicate("head.weight")
                        .split("emb[ab].*", 1);
  EXPECT_EQ(plan.placement("layers.3.q.weight"), st::Placement::split(0));
  EXPECT_EQ(plan.placement("layers.3.o.weight"), st::Placement::split(0));  // "*.weight" came first
  EXPECT_EQ(plan.placement("head.weight"), st::Placement::replicate());     // exact beats any pattern
  EXPECT_EQ(plan.placement("emba.bias"), st::Placement::split(1));
  EXPECT_EQ(plan.placement("embc.bias"), st::Placement::replicate());
  EXPECT_EQ(plan.placement("bias"), st::Placement::replicate());
  EXPECT_EQ(error_code_of([] { st::PartitionPlan().split("", 0); }), st::ErrorCode::InvalidArgument);
}

TEST(PartitionPlan, NegativeDimensionsCountFromTheEndAndOutOfRangeIsAnError) {
  const st::TensorParallel tp{st::PartitionPlan().split("a", -1).split("b", 2), 1, 2};
  EXPECT_EQ(tp.placement("a", 3), st::Placement::split(2));
  EXPECT_EQ(tp.local_shape("a", {4, 5, 7}), (std::vector<std::int64_t>{4, 5, 3}));
  EXPECT_EQ(tp.range("a", {4, 5, 7}), (st::PartRange{4, 3}));
  EXPECT_EQ(tp.range("c", {4}), std::nullopt);
  try {
    tp.placement("b", 2);
    FAIL() << "a split of dimension 2 of a matrix was accepted";
  } catch (const st::Error& e) {
    EXPECT_EQ(e.code(), st::ErrorCode::InvalidArgument);
    EXPECT_EQ(e.tensor(), "b");
    EXPECT_NE(std::string(e.what()).find("dimension 2"), std::string::npos) << e.what();
  }
}

// The names of release 0.1 compile, with a deprecation warning, and mean what
// the new ones do.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
TEST(TensorParallel, TheNamesOfRelease01StillWork) {
  static_assert(std::is_same_v<st::ShardRange, st::PartRange>);
  static_assert(std::is_same_v<st::ShardingPlan, st::PartitionPlan>);
  EXPECT_EQ(st::shard_range(10, 1, 4), st::part_range(10, 1, 4));
  TempDir dir;
  write_model(dir.path());
  const st::ShardedOpen checkpoint((dir.path() / "model.safetensors").string());
  const st::ShardingPlan plan = model_plan();
  const st::TensorParallel tp{plan, 1, 2};
  const st::TensorDict old = st::load_shards(checkpoint, tp);
  const st::TensorDict parts = st::load_parts(checkpoint, tp);
  ASSERT_EQ(old.keys(), parts.keys());
  for (const auto& item : parts) EXPECT_TRUE(bitwise_equal(old[item.key()], item.value())) << item.key();
}
#pragma GCC diagnostic pop

// Every rank of several worlds loads its parts, and they are torch's narrow
// of the whole, while reading about 1/world of the data.
TEST(TensorParallelLoad, EachRankGetsItsPartAndReadsOnlyIt) {
  TempDir dir;
  write_model(dir.path());
  const std::string path = (dir.path() / "model.safetensors").string();
  const auto file_bytes = fs::file_size(path);
  const auto originals = model_tensors();
  for (int world : {1, 2, 3, 4}) {
    for (int rank = 0; rank < world; ++rank) {
      const st::TensorParallel tp{model_plan(), rank, world};
      auto source = std::make_shared<CountingSource>(st::open_file(path, st::Backend::Pread));
      const st::ShardedOpen checkpoint{st::SafeOpen(source)};
      const std::uint64_t after_header = source->bytes();
      const st::TensorDict parts = st::load_parts(checkpoint, tp);
      ASSERT_EQ(parts.size(), originals.size());
      std::uint64_t expected_bytes = 0;
      for (const auto& [name, whole] : originals) {
        const torch::Tensor want = expected_part(name, whole, tp);
        EXPECT_TRUE(bitwise_equal(parts[name], want)) << name << " rank " << rank << " of " << world;
        expected_bytes += want.nbytes();
      }
      // The part's bytes; small strided parts may be read as one span, within
      // a bounded waste (256 KiB or a quarter of the part).
      EXPECT_GE(source->bytes() - after_header, expected_bytes) << "rank " << rank << " of " << world;
      EXPECT_LE(source->bytes() - after_header, expected_bytes + (8u << 10)) << "rank " << rank << " of " << world;
      EXPECT_LE(static_cast<double>(source->bytes()),
                static_cast<double>(file_bytes) / world * 1.05 + header_bytes(path));
    }
  }
}

// A row-parallel weight: each rank's columns are many short runs, which must
// not be read as the whole span of the matrix.
TEST(TensorParallelLoad, ColumnsOfALargeMatrixCostTheirShare) {
  TempDir dir;
  const std::string path = (dir.path() / "wide.safetensors").string();
  const torch::Tensor w = torch::randn({512, 1024});
  st::save_file(std::vector<std::pair<std::string, torch::Tensor>>{{"o.weight", w}}, path);
  for (int world : {2, 4, 8}) {
    const st::TensorParallel tp{st::PartitionPlan().split("o.weight", 1), world - 1, world};
    auto source = std::make_shared<CountingSource>(st::open_file(path, st::Backend::Pread));
    const st::ShardedOpen checkpoint{st::SafeOpen(source)};
    const std::uint64_t before = source->bytes();
    const st::TensorDict parts = st::load_parts(checkpoint, tp);
    EXPECT_TRUE(bitwise_equal(parts["o.weight"], expected_part("o.weight", w, tp)));
    EXPECT_EQ(source->bytes() - before, w.nbytes() / world) << world << " ranks";
  }
}

TEST(TensorParallelLoad, FillsALocalModuleFromOneFileOrAShardedSetInBothModes) {
  TempDir dir;
  write_model(dir.path());
  for (const std::string source : {"model.safetensors", "sharded"}) {
    for (st::LoadMode mode : {st::LoadMode::Copy, st::LoadMode::ZeroCopy}) {
      for (int rank = 0; rank < 3; ++rank) {
        const st::TensorParallel tp{model_plan(), rank, 3};
        const auto want = local_parts(tp);
        auto module = make_module(want);
        const st::LoadReport report = st::load_state_dict(
            *module, (dir.path() / source).string(), st::StateDictLoadOptions().tensor_parallel(tp).mode(mode));
        EXPECT_TRUE(report.ok()) << report.describe();
        EXPECT_EQ(report.loaded_keys.size(), want.size());
        const auto state = module->named_parameters();
        const auto buffers = module->named_buffers();
        for (const auto& [name, t] : want) {
          const torch::Tensor got = state.contains(name) ? state[name] : buffers[name];
          EXPECT_TRUE(bitwise_equal(got, t)) << source << " " << name << " rank " << rank;
        }
      }
    }
  }
}

TEST(TensorParallelLoad, AWholeTensorInASplitPlaceIsAMismatchNamingTheRankAndPart) {
  TempDir dir;
  write_model(dir.path());
  const st::TensorParallel tp{model_plan(), 1, 2};
  auto module = make_module(model_tensors());  // whole shapes: the split ones do not fit
  try {
    st::load_state_dict(*module, (dir.path() / "model.safetensors").string(),
                        st::StateDictLoadOptions().tensor_parallel(tp));
    FAIL() << "whole tensors were accepted as rank 1's parts";
  } catch (const st::Error& e) {
    EXPECT_EQ(e.code(), st::ErrorCode::StateDictMismatch);
    const std::string what = e.what();
    EXPECT_NE(what.find("'embed.weight'"), std::string::npos) << what;
    EXPECT_NE(what.find("rank 1 of 2 holds [5, 6] of it (dimension 0, elements 6..11)"), std::string::npos) << what;
    EXPECT_NE(what.find("'layers.0.o.weight'"), std::string::npos) << what;
    EXPECT_EQ(what.find("'layers.0.o.bias'"), std::string::npos) << what;  // replicated: fits
  }
  // Nothing was changed by the failed strict load.
  for (const auto& p : module->parameters()) EXPECT_EQ(p.abs().sum().item<double>(), 0.0);
}

// A checkpoint saved from a model whose output layer shares the embedding's
// weight: lm_head.weight (the first name in byte order), and wte.weight
// recorded as its alias.
void write_tied_model(const fs::path& file) {
  torch::manual_seed(3);
  auto model = std::make_shared<torch::nn::Module>();
  const torch::Tensor wte = model->register_module("wte", std::make_shared<torch::nn::Module>())
                                ->register_parameter("weight", torch::randn({10, 4}));
  model->register_module("lm_head", std::make_shared<torch::nn::Module>())->register_parameter("weight", wte);
  st::save_state_dict(*model, file.string(), std::nullopt, st::StateDictSaveOptions().fsync(false));
}

// A plan that splits the embedding and replicates the output layer, over the
// file of a tied model: one file tensor fills two entries with different
// parts, or in different dtypes, and each gets its own, in both modes.
TEST(TensorParallelLoad, AnAliasTakesItsOwnPartAndDtype) {
  TempDir dir;
  const fs::path file = dir.path() / "tied.safetensors";
  write_tied_model(file);
  const torch::Tensor whole = st::SafeOpen(file.string()).get_tensor("lm_head.weight");
  const st::TensorParallel tp{st::PartitionPlan().split("wte.weight", 0), 1, 2};
  for (st::LoadMode mode : {st::LoadMode::Copy, st::LoadMode::ZeroCopy}) {
    auto module = make_module({{"wte.weight", torch::zeros({5, 4})}, {"lm_head.weight", torch::zeros({10, 4})}});
    const st::LoadReport report =
        st::load_state_dict(*module, file.string(), st::StateDictLoadOptions().tensor_parallel(tp).mode(mode));
    EXPECT_TRUE(report.ok()) << report.describe();
    const auto params = module->named_parameters();
    EXPECT_TRUE(bitwise_equal(params["wte.weight"], whole.narrow(0, 5, 5).contiguous()));
    EXPECT_EQ(params["lm_head.weight"].sizes(), (std::vector<std::int64_t>{10, 4}));
    EXPECT_TRUE(bitwise_equal(params["lm_head.weight"], whole));
    EXPECT_NE(params["lm_head.weight"].data_ptr(), params["wte.weight"].data_ptr());
  }
  // Entries in two dtypes filled from one tensor through two aliases.
  {
    auto model = std::make_shared<torch::nn::Module>();
    const torch::Tensor w = model->register_parameter("a", whole.clone());
    model->register_parameter("b", w);
    model->register_parameter("c", w);
    st::save_state_dict(*model, file.string(), std::nullopt, st::StateDictSaveOptions().fsync(false));
  }
  for (st::LoadMode mode : {st::LoadMode::Copy, st::LoadMode::ZeroCopy}) {
    auto module = make_module({{"a", torch::zeros({10, 4})}, {"b", torch::zeros({10, 4}, torch::kDouble)},
                               {"c", torch::zeros({10, 4}, torch::kHalf)}});
    const st::LoadReport report =
        st::load_state_dict(*module, file.string(), st::StateDictLoadOptions().mode(mode).convert_dtype(true));
    EXPECT_TRUE(report.ok()) << report.describe();
    const auto params = module->named_parameters();
    EXPECT_EQ(params["b"].scalar_type(), torch::kDouble);
    EXPECT_EQ(params["c"].scalar_type(), torch::kHalf);
    EXPECT_TRUE(torch::equal(params["b"], whole.to(torch::kDouble)));
    EXPECT_TRUE(torch::equal(params["c"], whole.to(torch::kHalf)));
  }
}

// ---------------------------------------------------------------------------
// Several processes

// LibTorch 2.4+ asks for libuv in TCPStore by default, which builds such as
// Debian's lack: the classic server is used where the option exists.
template <class Options>
auto without_libuv(Options& o, int) -> decltype(o.useLibUV = false, void()) {
  o.useLibUV = false;
}
template <class Options>
void without_libuv(Options&, long) {}

// Reassembles a split tensor from every rank's part (parts may differ in length).
torch::Tensor all_gather_whole(st::Communicator& comm, const torch::Tensor& part, std::int64_t dim) {
  const int world = comm.world_size();
  // Lengths first, then the parts padded to the longest, as bytes.
  std::vector<torch::Tensor> lengths(world);
  for (auto& l : lengths) l = torch::empty({8}, torch::kByte);
  const std::int64_t mine = part.size(dim);
  torch::Tensor my_length = torch::empty({8}, torch::kByte);
  std::memcpy(my_length.data_ptr(), &mine, 8);
  comm.all_gather(lengths, my_length);
  std::vector<std::int64_t> sizes(world);
  for (int r = 0; r < world; ++r) std::memcpy(&sizes[r], lengths[r].data_ptr(), 8);
  const std::int64_t longest = *std::max_element(sizes.begin(), sizes.end());
  std::vector<std::int64_t> padded_shape = part.sizes().vec();
  padded_shape[dim] = longest;
  torch::Tensor padded = torch::zeros(padded_shape, part.options());
  padded.narrow(dim, 0, mine).copy_(part);
  const auto nbytes = static_cast<std::int64_t>(padded.nbytes());
  auto as_bytes = [nbytes](const torch::Tensor& t) {
    return torch::from_blob(t.data_ptr(), {nbytes}, [t](void*) {}, torch::kByte);
  };
  std::vector<torch::Tensor> outputs(world), views(world);
  for (int r = 0; r < world; ++r) {
    outputs[r] = torch::empty(padded_shape, part.options());
    views[r] = as_bytes(outputs[r]);
  }
  comm.all_gather(views, as_bytes(padded));
  std::vector<torch::Tensor> pieces;
  for (int r = 0; r < world; ++r) pieces.push_back(outputs[r].narrow(dim, 0, sizes[r]));
  return torch::cat(pieces, dim);
}

#define CHECK_WORKER(cond, what)                                                          \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "rank %d: check failed: %s (%s)\n", rank, #cond, std::string(what).c_str()); \
      return 1;                                                                           \
    }                                                                                     \
  } while (0)

int worker(const std::string& scenario, int rank, int world, int port, const fs::path& dir) {
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(port);
  store_options.isServer = false;
  store_options.timeout = std::chrono::seconds(60);
  without_libuv(store_options, 0);
  auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", store_options);
  auto gloo_options = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(60));
  gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, gloo_options);
  auto comm = st::make_communicator(group);
  CHECK_WORKER(comm->rank() == rank && comm->world_size() == world, "communicator");

  const st::TensorParallel tp{model_plan(), rank, world};
  const std::string model = (dir / "model.safetensors").string();
  const auto originals = model_tensors();

  if (scenario == "load") {
    // Each rank reads about 1/world of the file (the model is mostly split data).
    {
      auto source = std::make_shared<CountingSource>(st::open_file(model, st::Backend::Pread));
      st::load_parts(st::ShardedOpen{st::SafeOpen(source)}, tp);
      const double share = static_cast<double>(source->bytes()) / static_cast<double>(fs::file_size(model));
      std::printf("rank %d of %d read %llu bytes, %.1f%% of the file\n", rank, world,
                  static_cast<unsigned long long>(source->bytes()), 100 * share);
      CHECK_WORKER(share <= 1.05 / world + static_cast<double>(header_bytes(model)) / fs::file_size(model),
                   std::to_string(share));
    }
    // Each rank reads its parts; all-gathers put every tensor back together.
    for (const std::string source : {"model.safetensors", "sharded"}) {
      const st::ShardedOpen checkpoint((dir / source).string(), st::LoadOptions().backend(st::Backend::Pread));
      const st::TensorDict parts = st::load_parts(checkpoint, tp);
      for (const auto& [name, whole] : originals) {
        const st::Placement p = tp.placement(name, whole.dim());
        const torch::Tensor back = p.split_dim ? all_gather_whole(*comm, parts[name], *p.split_dim) : parts[name];
        CHECK_WORKER(bitwise_equal(back, whole), source + " " + name);
      }
    }
    return 0;
  }
  if (scenario == "broadcast" || scenario == "broadcast-mismatch") {
    // Only rank 0 sees the file; the others name one that does not exist.
    auto want = local_parts(tp);
    // The embedding (F32 in the file) is held in F64: converted on the way.
    want[0].second = want[0].second.to(torch::kDouble);
    if (scenario == "broadcast-mismatch" && rank == world - 1) want[0].second = torch::zeros({1, 6});
    for (st::LoadMode mode : {st::LoadMode::Copy, st::LoadMode::ZeroCopy}) {
      auto module = make_module(want);
      // An output layer tied to the embedding (another tensor over the same memory):
      // not in the file, filled through the tie, and still tied afterwards.
      auto head = module->register_module("head", std::make_shared<torch::nn::Module>());
      head->register_parameter("weight", module->named_parameters()["embed.weight"].detach());
      const std::string path = rank == 0 ? (dir / "sharded").string() : "/nonexistent/checkpoint";
      try {
        const st::LoadReport report = st::load_state_dict_broadcast(
            *module, path, *comm, st::StateDictLoadOptions().tensor_parallel(tp).mode(mode).convert_dtype(true));
        CHECK_WORKER(scenario == "broadcast", "a mismatch on one rank was not an error on every rank");
        CHECK_WORKER(report.ok(), report.describe());
      } catch (const st::Error& e) {
        CHECK_WORKER(scenario == "broadcast-mismatch", e.what());
        CHECK_WORKER(e.code() == st::ErrorCode::StateDictMismatch, e.what());
        const std::string what = e.what();
        CHECK_WORKER(what.find("rank " + std::to_string(world - 1)) != std::string::npos, what);
        for (const auto& p : module->parameters()) CHECK_WORKER(p.abs().sum().item<double>() == 0.0, "changed");
        continue;
      }
      const auto params = module->named_parameters();
      const auto buffers = module->named_buffers();
      for (const auto& [name, t] : want) {
        const torch::Tensor got = params.contains(name) ? params[name] : buffers[name];
        CHECK_WORKER(bitwise_equal(got, t), name);
      }
      CHECK_WORKER(params["head.weight"].data_ptr() == params["embed.weight"].data_ptr(), "the tie was broken");
    }
    return 0;
  }
  if (scenario == "broadcast-alias") {
    // The file of a tied model; the plan splits the embedding, and the
    // output layer, untied here and held in F64, takes the whole tensor.
    const st::TensorParallel split{st::PartitionPlan().split("wte.weight", 0), rank, world};
    const torch::Tensor whole = st::SafeOpen((dir / "tied.safetensors").string()).get_tensor("lm_head.weight");
    const st::PartRange range = st::part_range(whole.size(0), rank, world);
    for (st::LoadMode mode : {st::LoadMode::Copy, st::LoadMode::ZeroCopy}) {
      auto module = make_module({{"wte.weight", torch::zeros({range.length, 4})},
                                 {"lm_head.weight", torch::zeros({10, 4}, torch::kDouble)}});
      const std::string path = rank == 0 ? (dir / "tied.safetensors").string() : "/nonexistent/checkpoint";
      const st::LoadReport report = st::load_state_dict_broadcast(
          *module, path, *comm, st::StateDictLoadOptions().tensor_parallel(split).mode(mode).convert_dtype(true));
      CHECK_WORKER(report.ok(), report.describe());
      const auto params = module->named_parameters();
      CHECK_WORKER(bitwise_equal(params["wte.weight"], whole.narrow(0, range.start, range.length)), "wte");
      CHECK_WORKER(params["lm_head.weight"].scalar_type() == torch::kDouble, "lm_head's dtype");
      CHECK_WORKER(torch::equal(params["lm_head.weight"], whole.to(torch::kDouble)), "lm_head");
    }
    return 0;
  }
  if (scenario == "save") {
    // Parts in, one normal sharded checkpoint out (checked by the test).
    const st::TensorDict parts = st::load_parts(st::ShardedOpen(model), tp);
    // Each rank's progress counts up to the bytes of the shard it writes.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
    const auto files = st::save_sharded_distributed(
        parts, (dir / "out").string(), *comm, model_plan(), st::Metadata{{"origin", "distributed"}},
        st::DistributedSaveOptions().fsync(false).progress(
            [&](std::uint64_t done, std::uint64_t total) { calls.emplace_back(done, total); }));
    CHECK_WORKER(files.back() == "model.safetensors.index.json", files.back());
    CHECK_WORKER(!calls.empty(), "no progress");
    for (std::size_t i = 0; i < calls.size(); ++i)
      CHECK_WORKER(calls[i].second == calls.back().second && calls[i].first <= calls[i].second &&
                       (i == 0 || calls[i - 1].first <= calls[i].first),
                   std::to_string(calls[i].first) + " of " + std::to_string(calls[i].second));
    CHECK_WORKER(calls.back().first == calls.back().second, "progress did not end at the total");
    // Every rank owns some bytes here, so rank r wrote the r-th shard.
    const st::SafeOpen mine((dir / "out" / files[static_cast<std::size_t>(rank)]).string());
    CHECK_WORKER(mine.header().data_size() == calls.back().second, std::to_string(mine.header().data_size()));
    // A module holding this rank's parts, saved the same way.
    // A module holding this rank's parts, with an output layer tied to the
    // embedding, saved the same way.
    auto module = make_module(local_parts(tp));
    st::load_state_dict(*module, model, st::StateDictLoadOptions().tensor_parallel(tp));
    auto head = module->register_module("head", std::make_shared<torch::nn::Module>());
    head->register_parameter("weight", module->named_parameters()["embed.weight"]);
    st::save_state_dict_distributed(*module, (dir / "module-out").string(), *comm, model_plan());
    return 0;
  }
  if (scenario == "save-progress-throws") {
    // The last rank's progress callback throws something that is not an Error.
    try {
      st::save_sharded_distributed(local_parts(tp), (dir / "out").string(), *comm, model_plan(), std::nullopt,
                                   st::DistributedSaveOptions().progress([&](std::uint64_t, std::uint64_t) {
                                     if (rank == world - 1) throw std::runtime_error("stop");
                                   }));
      CHECK_WORKER(false, "a save whose progress threw on one rank succeeded");
    } catch (const st::Error& e) {
      const std::string what = e.what();
      CHECK_WORKER(rank != world - 1, what);
      CHECK_WORKER(what.find("rank " + std::to_string(world - 1)) != std::string::npos, what);
    } catch (const std::runtime_error& e) {
      CHECK_WORKER(rank == world - 1 && std::string(e.what()) == "stop", e.what());
    }
    return 0;
  }
  if (scenario == "save-mismatch") {
    // The last rank holds one tensor in another dtype: every rank refuses.
    std::vector<std::pair<std::string, torch::Tensor>> parts = local_parts(tp);
    if (rank == world - 1) parts[2].second = parts[2].second.to(torch::kDouble);
    try {
      st::save_sharded_distributed(parts, (dir / "out").string(), *comm, model_plan());
      CHECK_WORKER(false, "a dtype that differs between ranks was saved");
    } catch (const st::Error& e) {
      const std::string what = e.what();
      CHECK_WORKER(e.code() == st::ErrorCode::InvalidArgument, what);
      CHECK_WORKER(what.find("layers.0.q.bias") != std::string::npos, what);
      CHECK_WORKER(what.find("F64") != std::string::npos, what);
    }
    return 0;
  }
  if (scenario == "names-not-utf8") {
    // A file name need not be UTF-8: rank 0 loads from one and tells the others.
    const fs::path odd = dir / "mod\xe8le.safetensors";
    if (rank == 0) fs::copy_file(model, odd, fs::copy_options::overwrite_existing);
    auto module = make_module(local_parts(tp));
    const st::LoadReport report = st::load_state_dict_broadcast(
        *module, rank == 0 ? odd.string() : "", *comm, st::StateDictLoadOptions().tensor_parallel(tp));
    CHECK_WORKER(report.ok(), report.describe());
    // A tensor name that is not UTF-8, on one rank: every rank refuses the save.
    std::vector<std::pair<std::string, torch::Tensor>> parts = local_parts(tp);
    if (rank == world - 1) parts.emplace_back("bad\xe8name", torch::zeros({2}));
    try {
      st::save_sharded_distributed(parts, (dir / "out").string(), *comm, model_plan());
      CHECK_WORKER(false, "a name that is not UTF-8 was saved");
    } catch (const st::Error& e) {
      CHECK_WORKER(e.code() == st::ErrorCode::InvalidArgument, e.what());
      // Relayed to the other ranks, the name is escaped once, as where it failed.
      const std::string what = e.what();
      CHECK_WORKER(what.find("bad\\xe8name") != std::string::npos, what);
      CHECK_WORKER(what.find("\\\\") == std::string::npos, what);
    }
    CHECK_WORKER(!fs::exists(dir / "out" / "model.safetensors.index.json"), "an index was written");
    return 0;
  }
  std::fprintf(stderr, "unknown scenario %s\n", scenario.c_str());
  return 2;
}

// Starts `world` workers and waits for them; every one must exit 0.
void run_ranks(const std::string& scenario, int world, const fs::path& dir) {
  c10d::TCPStoreOptions options;
  options.port = 0;  // any free port
  options.isServer = true;
  options.waitWorkers = false;
  options.timeout = std::chrono::seconds(60);
  without_libuv(options, 0);
  auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", options);
  const std::string port = std::to_string(store->getPort());
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world; ++rank) {
    std::vector<std::string> args = {"/proc/self/exe", "--worker", scenario, std::to_string(rank),
                                     std::to_string(world), port, dir.string()};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid;
    ASSERT_EQ(::posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ), 0);
    pids.push_back(pid);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(180);
  std::vector<int> status(world, -1);
  for (int done = 0; done < world;) {
    for (int r = 0; r < world; ++r) {
      if (status[r] != -1) continue;
      int s;
      if (::waitpid(pids[r], &s, WNOHANG) == pids[r]) {
        status[r] = s;
        ++done;
      }
    }
    if (std::chrono::steady_clock::now() > deadline) {
      for (int r = 0; r < world; ++r)
        if (status[r] == -1) ::kill(pids[r], SIGKILL), ::waitpid(pids[r], &status[r], 0);
      FAIL() << scenario << ": ranks did not finish in time";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int r = 0; r < world; ++r)
    EXPECT_TRUE(WIFEXITED(status[r]) && WEXITSTATUS(status[r]) == 0)
        << scenario << ": rank " << r << " of " << world << " failed (status " << status[r] << ")";
}

// A scenario whose checks all run in the ranks, over a fresh copy of the model.
void run_on_model(const std::string& scenario, int world) {
  TempDir dir;
  write_model(dir.path());
  run_ranks(scenario, world, dir.path());
}

class Ranks : public ::testing::TestWithParam<int> {};

TEST_P(Ranks, EachLoadsItsPartsAndAllGathersGiveTheOriginalBitForBit) { run_on_model("load", GetParam()); }

TEST_P(Ranks, RankZeroReadsAndSendsEachRankItsParts) { run_on_model("broadcast", GetParam()); }

TEST_P(Ranks, AMismatchOnOneRankFailsEveryRankAndChangesNothing) { run_on_model("broadcast-mismatch", GetParam()); }

// Names JSON cannot carry as text (a file name, a tensor name that is not
// UTF-8) fail no rank alone: before, rank 0 threw a JSON error and the others
// waited for its broadcast.
TEST_P(Ranks, NamesThatAreNotUtf8FailNoRankAlone) { run_on_model("names-not-utf8", GetParam()); }

TEST_P(Ranks, RankZeroSendsAnAliasItsOwnPartAndDtype) {
  TempDir dir;
  write_tied_model(dir.path() / "tied.safetensors");
  run_ranks("broadcast-alias", GetParam(), dir.path());
}

TEST_P(Ranks, ADistributedSaveIsANormalShardedCheckpoint) {
  TempDir dir;
  write_model(dir.path());
  fs::create_directories(dir.path() / "out");
  fs::create_directories(dir.path() / "module-out");
  // A previous checkpoint with more shards: its files must go.
  st::save_sharded(model_tensors(), (dir.path() / "out").string(), std::nullopt,
                   st::ShardedSaveOptions().max_shard_size(1000).fsync(false));
  run_ranks("save", GetParam(), dir.path());
  for (const std::string folder : {"out", "module-out"}) {
    const st::ShardedOpen saved((dir.path() / folder).string());
    ASSERT_NE(saved.index(), nullptr);
    EXPECT_EQ(saved.shards().size(), static_cast<std::size_t>(GetParam()));  // every rank owns some bytes
    EXPECT_EQ(saved.size(), model_tensors().size());
    for (const auto& [name, whole] : model_tensors())
      EXPECT_TRUE(bitwise_equal(saved.get_tensor(name), whole)) << folder << " " << name;
    EXPECT_EQ(saved.shards()[0].metadata().at("format"), "pt");
    std::size_t files = 0;
    for (const auto& entry : fs::directory_iterator(dir.path() / folder)) {
      (void)entry;
      ++files;
    }
    EXPECT_EQ(files, saved.shards().size() + 1) << folder << ": leftovers";
  }
  EXPECT_EQ(st::ShardedOpen((dir.path() / "out").string()).metadata().count("total_size"), 1u);
  // The tied module's set loads, strictly, with the tie kept in both modes.
  for (st::LoadMode mode : {st::LoadMode::Copy, st::LoadMode::ZeroCopy}) {
    auto module = make_module(model_tensors());
    auto head = module->register_module("head", std::make_shared<torch::nn::Module>());
    head->register_parameter("weight", module->named_parameters()["embed.weight"]);
    const st::LoadReport report =
        st::load_state_dict(*module, (dir.path() / "module-out").string(), st::StateDictLoadOptions().mode(mode));
    EXPECT_TRUE(report.ok()) << report.describe();
    const auto params = module->named_parameters();
    EXPECT_TRUE(bitwise_equal(params["head.weight"], model_tensors()[0].second));
    EXPECT_EQ(params["head.weight"].data_ptr(), params["embed.weight"].data_ptr());
  }
}

TEST_P(Ranks, ASaveThatOneRankCannotMakeFailsEveryRankAndKeepsThePreviousCheckpoint) {
  TempDir dir;
  write_model(dir.path());
  fs::create_directories(dir.path() / "out");
  st::save_sharded(model_tensors(), (dir.path() / "out").string(), std::nullopt,
                   st::ShardedSaveOptions().max_shard_size(100'000).fsync(false));
  std::map<std::string, std::string> before;
  for (const auto& entry : fs::directory_iterator(dir.path() / "out"))
    before[entry.path().filename().string()] = st::test::read_bytes(entry.path().string());
  for (const std::string scenario : {"save-mismatch", "save-progress-throws"}) {
    run_ranks(scenario, GetParam(), dir.path());
    std::map<std::string, std::string> after;
    for (const auto& entry : fs::directory_iterator(dir.path() / "out"))
      after[entry.path().filename().string()] = st::test::read_bytes(entry.path().string());
    EXPECT_EQ(before, after) << scenario;
  }
}

INSTANTIATE_TEST_SUITE_P(Gloo, Ranks, ::testing::Values(2, 4),
                         [](const auto& info) { return std::to_string(info.param) + "Ranks"; });

}  // namespace

int main(int argc, char** argv) {
  if (argc == 7 && std::string(argv[1]) == "--worker") {
    try {
      return worker(argv[2], std::stoi(argv[3]), std::stoi(argv[4]), std::stoi(argv[5]), argv[6]);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %s: %s\n", argv[3], e.what());
      return 1;
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
