// Sharded checkpoints: packing, the index, lazy access over the shards, every
// inconsistency a loader must refuse, and crash-safety of a whole set.


#include <algorithm>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <set>
#include <thread>

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

// An index nested far deeper than any real one (its metadata values are kept
// as JSON text, which is written recursively) is refused, not followed until
// the stack runs out; so is a save's look at such an old index.
TEST(ShardIndex, NestedTooDeeplyIsRefused) {
  TempDir dir;
  save_file(ten_tensors(), dir.file("model.safetensors"));
  nlohmann::json weight_map;
  for (int i = 0; i < 10; ++i) weight_map["t" + std::to_string(i)] = "model.safetensors";
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const std::string text = R"({"metadata": {"deep": )" + deep + R"(}, "weight_map": )" + weight_map.dump() + "}";
  write_bytes(dir.file(std::string(kIndexFileName)), text);
  EXPECT_EQ(error_code_of([&] { ShardedOpen set(dir.path().string()); }), ErrorCode::InvalidIndex);
  // A level below the bound is read, its value kept as JSON text.
  const std::string fine = std::string(500, '[') + std::string(500, ']');
  write_bytes(dir.file(std::string(kIndexFileName)),
              R"({"metadata": {"deep": )" + fine + R"(}, "weight_map": )" + weight_map.dump() + "}");
  EXPECT_EQ(ShardedOpen(dir.path().string()).size(), 10u);
  // A save into the folder of the deep index replaces it.
  write_bytes(dir.file(std::string(kIndexFileName)), text);
  save_sharded(ten_tensors(), dir.path().string(), std::nullopt, ShardedSaveOptions().max_shard_size(200));
  EXPECT_EQ(ShardedOpen(dir.path().string()).size(), 10u);
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
  // Put in place through the set's switch, the file carries the save's shard_set.
  Metadata meta = SafeOpen(dir.file(std::string(kSingleFileName))).metadata();
  EXPECT_EQ(meta.erase(std::string(kShardSetKey)), 1u);
  EXPECT_EQ(meta, (Metadata{{"format", "pt"}}));
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
  const ShardedOpen set(dir.path().string(), LoadOptions().unsupported_as_bytes(true));
  EXPECT_EQ(set.shards().size(), 6u);
}

TEST(ShardedSave, AnIndexThatSpellsNamesWithADotSlashIsReplacedWhole) {
  TempDir dir;
  save_file({{"a", torch::full({20}, 1.0f)}}, dir.file("model-00001-of-00002.safetensors"));
  save_file({{"b", torch::full({20}, 2.0f)}}, dir.file("model-00002-of-00002.safetensors"));
  write_bytes(dir.file("model.safetensors.index.json"),
              R"({"metadata": {}, "weight_map": {"a": "./model-00001-of-00002.safetensors",
                                                 "b": "./model-00002-of-00002.safetensors"}})");
  EXPECT_EQ(parse_index(read_bytes(dir.file("model.safetensors.index.json"))).weight_map.at("a"),
            "model-00001-of-00002.safetensors");
  save_sharded(NamedTensors().add("a", torch::full({20}, 3.0f)).add("b", torch::full({20}, 4.0f)),
               dir.path().string(), std::nullopt, ShardedSaveOptions().max_shard_size(80).fsync(false));
  ShardedOpen set(dir.path().string());
  EXPECT_TRUE(torch::equal(set.get_tensor("a"), torch::full({20}, 3.0f)));
  EXPECT_TRUE(torch::equal(set.get_tensor("b"), torch::full({20}, 4.0f)));
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

