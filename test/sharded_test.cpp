// Sharded checkpoints: packing, the index, lazy access over the shards, every
// inconsistency a loader must refuse, and crash-safety of a whole set.


#include <torch/torch.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "safetensors/load.hpp"
#include "safetensors/module.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

using test::error_code_of;
using test::read_bytes;
using test::TempDir;
using test::write_bytes;

const std::string kFluxml = std::string(SAFETENSORS_TEST_DATA_DIR) + "/vectors/fluxml_sharded";

// Ten F32 tensors of 10 floats (40 bytes) each, named t0..t9.
NamedTensors ten_tensors() {
  NamedTensors out;
  for (int i = 0; i < 10; ++i) out.add("t" + std::to_string(i), torch::full({10}, static_cast<float>(i)));
  return out;
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_bytes(path)); }

// Writes an index over the given weight map.
void write_index(const TempDir& dir, const nlohmann::json& weight_map) {
  write_bytes(dir.file(std::string(kIndexFileName)),
              nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump());
}

TEST(ShardedSave, PacksGreedilyInKeyOrderAndWritesTheIndex) {
  TempDir dir;
  auto files = save_sharded(ten_tensors(), dir.path().string(), Metadata{{"k", "v"}},
                            ShardedSaveOptions().max_shard_size(100));
  const std::vector<std::string> expected = {
      "model-00001-of-00005.safetensors", "model-00002-of-00005.safetensors",
      "model-00003-of-00005.safetensors", "model-00004-of-00005.safetensors",
      "model-00005-of-00005.safetensors", std::string(kIndexFileName)};
  EXPECT_EQ(files, expected);
  std::vector<std::string> entries = expected;
  std::sort(entries.begin(), entries.end());
  EXPECT_EQ(dir.entries(), entries);  // no temporary file left

  nlohmann::json index = read_json(dir.file(std::string(kIndexFileName)));
  EXPECT_EQ(index["metadata"]["total_size"], 400);
  EXPECT_EQ(index["weight_map"]["t0"], "model-00001-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["t1"], "model-00001-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["t2"], "model-00002-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["t9"], "model-00005-of-00005.safetensors");
  const std::string set_id = index["metadata"][std::string(kShardSetKey)];
  for (int i = 0; i < 5; ++i) {
    SafeOpen shard(dir.file(expected[i]));
    EXPECT_EQ(shard.keys(), (std::vector<std::string>{"t" + std::to_string(2 * i), "t" + std::to_string(2 * i + 1)}));
    EXPECT_EQ(shard.metadata(), (Metadata{{"format", "pt"}, {"k", "v"}, {std::string(kShardSetKey), set_id}}));
  }
}

TEST(ShardedSave, ReportsProgressOverEveryShard) {
  TempDir dir;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
  save_sharded(ten_tensors(), dir.path().string(), std::nullopt,
               ShardedSaveOptions().max_shard_size(100).progress(
                   [&](std::uint64_t done, std::uint64_t total) { calls.emplace_back(done, total); }));
  ASSERT_EQ(calls.size(), 10u);  // one call per tensor, across the 5 shards
  for (std::size_t i = 0; i < calls.size(); ++i)
    EXPECT_EQ(calls[i], (std::pair<std::uint64_t, std::uint64_t>{40 * (i + 1), 400})) << i;
}

TEST(ShardedSave, ATensorLargerThanTheLimitSitsAlone) {
  TempDir dir;
  NamedTensors tensors;
  tensors.add("a", torch::zeros({10})).add("big", torch::zeros({50})).add("c", torch::zeros({10})).add("d", torch::zeros({10}));
  save_sharded(tensors, dir.path().string(), std::nullopt, ShardedSaveOptions().max_shard_size(100));
  ShardIndex index = read_index(dir.file(std::string(kIndexFileName)));
  EXPECT_EQ(index.total_size, 320u);
  EXPECT_EQ(index.weight_map, (std::map<std::string, std::string>{{"a", "model-00001-of-00003.safetensors"},
                                                                  {"big", "model-00002-of-00003.safetensors"},
                                                                  {"c", "model-00003-of-00003.safetensors"},
                                                                  {"d", "model-00003-of-00003.safetensors"}}));
}

TEST(ShardedSave, OneShardIsModelSafetensorsWithoutAnIndex) {
  TempDir dir;
  save_sharded(ten_tensors(), dir.path().string(), std::nullopt, ShardedSaveOptions().max_shard_size(100));
  auto files = save_sharded(ten_tensors(), dir.path().string());  // 5 GB: one shard
  EXPECT_EQ(files, std::vector<std::string>{std::string(kSingleFileName)});
  EXPECT_FALSE(std::filesystem::exists(dir.file(std::string(kIndexFileName))));  // the stale one is gone
  EXPECT_EQ(SafeOpen(dir.file(std::string(kSingleFileName))).metadata(), (Metadata{{"format", "pt"}}));
  ShardedOpen opened(dir.path().string());
  EXPECT_EQ(opened.index(), nullptr);
  EXPECT_EQ(opened.size(), 10u);
}

TEST(ShardedSave, RefusesTensorsThatShareMemory) {
  TempDir dir;
  torch::Tensor w = torch::ones({4});
  EXPECT_EQ(error_code_of([&] { save_sharded({{"a", w}, {"b", w}}, dir.path().string()); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] {
              save_sharded(ten_tensors(), dir.path().string(), std::nullopt, ShardedSaveOptions().max_shard_size(0));
            }),
            ErrorCode::InvalidArgument);
  EXPECT_TRUE(dir.entries().empty());
}

TEST(ShardedOpen, ReadsASavedSetLazilyLikeSafeOpen) {
  TempDir dir;
  save_sharded(ten_tensors(), dir.path().string(), std::nullopt, ShardedSaveOptions().max_shard_size(100));
  for (const std::string& path : {dir.path().string(), dir.file(std::string(kIndexFileName))}) {
    ShardedOpen ckpt(path);
    ASSERT_NE(ckpt.index(), nullptr);
    EXPECT_EQ(ckpt.shards().size(), 5u);
    EXPECT_EQ(ckpt.size(), 10u);
    EXPECT_EQ(ckpt.keys().front(), "t0");
    EXPECT_EQ(ckpt.metadata().at("total_size"), "400");
    EXPECT_TRUE(ckpt.contains("t7"));
    EXPECT_EQ(ckpt.info("t7").shape, std::vector<std::uint64_t>{10});
    EXPECT_EQ(ckpt.shard_of("t7").path(), dir.file("model-00004-of-00005.safetensors"));
    EXPECT_TRUE(torch::equal(ckpt.get_tensor("t7"), torch::full({10}, 7.0f)));
    EXPECT_TRUE(torch::equal(ckpt.get_slice("t3")({torch::indexing::Slice(0, 2)}), torch::full({2}, 3.0f)));
    EXPECT_EQ(ckpt.tensors().size(), 10u);
    EXPECT_EQ(error_code_of([&] { ckpt.get_tensor("nope"); }), ErrorCode::TensorNotFound);
  }
}

TEST(ShardedOpen, ReadsTheFluxmlSetAsItsUnshardedTwin) {
  ShardedOpen ckpt(kFluxml, LoadOptions().unsupported_as_bytes(true));
  EXPECT_EQ(ckpt.shards().size(), 6u);
  EXPECT_EQ(ckpt.size(), 36u);
  EXPECT_EQ(ckpt.index()->total_size, 4305u);
  SafeOpen twin(std::string(SAFETENSORS_TEST_DATA_DIR) + "/vectors/fluxml_non_sharded_model.safetensors",
                LoadOptions().unsupported_as_bytes(true));
  std::size_t compared = 0;
  for (const std::string& name : ckpt.keys()) {
    if (!twin.contains(name)) continue;
    EXPECT_TRUE(test::bitwise_equal(ckpt.get_tensor(name), twin.get_tensor(name))) << name;
    ++compared;
  }
  EXPECT_EQ(compared, twin.size());
}

TEST(ShardedOpen, OpensOnlyTheShardsTheIndexLists) {
  TempDir dir;
  for (const auto& entry : std::filesystem::directory_iterator(kFluxml))
    std::filesystem::copy(entry.path(), dir.path() / entry.path().filename());
  write_bytes(dir.file("model-00007-of-00006.safetensors"), "not a safetensors file");
  EXPECT_EQ(ShardedOpen(dir.path().string(), LoadOptions().unsupported_as_bytes(true)).shards().size(), 6u);
}

TEST(ShardIndex, RefusesShardNamesOutsideTheFolder) {
  for (const std::string bad : {"/etc/model.safetensors", "C:model.safetensors", "../model.safetensors",
                                "a/../../model.safetensors", "model.bin", ".safetensors",
                                "a\\model.safetensors"}) {
    const std::string json = nlohmann::json{{"weight_map", {{"w", bad}}}}.dump();
    EXPECT_EQ(error_code_of([&] { parse_index(json); }), ErrorCode::InvalidIndex) << bad;
  }
  EXPECT_NO_THROW(parse_index(R"({"weight_map": {"w": "sub/model-1.safetensors"}})"));
  for (const std::string bad : {"[]", "{", R"({"metadata": {}})", R"({"weight_map": {"w": 1}})",
                                R"({"weight_map": {}, "metadata": {"total_size": -1}})"})
    EXPECT_EQ(error_code_of([&] { parse_index(bad); }), ErrorCode::InvalidIndex) << bad;
}

TEST(ShardIndex, TotalSizeMayBeAWholeFloatThatFits) {
  EXPECT_EQ(parse_index(R"({"weight_map": {}, "metadata": {"total_size": 4305.0}})").total_size, 4305u);
  EXPECT_EQ(parse_index(R"({"weight_map": {}, "metadata": {"total_size": 1e19}})").total_size,
            10'000'000'000'000'000'000u);
  // Converting these to an integer would be undefined behaviour.
  for (const std::string bad : {"1.5", "-0.5", "18446744073709551616.0", "1e20", "1e300"})
    EXPECT_EQ(error_code_of([&] {
                parse_index(R"({"weight_map": {}, "metadata": {"total_size": )" + bad + "}}");
              }),
              ErrorCode::InvalidIndex)
        << bad;
}

TEST(ShardedOpen, RefusesASetThatDisagreesWithItsIndex) {
  TempDir dir;
  save_file({{"a", torch::ones({1})}}, dir.file("one.safetensors"));
  save_file({{"b", torch::ones({1})}, {"a", torch::ones({1})}}, dir.file("two.safetensors"));
  const std::string path = dir.path().string();
  write_index(dir, {{"a", "two.safetensors"}, {"b", "two.safetensors"}, {"x", "one.safetensors"}});
  EXPECT_EQ(error_code_of([&] { ShardedOpen{path}; }), ErrorCode::InvalidIndex);  // a: in another shard
  write_index(dir, {{"a", "one.safetensors"}, {"b", "two.safetensors"}});
  EXPECT_EQ(error_code_of([&] { ShardedOpen{path}; }), ErrorCode::InvalidIndex);  // a: in two shards
  write_index(dir, {{"b", "two.safetensors"}});
  EXPECT_EQ(error_code_of([&] { ShardedOpen{path}; }), ErrorCode::InvalidIndex);  // a: not listed
  save_file({{"b", torch::ones({1})}}, dir.file("two.safetensors"));
  write_index(dir, {{"a", "one.safetensors"}, {"b", "two.safetensors"}, {"c", "two.safetensors"}});
  EXPECT_EQ(error_code_of([&] { ShardedOpen{path}; }), ErrorCode::InvalidIndex);  // c: listed, absent
  write_index(dir, {{"a", "one.safetensors"}, {"b", "two.safetensors"}});
  EXPECT_EQ(ShardedOpen(path).size(), 2u);
  write_index(dir, {{"a", "missing.safetensors"}});
  EXPECT_EQ(error_code_of([&] { ShardedOpen{path}; }), ErrorCode::Io);
  TempDir empty;
  EXPECT_EQ(error_code_of([&] { ShardedOpen{empty.path().string()}; }), ErrorCode::Io);
}

TEST(ShardedOpen, RefusesASetMixedFromTwoSaves) {
  TempDir a, b;
  NamedTensors other;
  for (int i = 0; i < 10; ++i) other.add("t" + std::to_string(i), torch::zeros({10}));
  save_sharded(ten_tensors(), a.path().string(), std::nullopt, ShardedSaveOptions().max_shard_size(100));
  save_sharded(other, b.path().string(), std::nullopt, ShardedSaveOptions().max_shard_size(100));
  std::filesystem::copy_file(b.file("model-00002-of-00005.safetensors"), a.file("model-00002-of-00005.safetensors"),
                             std::filesystem::copy_options::overwrite_existing);
  std::string message;
  try {
    ShardedOpen{a.path().string()};
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidIndex);
    message = e.what();
  }
  EXPECT_NE(message.find("another save"), std::string::npos) << message;
}