// An index is a regular file of at most kMaxIndexSize bytes: a FIFO is
// refused without waiting for a writer, a device without reading it, and an
// oversized file before it is read; a save over such a folder still works.
TEST(ShardIndex, IsARegularFileOfBoundedSize) {
  TempDir dir;
  const std::string index = dir.file(std::string(kIndexFileName));
  ASSERT_EQ(::mkfifo(index.c_str(), 0600), 0);
  EXPECT_EQ(error_code_of([&] { read_index(index); }), ErrorCode::InvalidIndex);
  EXPECT_EQ(error_code_of([&] { ShardedOpen{dir.path().string()}; }), ErrorCode::InvalidIndex);
  save_sharded({{"a", torch::zeros({4})}}, dir.path().string(), std::nullopt,
               ShardedSaveOptions().max_shard_size(1 << 20).fsync(false));
  EXPECT_TRUE(torch::equal(ShardedOpen(dir.path().string()).get_tensor("a"), torch::zeros({4})));

  TempDir zero;
  const std::string link = zero.file(std::string(kIndexFileName));
  ASSERT_EQ(::symlink("/dev/zero", link.c_str()), 0);
  EXPECT_EQ(error_code_of([&] { read_index(link); }), ErrorCode::InvalidIndex);

  TempDir big;
  const std::string sparse = big.file(std::string(kIndexFileName));
  ASSERT_EQ(::truncate((write_index(big, nlohmann::json::object()), sparse.c_str()), kMaxIndexSize + 1), 0);
  EXPECT_EQ(error_code_of([&] { read_index(sparse); }), ErrorCode::InvalidIndex);
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
  // A shard the index lists but the folder lacks: an invalid set, not an I/O error.
  write_index(dir, {{"a", "missing.safetensors"}});
  EXPECT_EQ(error_code_of([&] { ShardedOpen{path}; }), ErrorCode::InvalidIndex);
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

// The name a save gives a shard it has staged: hidden, with the save's set id.
std::string staged_shard_name(const std::string& shard, const std::string& set_id) {
  return "." + shard.substr(0, shard.size() - std::string(".safetensors").size()) + "." + set_id + ".safetensors";
}

// The lock a writer of save `set_id` holds while it stages shards.
std::string writer_lock_name(const std::string& set_id, const std::string& token) {
  return ".saving-" + set_id + "-" + token + ".lock";
}

// A save killed while writing leaves staged shards and its lock; the next save
// removes the staged shards of saves whose writers hold no lock (or have none),
// and keeps those of a writer that holds its lock and every other file.
TEST(ShardedSave, RemovesOnlyTheStagedShardsOfDeadWriters) {
  TempDir dir;
  const std::string dead_set = "0123456789abcdef0123456789abcdef", live_set = "fedcba9876543210fedcba9876543210";
  const std::string dead = staged_shard_name("model-00001-of-00002.safetensors", dead_set);
  const std::string dead_lock = writer_lock_name(dead_set, "0123456789abcdef");
  const std::string orphan = staged_shard_name("model-00002-of-00002.safetensors", std::string(32, '0'));
  const std::string live = staged_shard_name("model-00002-of-00002.safetensors", live_set);
  const std::string live_lock = writer_lock_name(live_set, "00000000000000aa");
  const std::string other = ".model-00001-of-00002.notes.safetensors";
  for (const std::string& name : {dead, dead_lock, orphan, live, live_lock, other, std::string(".notes.partial")})
    write_bytes(dir.file(name), "x");
  test::HeldLock writer(dir.file(live_lock));
  save_sharded(ten_tensors(), dir.path().string(), std::nullopt, ShardedSaveOptions().max_shard_size(200));
  std::vector<std::string> expected = {live,
                                       live_lock,
                                       other,
                                       ".notes.partial",
                                       "model-00001-of-00002.safetensors",
                                       "model-00002-of-00002.safetensors",
                                       std::string(kIndexFileName)};
  std::sort(expected.begin(), expected.end());
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
  const ShardedOpen set(dir.path().string());
  EXPECT_EQ(set.shards().size(), 2u);
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
      if (mode == LoadMode::ZeroCopy) {
        EXPECT_EQ(tied->head->weight.data_ptr(), set.get_tensor("embed.weight").data_ptr());
      }

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

// ---------------------------------------------------------------- overwriting a set in place

// A set as the Hugging Face tools write it: shards with {"format": "pt"}, and an
// index whose metadata holds only total_size (no shard_set). Every tensor holds
// `value`; two tensors of 10 floats per shard, named as save_sharded names them.
std::string test_shard_name(int i, int shards) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i + 1, shards);
  return name;
}

void write_hub_style_set(const std::string& folder, int shards, float value) {
  nlohmann::json weight_map;
  for (int s = 0; s < shards; ++s) {
    const std::string name = test_shard_name(s, shards);
    NamedTensors shard;
    for (int k = 0; k < 2; ++k) {
      const std::string tensor = "t" + std::to_string(2 * s + k);
      shard.add(tensor, torch::full({10}, value));
      weight_map[tensor] = name;
    }
    save_file(shard, folder + "/" + name, Metadata{{"format", "pt"}}, SaveOptions().fsync(false));
  }
  write_bytes(folder + "/" + std::string(kIndexFileName),
              nlohmann::json{{"metadata", {{"total_size", shards * 80}}}, {"weight_map", weight_map}}.dump(2));
}

NamedTensors filled_set(int shards, float value) {
  NamedTensors out;
  for (int i = 0; i < 2 * shards; ++i) out.add("t" + std::to_string(i), torch::full({10}, value));
  return out;
}

// What a folder loads as: every tensor old (0), every tensor new (1), a refusal, or a mix.
enum class Loaded { Old, New, Refused, Mixed };
Loaded classify(const std::string& folder, int tensors, std::string& detail) {
  try {
    ShardedOpen ckpt(folder);
    if (ckpt.size() != static_cast<std::size_t>(tensors)) {
      detail = std::to_string(ckpt.size()) + " tensors";
      return Loaded::Mixed;
    }
    int old_values = 0, new_values = 0;
    for (int i = 0; i < tensors; ++i) {
      const torch::Tensor t = ckpt.get_tensor("t" + std::to_string(i));
      if (torch::equal(t, torch::zeros({10}))) {
        ++old_values;
      } else if (torch::equal(t, torch::ones({10}))) {
        ++new_values;
      } else {
        detail += " t" + std::to_string(i) + " is neither";
      }
    }
    if (old_values == tensors) return Loaded::Old;
    if (new_values == tensors) return Loaded::New;
    detail += std::to_string(old_values) + " old and " + std::to_string(new_values) + " new tensors";
    return Loaded::Mixed;
  } catch (const Error& e) {
    detail = e.what();
    return Loaded::Refused;
  }
}

// How long a save takes in a forked child, from the fork to its exit: the span
// over which the kill tests spread their kills (a child may be much slower than
// this process, under a sanitizer).
std::chrono::microseconds child_save_time(const std::function<void()>& save) {
  const auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < 5; ++i)
    test::wait_child(test::fork_child([&] {
      save();
      return 0;
    }));
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started) / 5;
}

// `trials` times: restore(), then `save` in a child killed after a random share
// (up to `reach`) of one save's time, then check(trial) on what it left.
void kill_saves_at_random(int trials, unsigned seed, double reach, const std::function<void()>& restore,
                          const std::function<void()>& save, const std::function<void(int)>& check) {
  restore();
  const auto one_save = child_save_time(save);
  std::mt19937 rng(seed);
  for (int trial = 0; trial < trials; ++trial) {
    restore();
    const auto delay = one_save * std::uniform_real_distribution<double>(0, reach)(rng);
    const pid_t pid = test::fork_child([&] {
      save();
      return 0;
    });
    ASSERT_GE(pid, 0);
    std::this_thread::sleep_for(delay);
    ::kill(pid, SIGKILL);
    test::wait_child(pid);
    check(trial);
  }
}

// A save over a Hub-style set (its index has no shard_set, so a loader cannot
// tell old shards from new ones), killed at random moments, with the same shard
// names and with another count: the folder always loads as the old set or the
// new one, never as a mix, and the next save leaves nothing behind.
TEST(ShardedSave, AKilledSaveOverAHubSetLoadsAsTheOldOrTheNewSet) {
  constexpr int kShards = 12;
  for (const int new_shards : {kShards, kShards / 2}) {
    TempDir dir;
    const std::string folder = dir.path().string();
    const NamedTensors next = filled_set(kShards, 1.0f);  // the same 24 tensors
    const auto options = ShardedSaveOptions().max_shard_size(80 * kShards / new_shards).fsync(false);
    write_hub_style_set(folder, kShards, 0.0f);
    const auto one_save = child_save_time([&] { save_sharded(next, folder, std::nullopt, options); });
    const auto expected = dir.entries();
    ASSERT_EQ(expected.size(), static_cast<std::size_t>(new_shards + 1));
    for (int i = 0; i < new_shards; ++i)
      EXPECT_TRUE(std::filesystem::is_regular_file(dir.file(test_shard_name(i, new_shards)))) << "the Hub's names";
    std::mt19937 rng(13);
    int counts[4] = {0, 0, 0, 0}, between = 0;
    for (int trial = 0; trial < 200; ++trial) {
      for (const std::string& name : dir.entries()) std::filesystem::remove(dir.file(name));
      write_hub_style_set(folder, kShards, 0.0f);
      const auto delay = one_save * std::uniform_real_distribution<double>(0, 1)(rng);
      const pid_t pid = test::fork_child([&] {
        save_sharded(next, folder, std::nullopt, options);
        return 0;
      });
      ASSERT_GE(pid, 0);
      std::this_thread::sleep_for(delay);
      ::kill(pid, SIGKILL);
      test::wait_child(pid);
      // Killed between the two index writes: the index names staged shards.
      if (read_bytes(dir.file(std::string(kIndexFileName))).find("\".") != std::string::npos) ++between;
      std::string detail;
      const Loaded loaded = classify(folder, 2 * kShards, detail);
      ++counts[static_cast<int>(loaded)];
      EXPECT_NE(loaded, Loaded::Mixed) << new_shards << " shards, trial " << trial << ": a silent mix: " << detail;
      EXPECT_NE(loaded, Loaded::Refused) << new_shards << " shards, trial " << trial << ": " << detail;
      // Whatever the killed save left, the next one cleans up.
      save_sharded(next, folder, std::nullopt, options);
      EXPECT_EQ(dir.entries(), expected) << new_shards << " shards, trial " << trial;
    }
    std::printf("%d shards over %d: old %d, new %d (%d between the index writes), refused %d, mixed %d; "
                "one save: %lld us\n",
                new_shards, kShards, counts[0], counts[1], between, counts[2], counts[3],
                static_cast<long long>(one_save.count()));
    EXPECT_GT(counts[static_cast<int>(Loaded::Old)], 0);
    EXPECT_GT(counts[static_cast<int>(Loaded::New)], 0);
  }
}

// Liveness is the writer's lock, not a pid: a save from another PID namespace
// (where the writer's pid means nothing, as on another host sharing the folder)
// keeps the staged shards of a save still writing, which then completes.
TEST(ShardedSave, ASaveInAnotherPidNamespaceKeepsALiveSavesStagedShards) {
  TempDir dir;
  const std::optional<std::string> skipped =
      test::with_small_filesystem(dir.path().string(), 64 << 20, [](test::SmallFilesystem& disk) {
        const std::string folder = disk.folder();
        test::Signal staged, go;
        const pid_t writer = test::fork_child([&] {
          int calls = 0;
          save_sharded(ten_tensors(), folder, std::nullopt,
                       ShardedSaveOptions().max_shard_size(100).fsync(false).progress(
                           [&](std::uint64_t, std::uint64_t) {
                             if (++calls == 3) {  // the first shard is staged, the second half written
                               staged.notify();
                               go.wait();
                             }
                           }));
          return 0;
        });
        disk.expect(staged.wait(), "the writer did not stage a shard");
        std::vector<std::string> during;
        for (const std::string& name : disk.entries())
          if (name.front() == '.') during.push_back(name);
        disk.expect(during.size() >= 2, "no staged shard and lock while the save runs");
        const pid_t sweeper = test::fork_in_new_pid_namespace([&] {
          save_sharded(filled_set(5, 1.0f), folder, std::nullopt, ShardedSaveOptions().max_shard_size(100));
          return 0;
        });
        if (sweeper < 0) {
          disk.expect(false, std::string("no PID namespace: ") + std::strerror(errno));
        } else {
          disk.expect(test::wait_child(sweeper) == 0, "the save in the other PID namespace failed");
          const std::vector<std::string> after = disk.entries();
          for (const std::string& name : during)
            disk.expect(std::count(after.begin(), after.end(), name) == 1, "the live save's " + name + " was removed");
        }
        go.notify();
        disk.expect(test::wait_child(writer) == 0, "the live save failed");
        ShardedOpen ckpt(folder);
        disk.expect(ckpt.size() == 10 && torch::equal(ckpt.get_tensor("t7"), torch::full({10}, 7.0f)),
                    "the folder does not hold the last save");
        for (const std::string& name : disk.entries()) disk.expect(name.front() != '.', name + " was left");
      });
  if (skipped) GTEST_SKIP() << *skipped;
}