// A failure in the middle of a save leaves the previous set as it was, and nothing else.
TEST(ShardedSave, AFailureWhileWritingLeavesThePreviousSet) {
  TempDir dir;
  const std::string folder = dir.path().string();
  save_sharded(ten_tensors(), folder, std::nullopt, ShardedSaveOptions().max_shard_size(100));
  const auto entries = dir.entries();
  const std::string index = read_bytes(dir.file(std::string(kIndexFileName)));
  const std::string last = read_bytes(dir.file("model-00005-of-00005.safetensors"));

  NamedTensors bad = ten_tensors();
  bad.add("z_undefined", torch::Tensor());  // packed in the last shard
  EXPECT_EQ(error_code_of([&] { save_sharded(bad, folder, std::nullopt, ShardedSaveOptions().max_shard_size(100)); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(dir.entries(), entries);
  EXPECT_EQ(read_bytes(dir.file(std::string(kIndexFileName))), index);

  // A write that fails with the disk "full" (RLIMIT_FSIZE) in the third shard.
  NamedTensors large;
  for (int i = 0; i < 4; ++i) large.add("t" + std::to_string(i), torch::zeros({i < 2 ? 1000 : 100000}));
  {
    test::FileSizeLimit limit(64 * 1024);
    EXPECT_EQ(error_code_of([&] {
                save_sharded(large, folder, std::nullopt,
                             ShardedSaveOptions().max_shard_size(5000).fsync(false));
              }),
              ErrorCode::Io);
  }
  EXPECT_EQ(dir.entries(), entries);
  EXPECT_EQ(read_bytes(dir.file(std::string(kIndexFileName))), index);
  EXPECT_EQ(read_bytes(dir.file("model-00005-of-00005.safetensors")), last);
  EXPECT_EQ(ShardedOpen(folder).size(), 10u);
}

// A real full filesystem (a 1 MiB tmpfs) in the middle of a set: the previous
// set stays whole and loadable, no staged shard is left, and the set saves
// once there is room.
TEST(ShardedSave, AFullDiskLeavesThePreviousSet) {
  TempDir dir;
  const std::optional<std::string> skipped =
      test::with_small_filesystem(dir.path().string(), 1 << 20, [](test::SmallFilesystem& disk) {
        NamedTensors old_set;  // 4 shards of 100 kB
        for (int i = 0; i < 4; ++i) old_set.add("t" + std::to_string(i), torch::full({25000}, static_cast<float>(i)));
        save_sharded(old_set, disk.folder(), std::nullopt, ShardedSaveOptions().max_shard_size(100000));
        const auto entries = disk.entries();
        const std::string index = read_bytes(disk.file(std::string(kIndexFileName)));
        NamedTensors new_set;  // 8 shards of 100 kB: the seventh finds the disk full
        for (int i = 0; i < 8; ++i) new_set.add("t" + std::to_string(i), torch::full({25000}, -1.0f * i));
        try {
          save_sharded(new_set, disk.folder(), std::nullopt, ShardedSaveOptions().max_shard_size(100000));
          disk.expect(false, "a set that cannot fit was saved");
        } catch (const Error& e) {
          const std::string what = e.what();
          disk.expect(e.code() == ErrorCode::Io, "code is not Io: " + what);
          disk.expect(what.find("No space left on device") != std::string::npos, "no reason given: " + what);
        }
        disk.expect(disk.entries() == entries, "the folder's files changed");
        disk.expect(read_bytes(disk.file(std::string(kIndexFileName))) == index, "the index changed");
        {
          ShardedOpen reopened(disk.folder());
          disk.expect(reopened.size() == 4, "the previous set lost tensors");
          for (int i = 0; i < 4; ++i)
            disk.expect(torch::equal(reopened.get_tensor("t" + std::to_string(i)),
                                     old_set.items()[static_cast<std::size_t>(i)].tensor),
                        "t" + std::to_string(i) + " changed");
        }  // closed: a mapped file keeps its space after removal
        // Make room by removing the old set: the new one saves.
        for (const std::string& name : entries) std::filesystem::remove(disk.file(name));
        save_sharded(new_set, disk.folder(), std::nullopt, ShardedSaveOptions().max_shard_size(100000));
        disk.expect(ShardedOpen(disk.folder()).size() == 8, "the save after freeing room failed");
      });
  if (skipped) GTEST_SKIP() << *skipped;
}

// The name a save gives a shard it is still writing: the writer's pid, then its set id.
std::string staged_shard_name(const std::string& shard, long pid) {
  return "." + shard + "." + std::to_string(pid) + ".0123456789abcdef0123456789abcdef.partial";
}

// A save killed while writing leaves staged shards; the next save removes
// those of dead writers and keeps those of a writer that still runs.
TEST(ShardedSave, RemovesOnlyTheStagedShardsOfDeadWriters) {
  TempDir dir;
  const std::string dead = staged_shard_name("model-00001-of-00002.safetensors", 99999999);  // no such pid
  const std::string live = staged_shard_name("model-00002-of-00002.safetensors", ::getpid());
  for (const std::string& name : {dead, live, std::string(".notes.partial")}) write_bytes(dir.file(name), "x");
  save_sharded(ten_tensors(), dir.path().string(), std::nullopt, ShardedSaveOptions().max_shard_size(200));
  const std::vector<std::string> expected = {live,
                                             ".notes.partial",
                                             "model-00001-of-00002.safetensors",
                                             "model-00002-of-00002.safetensors",
                                             std::string(kIndexFileName)};
  EXPECT_EQ(dir.entries(), expected);
}

// Shards of an earlier save with another count are removed once the new set is
// in place; files the previous index did not list stay.
TEST(ShardedSave, RemovesTheShardsOfTheSetItReplaces) {
  TempDir dir;
  const std::string folder = dir.path().string();
  save_sharded(ten_tensors(), folder, std::nullopt, ShardedSaveOptions().max_shard_size(100));  // 5 shards
  write_bytes(dir.file("model-00009-of-00009.safetensors"), "not listed");
  write_bytes(dir.file("notes.txt"), "mine");
  auto files = save_sharded(ten_tensors(), folder, std::nullopt, ShardedSaveOptions().max_shard_size(160));
  ASSERT_EQ(files.size(), 4u);  // 3 shards and the index
  std::vector<std::string> expected = files;
  expected.insert(expected.end(), {"model-00009-of-00009.safetensors", "notes.txt"});
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(dir.entries(), expected);
  EXPECT_EQ(ShardedOpen(folder).size(), 10u);

  // A single file replacing the set: its shards and its index go.
  save_sharded(ten_tensors(), folder);
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"model-00009-of-00009.safetensors",
                                                     std::string(kSingleFileName), "notes.txt"}));
}