// A Hugging Face cache snapshot: the index and shards are symlinks into blobs/,
// shared with another snapshot. Saving into the snapshot replaces the links,
// whether the new set reuses the names or not; the blobs and the other
// snapshot are untouched. A dangling link at a new shard's name becomes a file.
TEST(ShardedSave, ASymlinkedSetIsReplacedAndItsBlobsKept) {
  TempDir dir;
  namespace fs = std::filesystem;
  const fs::path blobs = dir.path() / "blobs";
  fs::create_directories(blobs);
  write_hub_style_set(blobs.string(), 3, 0.0f);
  std::map<std::string, std::string> blob_bytes;
  for (const std::string& name : test::entries_of(blobs)) blob_bytes[name] = read_bytes((blobs / name).string());
  for (const char* snapshot : {"r1", "r2", "r3"}) {
    fs::create_directories(dir.path() / "snapshots" / snapshot);
    for (const auto& [name, bytes] : blob_bytes)
      fs::create_symlink("../../blobs/" + name, dir.path() / "snapshots" / snapshot / name);
  }
  const std::string r1 = (dir.path() / "snapshots/r1").string(), r3 = (dir.path() / "snapshots/r3").string();
  fs::create_symlink("../../blobs/missing", dir.path() / "snapshots/r3" / test_shard_name(0, 2));
  save_sharded(filled_set(3, 1.0f), r1, std::nullopt, ShardedSaveOptions().max_shard_size(80));  // same names
  save_sharded(filled_set(2, 1.0f), r3, std::nullopt, ShardedSaveOptions().max_shard_size(80));  // 2 shards
  for (const std::string& folder : {r1, r3}) {
    for (const auto& entry : fs::directory_iterator(folder))
      EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(entry.path()))) << entry.path();
    ShardedOpen ckpt(folder);
    EXPECT_TRUE(torch::equal(ckpt.get_tensor("t1"), torch::ones({10}))) << folder;
  }
  EXPECT_EQ(test::entries_of(r3), (std::vector<std::string>{test_shard_name(0, 2), test_shard_name(1, 2),
                                                                     std::string(kIndexFileName)}));
  EXPECT_FALSE(fs::exists(blobs / "missing"));
  for (const auto& [name, bytes] : blob_bytes) EXPECT_EQ(read_bytes((blobs / name).string()), bytes) << name;
  std::string detail;
  EXPECT_EQ(classify((dir.path() / "snapshots/r2").string(), 6, detail), Loaded::Old) << detail;
}

// Each shard follows save_file's rule: a new file gets 0666 & ~umask; a shard
// (or index) that replaces a file of the same name keeps that file's
// permission bits, never setuid, setgid or sticky.
TEST(ShardedSave, ShardsTakeThePermissionsOfTheFilesTheyReplace) {
  TempDir dir;
  const std::string folder = dir.path().string();
  const auto mode_of = [&](const std::string& name) {
    struct stat st;
    return ::stat(dir.file(name).c_str(), &st) == 0 ? st.st_mode & 07777 : 0u;
  };
  const mode_t old_umask = ::umask(027);
  save_sharded(ten_tensors(), folder, std::nullopt, ShardedSaveOptions().max_shard_size(100));
  for (const std::string& name : dir.entries()) EXPECT_EQ(mode_of(name), 0640u) << name;
  ASSERT_EQ(::chmod(dir.file(test_shard_name(0, 5)).c_str(), 0604), 0);
  ASSERT_EQ(::chmod(dir.file(test_shard_name(1, 5)).c_str(), 06744), 0);
  ASSERT_EQ(::chmod(dir.file(std::string(kIndexFileName)).c_str(), 01600), 0);
  save_sharded(ten_tensors(), folder, std::nullopt, ShardedSaveOptions().max_shard_size(100));
  EXPECT_EQ(mode_of(test_shard_name(0, 5)), 0604u);
  EXPECT_EQ(mode_of(test_shard_name(1, 5)), 0744u);
  EXPECT_EQ(mode_of(test_shard_name(2, 5)), 0640u);
  EXPECT_EQ(mode_of(std::string(kIndexFileName)), 0600u);
  ::umask(old_umask);
}

// Where a shard cannot take its final name (here a folder the previous index
// names is in the way; a filesystem without hard links is the same), the new
// set keeps the staged names its index lists, and loads; the next save gives
// the shards their own names again.
TEST(ShardedSave, ShardsThatCannotTakeTheirNamesKeepTheirStagedOnes) {
  TempDir dir;
  const std::string folder = dir.path().string();
  save_sharded(filled_set(2, 0.0f), folder, std::nullopt, ShardedSaveOptions().max_shard_size(80));
  const std::string blocked = dir.file(test_shard_name(0, 2));
  std::filesystem::remove(blocked);
  std::filesystem::create_directory(blocked);
  write_bytes(blocked + "/keep", "x");
  const std::vector<std::string> files =
      save_sharded(filled_set(2, 1.0f), folder, std::nullopt, ShardedSaveOptions().max_shard_size(80));
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[0].front(), '.') << files[0];
  std::string detail;
  EXPECT_EQ(classify(folder, 4, detail), Loaded::New) << detail;
  std::filesystem::remove_all(blocked);
  const std::vector<std::string> renamed =
      save_sharded(filled_set(2, 0.0f), folder, std::nullopt, ShardedSaveOptions().max_shard_size(80));
  EXPECT_EQ(renamed, (std::vector<std::string>{test_shard_name(0, 2), test_shard_name(1, 2),
                                               std::string(kIndexFileName)}));
  EXPECT_EQ(dir.entries(), renamed);
  EXPECT_EQ(classify(folder, 4, detail), Loaded::Old) << detail;
}

// A save that died between its two index writes left an index naming its
// staged shards: that is the folder's checkpoint, and the next save's sweep
// keeps it until the new set replaces it.
TEST(ShardedSave, TheSweepKeepsStagedShardsTheIndexNames) {
  TempDir dir;
  const std::string folder = dir.path().string();
  const std::string set = "00112233445566778899aabbccddeeff";
  nlohmann::json weight_map;
  for (int s = 0; s < 2; ++s) {
    const std::string name = staged_shard_name(test_shard_name(s, 2), set);
    save_file({{"t" + std::to_string(s), torch::zeros({10})}}, dir.file(name),
              Metadata{{"format", "pt"}, {std::string(kShardSetKey), set}});
    weight_map["t" + std::to_string(s)] = name;
  }
  write_bytes(dir.file(std::string(kIndexFileName)),
              nlohmann::json{{"metadata", {{"total_size", 80}, {std::string(kShardSetKey), set}}},
                             {"weight_map", weight_map}}
                  .dump());
  EXPECT_EQ(ShardedOpen(folder).size(), 2u);
  bool loaded_while_saving = false;
  save_sharded(filled_set(1, 1.0f), folder, std::nullopt,
               ShardedSaveOptions().max_shard_size(40).progress([&](std::uint64_t, std::uint64_t) {
                 loaded_while_saving = ShardedOpen(folder).size() == 2;
               }));
  EXPECT_TRUE(loaded_while_saving);
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{test_shard_name(0, 2), test_shard_name(1, 2),
                                                     std::string(kIndexFileName)}));
}

// A save killed after its index switch, while removing the previous set's
// files, leaves some; its lock records them (and the shards it moved into
// place), so the next save removes those the checkpoint does not use. A file
// no lock records stays.
TEST(ShardedSave, TheNextSaveFinishesTheCleanupOfADeadOne) {
  TempDir dir;
  const std::string folder = dir.path().string();
  save_sharded(filled_set(3, 0.0f), folder, std::nullopt, ShardedSaveOptions().max_shard_size(80));
  const std::string left_a = test_shard_name(0, 5), left_b = test_shard_name(3, 5), stray = test_shard_name(1, 5);
  for (const std::string& name : {left_a, left_b, stray}) write_bytes(dir.file(name), "an old shard");
  write_bytes(dir.file(writer_lock_name("0123456789abcdef0123456789abcdef", "0123456789abcdef")),
              nlohmann::json{left_a, left_b, test_shard_name(0, 3)}.dump());
  std::vector<std::string> expected =
      save_sharded(filled_set(3, 1.0f), folder, std::nullopt, ShardedSaveOptions().max_shard_size(80));
  expected.push_back(stray);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(dir.entries(), expected);
  std::string detail;
  EXPECT_EQ(classify(folder, 6, detail), Loaded::New) << detail;
}

// ---------------------------------------------------------------- what other saves and dead ones left

// What a loader that reads only the index's weight_map (as the Hugging Face
// ones do, ignoring total_size) loads from `folder`: see classify.
Loaded classify_by_weight_map(const std::string& folder, int tensors, std::string& detail) {
  try {
    const nlohmann::json index = read_json(folder + "/" + std::string(kIndexFileName));
    int old_values = 0, new_values = 0;
    for (const auto& [tensor, file] : index.at("weight_map").items()) {
      const torch::Tensor t = SafeOpen(folder + "/" + file.get<std::string>()).get_tensor(tensor);
      old_values += torch::equal(t, torch::zeros({10}));
      new_values += torch::equal(t, torch::ones({10}));
    }
    if (old_values == tensors && index["weight_map"].size() == static_cast<std::size_t>(tensors)) return Loaded::Old;
    if (new_values == tensors && index["weight_map"].size() == static_cast<std::size_t>(tensors)) return Loaded::New;
    detail = std::to_string(old_values) + " old and " + std::to_string(new_values) + " new tensors";
    return Loaded::Mixed;
  } catch (const std::exception& e) {
    detail = e.what();
    return Loaded::Refused;
  }
}

// An index with a total_size other software wrote as a string: this reader
// refuses it, a loader that ignores total_size loads it.
void spell_total_size_as_a_string(const std::string& folder) {
  const std::string index = folder + "/" + std::string(kIndexFileName);
  nlohmann::json doc = read_json(index);
  doc["metadata"]["total_size"] = std::to_string(doc["metadata"]["total_size"].get<std::uint64_t>());
  write_bytes(index, doc.dump(2));
}