TEST(ShardedSave, RemovesTheSingleFileASetReplaces) {
  TempDir dir;
  const std::string folder = dir.path().string();
  save_sharded(ten_tensors(), folder);  // model.safetensors
  auto files = save_sharded(ten_tensors(), folder, std::nullopt, ShardedSaveOptions().max_shard_size(200));
  std::sort(files.begin(), files.end());
  EXPECT_EQ(dir.entries(), files);

  // Next to an index, model.safetensors was not the checkpoint: it stays.
  save_file(ten_tensors(), dir.file(std::string(kSingleFileName)));
  save_sharded(ten_tensors(), folder, std::nullopt, ShardedSaveOptions().max_shard_size(100));
  EXPECT_TRUE(std::filesystem::exists(dir.file(std::string(kSingleFileName))));
}

struct TwoLayersImpl : torch::nn::Module {
  TwoLayersImpl()
      : a(register_module("a", torch::nn::Linear(8, 8))), b(register_module("b", torch::nn::Linear(8, 8))) {}
  torch::nn::Linear a, b;
};
TORCH_MODULE(TwoLayers);

TEST(ShardedStateDict, RoundTripsAModuleThroughShards) {
  TempDir dir;
  TwoLayers saved, loaded;
  save_state_dict(*saved, dir.path().string(), std::nullopt, StateDictSaveOptions().max_shard_size(300));
  EXPECT_EQ(ShardedOpen(dir.path().string()).shards().size(), 2u);
  LoadReport r = load_state_dict(*loaded, dir.path().string());
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_TRUE(torch::equal(loaded->b->weight, saved->b->weight));
  EXPECT_TRUE(torch::equal(loaded->a->bias, saved->a->bias));
  ShardedOpen ckpt(dir.file(std::string(kIndexFileName)));
  TwoLayers viewed;
  load_state_dict(*viewed, ckpt, StateDictLoadOptions().mode(LoadMode::ZeroCopy));
  EXPECT_EQ(viewed->b->weight.data_ptr(), ckpt.get_tensor("b.weight").data_ptr());
}