// A save over a set whose index this reader refuses, killed at random moments:
// until its switch, no new shard takes a name of the old set (any visible
// *.safetensors file may be one), so a loader that reads the old index's
// weight_map never loads a mix; the next save leaves nothing behind.
TEST(ShardedSave, AKilledSaveOverAnIndexThisReaderRefusesNeverMixesTheSets) {
  constexpr int kShards = 12;
  TempDir dir;
  const std::string folder = dir.path().string();
  const NamedTensors next = filled_set(kShards, 1.0f);
  const auto options = ShardedSaveOptions().max_shard_size(80).fsync(false);
  const auto restore = [&] {
    for (const std::string& name : dir.entries()) std::filesystem::remove(dir.file(name));
    write_hub_style_set(folder, kShards, 0.0f);
    spell_total_size_as_a_string(folder);
  };
  restore();
  EXPECT_THROW(ShardedOpen{folder}, Error);
  std::string detail;
  ASSERT_EQ(classify_by_weight_map(folder, 2 * kShards, detail), Loaded::Old) << detail;
  save_sharded(next, folder, std::nullopt, options);
  const auto expected = dir.entries();
  ASSERT_EQ(expected.size(), static_cast<std::size_t>(kShards + 1));
  int counts[4] = {0, 0, 0, 0};
  kill_saves_at_random(
      150, 19, 1.0, restore, [&] { save_sharded(next, folder, std::nullopt, options); },
      [&](int trial) {
        detail.clear();
        const Loaded loaded = classify_by_weight_map(folder, 2 * kShards, detail);
        ++counts[static_cast<int>(loaded)];
        EXPECT_NE(loaded, Loaded::Mixed) << "trial " << trial << ": a silent mix: " << detail;
        EXPECT_NE(loaded, Loaded::Refused) << "trial " << trial << ": " << detail;
        save_sharded(next, folder, std::nullopt, options);
        EXPECT_EQ(dir.entries(), expected) << "trial " << trial;
      });
  std::printf("over an index this reader refuses: old %d, new %d, refused %d, mixed %d\n", counts[0], counts[1],
              counts[2], counts[3]);
  EXPECT_GT(counts[static_cast<int>(Loaded::Old)], 0);
  EXPECT_GT(counts[static_cast<int>(Loaded::New)], 0);
}

// Once the new set is in place, the shards the refused index's weight_map
// names go, as a readable index's do; other *.safetensors files (an adapter, a
// shard no index names) stay.
TEST(ShardedSave, ASaveOverAnIndexThisReaderRefusesRemovesOnlyTheSetItNames) {
  TempDir dir;
  const std::string folder = dir.path().string();
  write_hub_style_set(folder, 3, 0.0f);
  spell_total_size_as_a_string(folder);
  for (const char* other : {"adapter_model.safetensors", "model-00009-of-00009.safetensors"})
    save_file({{"x", torch::zeros({1})}}, dir.file(other));
  std::vector<std::string> expected =
      save_sharded(filled_set(2, 1.0f), folder, std::nullopt, ShardedSaveOptions().max_shard_size(80));
  ASSERT_EQ(expected.size(), 3u);
  expected.insert(expected.end(), {"adapter_model.safetensors", "model-00009-of-00009.safetensors"});
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(dir.entries(), expected);
  std::string detail;
  EXPECT_EQ(classify(folder, 4, detail), Loaded::New) << detail;
}

// A dead save's lock may record a name that a live save has given a file
// since (it records each before it creates it): the sweep keeps every file a
// live writer's lock records, and its staged shards, and the dead lock goes.
TEST(ShardedSave, TheSweepKeepsTheFilesALiveSaveRecords) {
  TempDir dir;
  const std::string folder = dir.path().string();
  save_sharded(filled_set(2, 0.0f), folder, std::nullopt, ShardedSaveOptions().max_shard_size(80));
  const std::string live_set = "fedcba9876543210fedcba9876543210", dead_set = "0123456789abcdef0123456789abcdef";
  const std::string published = test_shard_name(0, 3), staged = staged_shard_name(test_shard_name(1, 3), live_set);
  const std::string live_lock = writer_lock_name(live_set, "00000000000000aa");
  const std::string dead_lock = writer_lock_name(dead_set, "0123456789abcdef");
  write_bytes(dir.file(dead_lock), nlohmann::json{published, test_shard_name(2, 3)}.dump());
  write_bytes(dir.file(live_lock), nlohmann::json{test_shard_name(0, 2), test_shard_name(1, 2), published,
                                                  test_shard_name(1, 3), test_shard_name(2, 3)}
                                       .dump());
  for (const std::string& name : {published, staged}) write_bytes(dir.file(name), "the live save's");
  test::HeldLock writer(dir.file(live_lock));
  std::vector<std::string> expected =
      save_sharded(ten_tensors(), folder, std::nullopt, ShardedSaveOptions().max_shard_size(100));  // 5 shards
  expected.insert(expected.end(), {published, staged, live_lock});
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(dir.entries(), expected);
  EXPECT_EQ(read_bytes(dir.file(published)), "the live save's");
}

// A lock whose writer is gone is removed after the files it records: a sweep
// killed at any moment leaves each of them it has not removed recorded by a
// lock still there, for the next sweep.
TEST(ShardedSave, ASweepKilledMidwayLeavesTheFilesItKeptRecorded) {
  TempDir dir;
  const std::string folder = dir.path().string();
  constexpr int kFiles = 300;
  const std::string dead_lock = writer_lock_name("0123456789abcdef0123456789abcdef", "0123456789abcdef");
  nlohmann::json record = nlohmann::json::array();
  for (int i = 0; i < kFiles; ++i) record.push_back(test_shard_name(i, kFiles));
  const auto restore = [&] {
    for (const std::string& name : dir.entries()) std::filesystem::remove(dir.file(name));
    for (int i = 0; i < kFiles; ++i) write_bytes(dir.file(test_shard_name(i, kFiles)), "");
    write_bytes(dir.file(dead_lock), record.dump());
  };
  const NamedTensors tiny = {{"t", torch::zeros({1})}};
  const auto options = ShardedSaveOptions().fsync(false);
  // The kills spread over the save itself, timed here (a child is a copy).
  std::chrono::microseconds one_save{0};
  for (int i = 0; i < 3; ++i) {
    restore();
    const auto started = std::chrono::steady_clock::now();
    save_sharded(tiny, folder, std::nullopt, options);
    one_save += std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started);
  }
  one_save /= 3;
  EXPECT_EQ(dir.entries(), std::vector<std::string>{std::string(kSingleFileName)});
  std::mt19937 rng(23);
  int midway = 0;
  for (int trial = 0; trial < 60; ++trial) {
    restore();
    const auto delay = one_save * std::uniform_real_distribution<double>(0, 1)(rng);
    test::Signal saving;
    const pid_t pid = test::fork_child([&] {
      saving.notify();
      save_sharded(tiny, folder, std::nullopt, options);
      return 0;
    });
    ASSERT_GE(pid, 0);
    saving.wait();
    std::this_thread::sleep_for(delay);
    ::kill(pid, SIGKILL);
    test::wait_child(pid);
    std::set<std::string> recorded;
    int left = 0;
    for (const std::string& name : dir.entries()) {
      if (name.rfind(".saving-", 0) == 0)
        for (const auto& file : nlohmann::json::parse(read_bytes(dir.file(name)), nullptr, false))
          if (file.is_string()) recorded.insert(file.get<std::string>());
      left += name.rfind("model-", 0) == 0;
    }
    midway += left > 0 && left < kFiles;
    for (int i = 0; i < kFiles; ++i) {
      const std::string name = test_shard_name(i, kFiles);
      if (std::filesystem::exists(dir.file(name)) && !recorded.count(name)) {
        ADD_FAILURE() << "trial " << trial << ": " << name << " is left and no lock records it";
        break;
      }
    }
    save_sharded(tiny, folder, std::nullopt, options);
    EXPECT_EQ(dir.entries(), std::vector<std::string>{std::string(kSingleFileName)}) << "trial " << trial;
  }
  std::printf("sweeps killed midway: %d of 60; one save: %lld us\n", midway,
              static_cast<long long>(one_save.count()));
  EXPECT_GT(midway, 0);
}

// A save of one file over a set: while it writes, every file it has made is
// one its lock records or a staged name (which the sweep removes by name), so
// a death leaves nothing the next save cannot remove; once done, only
// model.safetensors is left.
TEST(ShardedSave, ASaveOfOneFileRecordsTheFileItMayLeaveBesideTheSet) {
  TempDir dir;
  const std::string folder = dir.path().string();
  save_sharded(filled_set(2, 0.0f), folder, std::nullopt, ShardedSaveOptions().max_shard_size(80));
  const std::vector<std::string> before = dir.entries();
  int checked = 0;
  save_sharded(ten_tensors(), folder, std::nullopt,
               ShardedSaveOptions().progress([&](std::uint64_t, std::uint64_t) {
                 std::set<std::string> recorded;
                 const std::vector<std::string> now = dir.entries();
                 for (const std::string& name : now)
                   if (name.rfind(".saving-", 0) == 0 && std::filesystem::file_size(dir.file(name)) > 0)
                     for (const auto& file : read_json(dir.file(name))) recorded.insert(file.get<std::string>());
                 for (const std::string& name : now) {
                   if (std::find(before.begin(), before.end(), name) != before.end()) continue;
                   if (name.rfind(".saving-", 0) == 0 || name.rfind(".model", 0) == 0) continue;  // lock, staged
                   EXPECT_TRUE(recorded.count(name)) << name << " is made and no lock records it";
                 }
                 ++checked;
               }));
  EXPECT_GT(checked, 0);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{std::string(kSingleFileName)});
}

// One file over a Hugging Face set whose index lists model.safetensors itself:
// the new file must not take that name before the index stops naming the old
// tensors. Killed at random moments, the folder loads the old tensor or the new
// one, never an index that names a tensor its file lacks.
TEST(ShardedSave, AKilledSaveOfOneFileOverAnIndexNamingItLoadsAsTheOldOrTheNew) {
  TempDir dir;
  const std::string folder = dir.path().string();
  const auto restore = [&] {
    for (const std::string& name : dir.entries()) std::filesystem::remove(dir.file(name));
    save_file({{"old.w", torch::zeros({1 << 20})}}, dir.file(std::string(kSingleFileName)));
    write_bytes(dir.file("model.safetensors.index.json"),
                R"({"metadata":{},"weight_map":{"old.w":"model.safetensors"}})");
  };
  const NamedTensors next({{"new.w", torch::ones({1 << 20})}});
  int old_count = 0, new_count = 0;
  kill_saves_at_random(100, 31, 1.2, restore, [&] { save_sharded(next, folder); }, [&](int trial) {
    try {
      const std::vector<std::string> keys = ShardedOpen(folder).keys();
      ASSERT_EQ(keys.size(), 1u) << "trial " << trial;
      (keys[0] == "old.w" ? old_count : new_count) += 1;
    } catch (const Error& e) {
      ADD_FAILURE() << "trial " << trial << ": " << e.what();
    }
  });
  std::printf("one file over an index naming it: old %d, new %d\n", old_count, new_count);
  EXPECT_GT(old_count + new_count, 0);
}

// A save from a set to one file, and from one file to a set, killed at random
// moments: the folder loads as the old checkpoint or the new one, and a save
// of the old layout after it leaves nothing of the killed one.
TEST(ShardedSave, AKilledSaveBetweenASetAndOneFileLoadsAsTheOldOrTheNew) {
  const auto as_set = ShardedSaveOptions().max_shard_size(80).fsync(false);
  const auto as_one = ShardedSaveOptions().fsync(false);
  for (const bool to_one : {true, false}) {
    TempDir dir;
    const std::string folder = dir.path().string();
    const auto& old_options = to_one ? as_set : as_one;
    const auto& new_options = to_one ? as_one : as_set;
    const auto restore = [&] {
      for (const std::string& name : dir.entries()) std::filesystem::remove(dir.file(name));
      save_sharded(filled_set(6, 0.0f), folder, std::nullopt, old_options);
    };
    restore();
    const std::vector<std::string> expected = dir.entries();
    const NamedTensors next = filled_set(6, 1.0f);
    int counts[4] = {0, 0, 0, 0};
    kill_saves_at_random(
        150, 29, 1.0, restore, [&] { save_sharded(next, folder, std::nullopt, new_options); },
        [&](int trial) {
          std::string detail;
          const Loaded loaded = classify(folder, 12, detail);
          ++counts[static_cast<int>(loaded)];
          EXPECT_TRUE(loaded == Loaded::Old || loaded == Loaded::New)
              << (to_one ? "to one file" : "to a set") << ", trial " << trial << ": " << detail;
          save_sharded(filled_set(6, 0.0f), folder, std::nullopt, old_options);
          EXPECT_EQ(dir.entries(), expected) << (to_one ? "to one file" : "to a set") << ", trial " << trial;
        });
    std::printf("%s: old %d, new %d, refused %d, mixed %d\n", to_one ? "a set to one file" : "one file to a set",
                counts[0], counts[1], counts[2], counts[3]);
    EXPECT_GT(counts[static_cast<int>(Loaded::Old)], 0);
    EXPECT_GT(counts[static_cast<int>(Loaded::New)], 0);
  }
}