// An embedding and an output layer sharing one weight, with a layer between
// them so that a small shard size makes several shards.
struct TiedHeadImpl : torch::nn::Module {
  explicit TiedHeadImpl(const torch::Tensor& w) : weight(register_parameter("weight", w)) {}
  torch::Tensor weight;
};
TORCH_MODULE(TiedHead);

struct TiedImpl : torch::nn::Module {
  explicit TiedImpl(bool tie = true)
      : embed(register_module("embed", torch::nn::Embedding(16, 8))),
        mid(register_module("mid", torch::nn::Linear(8, 8))),
        head(register_module("head", TiedHead(tie ? embed->weight : torch::zeros({16, 8})))) {}
  torch::nn::Embedding embed;
  torch::nn::Linear mid;
  TiedHead head;
};
TORCH_MODULE(Tied);

// Every shard of a set records the aliases, and they count once per set:
// strict and non-strict loads fill the tie, which stays one memory in both
// modes, and a module without the tie gets the alias in its own memory.
TEST(ShardedStateDict, TiedWeightsSavedAsShardsLoadInBothModesStrictOrNot) {
  TempDir dir;
  Tied saved;
  save_state_dict(*saved, dir.path().string(), std::nullopt, StateDictSaveOptions().max_shard_size(300));
  const ShardedOpen set(dir.path().string());
  ASSERT_GE(set.shards().size(), 2u);
  EXPECT_FALSE(set.contains("head.weight"));
  for (LoadMode mode : {LoadMode::Copy, LoadMode::ZeroCopy}) {
    for (bool strict : {true, false}) {
      Tied tied;
      LoadReport r = load_state_dict(*tied, set, StateDictLoadOptions().mode(mode).strict(strict));
      EXPECT_TRUE(r.ok()) << r.describe();
      EXPECT_EQ(r.loaded_keys.size(), 4u);
      EXPECT_TRUE(torch::equal(tied->head->weight, saved->embed->weight));
      EXPECT_TRUE(torch::equal(tied->mid->weight, saved->mid->weight));
      EXPECT_EQ(tied->head->weight.data_ptr(), tied->embed->weight.data_ptr()) << "the tie was broken";
      if (mode == LoadMode::ZeroCopy) EXPECT_EQ(tied->head->weight.data_ptr(), set.get_tensor("embed.weight").data_ptr());

      Tied untied(/*tie=*/false);
      r = load_state_dict(*untied, dir.path().string(), StateDictLoadOptions().mode(mode).strict(strict));
      EXPECT_TRUE(r.ok()) << r.describe();
      EXPECT_TRUE(torch::equal(untied->head->weight, saved->embed->weight));
      EXPECT_NE(untied->head->weight.data_ptr(), untied->embed->weight.data_ptr());
    }
  }
}

// Writes `tensors` as a set in the style of Hugging Face's tools: shards with
// the metadata {"format": "pt"} only, and an index with `index_metadata`
// beside total_size.
void write_foreign_set(const TempDir& dir, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const nlohmann::json& index_metadata) {
  nlohmann::json weight_map = nlohmann::json::object(), metadata = index_metadata;
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const std::string shard = "model-0000" + std::to_string(i + 1) + "-of-0000" + std::to_string(tensors.size()) +
                              ".safetensors";
    save_file({tensors[i]}, dir.file(shard), Metadata{{"format", "pt"}});
    weight_map[tensors[i].first] = shard;
    total += tensors[i].second.nbytes();
  }
  metadata["total_size"] = total;
  write_bytes(dir.file(std::string(kIndexFileName)),
              nlohmann::json{{"metadata", metadata}, {"weight_map", weight_map}}.dump());
}

// transformers records no alias (the tie is the module's); huggingface_hub's
// save_torch_state_dict records them in the index's metadata only.
TEST(ShardedStateDict, SetsOfOtherWritersLoadWithTheirTies) {
  Tied saved;
  const std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"embed.weight", saved->embed->weight.detach()},
      {"mid.bias", saved->mid->bias.detach()},
      {"mid.weight", saved->mid->weight.detach()}};
  for (LoadMode mode : {LoadMode::Copy, LoadMode::ZeroCopy}) {
    TempDir transformers;
    write_foreign_set(transformers, tensors, nlohmann::json::object());
    Tied tied;
    LoadReport r = load_state_dict(*tied, transformers.path().string(), StateDictLoadOptions().mode(mode));
    EXPECT_TRUE(r.ok()) << r.describe();
    EXPECT_TRUE(torch::equal(tied->head->weight, saved->embed->weight));
    EXPECT_EQ(tied->head->weight.data_ptr(), tied->embed->weight.data_ptr());

    TempDir hub;
    write_foreign_set(hub, tensors, {{"head.weight", "embed.weight"}});
    Tied untied(/*tie=*/false);
    r = load_state_dict(*untied, hub.path().string(), StateDictLoadOptions().mode(mode));
    EXPECT_TRUE(r.ok()) << r.describe();
    EXPECT_TRUE(torch::equal(untied->head->weight, saved->embed->weight));
  }
}

// One name recorded as the alias of two different tensors is ambiguous.
TEST(ShardedStateDict, AnAliasRecordedForTwoTensorsIsRefused) {
  TempDir dir;
  Tied saved;
  write_foreign_set(dir, {{"embed.weight", saved->embed->weight.detach()},
                          {"mid.bias", saved->mid->bias.detach()},
                          {"mid.weight", saved->mid->weight.detach()}},
                    {{"head.weight", "embed.weight"}});
  save_file({{"mid.weight", saved->mid->weight.detach()}}, dir.file("model-00003-of-00003.safetensors"),
            Metadata{{"format", "pt"}, {"head.weight", "mid.weight"}});
  Tied untied(/*tie=*/false);
  try {
    load_state_dict(*untied, dir.path().string(), StateDictLoadOptions().strict(false));
    FAIL() << "an ambiguous alias was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidIndex);
    EXPECT_EQ(e.tensor(), "head.weight");
    const std::string what = e.what();
    EXPECT_NE(what.find("'embed.weight'"), std::string::npos) << what;
    EXPECT_NE(what.find("'mid.weight'"), std::string::npos) << what;
    EXPECT_NE(what.find("model-00003-of-00003.safetensors"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace safetensors