// The same over a set the Hugging Face tools wrote (the fluxml vectors: six
// shards named as save_sharded names them, an index without shard_set, every
// dtype): killed at random moments, a save of other bytes under the same names
// leaves the folder loading, byte for byte, as the old set or the new one.
TEST(ShardedSave, AKilledSaveOverAHubWrittenSetLoadsAsTheOldOrTheNewSet) {
  const LoadOptions raw = LoadOptions().unsupported_as_bytes(true);
  const auto bytes_of = [](const torch::Tensor& t) {
    const torch::Tensor c = t.contiguous();
    return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
  };
  ShardedOpen original(kFluxml, raw);
  std::map<std::string, std::string> old_bytes, new_bytes;
  NamedTensors next;
  for (const std::string& name : original.keys()) {
    const TensorInfo& info = original.info(name);
    std::string bytes = bytes_of(original.get_tensor(name));
    old_bytes[name] = bytes;
    for (char& c : bytes) c ^= info.dtype == Dtype::BOOL ? 0x01 : 0x5A;
    new_bytes[name] = bytes;
    next.add_raw(name, info.dtype, info.shape,
                 torch::from_blob(new_bytes[name].data(), {static_cast<std::int64_t>(bytes.size())}, torch::kUInt8));
  }
  // The limit that packs the tensors into six shards, as the Hub's set has.
  TempDir scratch, dir;
  std::uint64_t limit = 0;
  for (std::uint64_t candidate = 500; candidate < 1500 && !limit; candidate += 10)
    if (save_sharded(next, scratch.path().string(), std::nullopt,
                     ShardedSaveOptions().max_shard_size(candidate).fsync(false))
            .size() == 7)
      limit = candidate;
  ASSERT_NE(limit, 0u);
  const auto options = ShardedSaveOptions().max_shard_size(limit).fsync(false);
  const auto restore = [&] {
    for (const std::string& name : dir.entries()) std::filesystem::remove(dir.file(name));
    for (const auto& entry : std::filesystem::directory_iterator(kFluxml))
      std::filesystem::copy(entry.path(), dir.path() / entry.path().filename());
  };
  const auto loads_as = [&](std::string& detail) {
    try {
      ShardedOpen ckpt(dir.path().string(), raw);
      int old_count = 0, new_count = 0;
      for (const auto& [name, bytes] : old_bytes) {
        const std::string got = bytes_of(ckpt.get_tensor(name));
        old_count += got == bytes;
        new_count += got == new_bytes[name];
      }
      if (old_count == static_cast<int>(old_bytes.size()) && ckpt.size() == old_bytes.size()) return Loaded::Old;
      if (new_count == static_cast<int>(old_bytes.size()) && ckpt.size() == old_bytes.size()) return Loaded::New;
      detail = std::to_string(old_count) + " old and " + std::to_string(new_count) + " new tensors";
      return Loaded::Mixed;
    } catch (const Error& e) {
      detail = e.what();
      return Loaded::Refused;
    }
  };
  restore();
  const auto one_save = child_save_time([&] { save_sharded(next, dir.path().string(), std::nullopt, options); });
  const std::vector<std::string> expected = test::entries_of(kFluxml);
  EXPECT_EQ(dir.entries(), expected);  // the Hub's names
  std::mt19937 rng(17);
  int counts[4] = {0, 0, 0, 0};
  for (int trial = 0; trial < 150; ++trial) {
    restore();
    const auto delay = one_save * std::uniform_real_distribution<double>(0, 1)(rng);
    const pid_t pid = test::fork_child([&] {
      save_sharded(next, dir.path().string(), std::nullopt, options);
      return 0;
    });
    ASSERT_GE(pid, 0);
    std::this_thread::sleep_for(delay);
    ::kill(pid, SIGKILL);
    test::wait_child(pid);
    std::string detail;
    const Loaded loaded = loads_as(detail);
    ++counts[static_cast<int>(loaded)];
    EXPECT_NE(loaded, Loaded::Mixed) << "trial " << trial << ": a silent mix: " << detail;
    EXPECT_NE(loaded, Loaded::Refused) << "trial " << trial << ": " << detail;
    save_sharded(next, dir.path().string(), std::nullopt, options);
    EXPECT_EQ(dir.entries(), expected) << "trial " << trial;
  }
  std::printf("over the Hub-written set: old %d, new %d, refused %d, mixed %d\n", counts[0], counts[1], counts[2],
              counts[3]);
  EXPECT_GT(counts[static_cast<int>(Loaded::Old)], 0);
  EXPECT_GT(counts[static_cast<int>(Loaded::New)], 0);
}

}  // namespace
}  // namespace safetensors
