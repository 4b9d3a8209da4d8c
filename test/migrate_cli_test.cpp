// Tests of `safetensors-torch convert` on torch.save files and of
// `safetensors-torch diff`: the tool is run as a child process.

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <torch/serialize.h>

#include "safetensors/safetensors.hpp"
#include "cli_util.hpp"

namespace {

namespace fs = std::filesystem;
namespace st = safetensors;
using st::test::TempDir;

const std::string kFixtures = std::string(SAFETENSORS_TEST_DATA_DIR) + "/pickle/";
const std::string kData = SAFETENSORS_TEST_DATA_DIR;

using Result = st::test::CliResult;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

class MigrateCliTest : public ::testing::Test {
 protected:
  Result run(const std::vector<std::string>& args) const {
    return st::test::run_cli(args, dir_.path().string());
  }

  TempDir dir_;
};

TEST_F(MigrateCliTest, ConvertsATrainingCheckpointAndReportsWhatItKept) {
  const std::string out = dir_.file("all.safetensors");
  const Result r = run({"convert", kFixtures + "training.pt", out});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "(torch.save (zip))")) << r.out;
  EXPECT_TRUE(contains(r.out, "8 tensors")) << r.out;
  EXPECT_TRUE(contains(r.out, "3 non-tensor values kept as metadata: optimizer, epoch, note")) << r.out;
  EXPECT_FALSE(contains(r.out, "not converted")) << r.out;
  EXPECT_TRUE(st::load_file(out).contains("model.fc.weight"));
}

TEST_F(MigrateCliTest, ConvertsASubDictAndDiffProvesItLossless) {
  const std::string out = dir_.file("model.safetensors");
  ASSERT_EQ(run({"convert", kFixtures + "training.pt", out, "--key", "model"}).code, 0);
  EXPECT_TRUE(st::load_file(out).contains("fc.weight"));
  const Result same = run({"diff", kFixtures + "training.pt", out, "--key-a", "model"});
  EXPECT_EQ(same.code, 0) << same.out << same.err;
  EXPECT_TRUE(contains(same.out, "equal: 8 identical")) << same.out;

  const Result other = run({"diff", kFixtures + "training.pt", out});
  EXPECT_EQ(other.code, 1);
  EXPECT_TRUE(contains(other.out, "only in A: model.fc.weight")) << other.out;
  EXPECT_TRUE(contains(other.out, "only in B: fc.weight")) << other.out;
}

TEST_F(MigrateCliTest, ConvertSelectsRenamesAndCastsATorchSaveCheckpoint) {
  const std::string out = dir_.file("model.safetensors");
  const Result r = run({"convert", kFixtures + "training.pt", out, "--key", "model", "--exclude", "bn.*",
                        "--add-prefix", "net.", "--dtype", "f16"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "  left out: 5 (bn.weight, bn.bias, bn.running_mean, bn.running_var, "
                              "bn.num_batches_tracked)\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "  cast: 3 F32 -> F16 (other tensors keep their dtype)\n")) << r.out;
  const st::SafeOpen file(out);
  std::vector<std::string> keys = file.keys();
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"net.emb.weight", "net.fc.bias", "net.fc.weight"}));
  for (const std::string& name : file.keys()) EXPECT_EQ(file.info(name).dtype, st::Dtype::F16) << name;

  // Tied weights stay tied under their new names.
  const std::string tied = dir_.file("tied.safetensors");
  ASSERT_EQ(run({"convert", kFixtures + "tied_sequential.pt", tied, "--add-prefix", "net."}).code, 0);
  const st::SafeOpen t(tied);
  std::vector<std::string> tied_keys = t.keys();
  std::sort(tied_keys.begin(), tied_keys.end());
  EXPECT_EQ(tied_keys, (std::vector<std::string>{"net.0.bias", "net.0.weight"}));
  EXPECT_EQ(t.metadata().at("net.7.weight"), "net.0.weight");
}

TEST_F(MigrateCliTest, DetectsTheFormatByContentNotByName) {
  const std::string disguised = dir_.file("model.safetensors");
  fs::copy_file(kFixtures + "views.pt", disguised);
  const Result r = run({"convert", disguised, dir_.file("out.safetensors")});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "shared tensors written once (recorded in the metadata): same -> base")) << r.out;
  EXPECT_TRUE(contains(r.out, "written as separate copies")) << r.out;
}

TEST_F(MigrateCliTest, WritesShards) {
  const std::string folder = dir_.file("sharded");
  const Result r = run({"convert", kFixtures + "views.pt", folder, "--shard-size", "100"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "shards")) << r.out;
  EXPECT_TRUE(fs::exists(folder + "/model.safetensors.index.json"));
  st::ShardedOpen sharded(folder);
  EXPECT_EQ(sharded.size(), 6u);
}

// torch.jit.load would run this module's __setstate__, which never returns.
// convert reads it as data and finishes at once; it runs under timeout(1) so
// that a hang fails the test instead of stalling it.
TEST_F(MigrateCliTest, ConvertsATorchScriptModuleWithoutRunningItsCode) {
  const std::string out = dir_.file("loop.safetensors");
  const std::string command = "timeout -s KILL 60 " + std::string(SAFETENSORS_CLI_PATH) + " convert " +
                              kFixtures + "hostile_setstate.pt " + out + " >" + dir_.file("log") + " 2>&1";
  const auto start = std::chrono::steady_clock::now();
  const int status = std::system(command.c_str());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << st::test::read_bytes(dir_.file("log"));
  EXPECT_LT(seconds, 30);
  EXPECT_TRUE(contains(st::test::read_bytes(dir_.file("log")), "(TorchScript archive)"));
  EXPECT_TRUE(st::load_file(out).contains("0"));

  // A Python scripted module converts to its state_dict names.
  const Result scripted = run({"convert", kFixtures + "scripted.pt", dir_.file("scripted.safetensors")});
  ASSERT_EQ(scripted.code, 0) << scripted.err;
  const Result same = run({"diff", kFixtures + "scripted.expected.safetensors", dir_.file("scripted.safetensors")});
  EXPECT_EQ(same.code, 0) << same.out << same.err;
}

// convert says what a TorchScript archive held: its parameters and buffers,
// its modules' bookkeeping counted once per kind, its other attributes by
// name; none of them becomes metadata.
TEST_F(MigrateCliTest, ReportsWhatATorchScriptArchiveHeld) {
  const std::string out = dir_.file("tiny_lm.safetensors");
  const Result r = run({"convert", kData + "/jit/tiny_lm.pt", out});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "read 17 parameters, 4 buffers\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "module bookkeeping, not converted: training (17), _is_full_backward_hook (17), "
                              "modules without tensors (2), parameters set to None (1)\n"))
      << r.out;
  EXPECT_FALSE(contains(r.out, "kept as metadata")) << r.out;
  EXPECT_FALSE(contains(r.out, "embed.training")) << r.out;
  EXPECT_EQ(st::SafeOpen(out).metadata(), (st::Metadata{{"format", "pt"}, {"head.weight", "embed.weight"}}));

  const Result scripted = run({"convert", kData + "/jit/torch-2.6/scripted.pt", dir_.file("scripted.safetensors")});
  ASSERT_EQ(scripted.code, 0) << scripted.err;
  EXPECT_TRUE(contains(scripted.out, "read 12 parameters, 8 buffers\n")) << scripted.out;
  EXPECT_TRUE(contains(scripted.out, "module attributes, not converted: steps (int 3), label (str 'tiny'), "
                                     "sizes (list of 2), offset (tensor, neither a parameter nor a buffer)\n"))
      << scripted.out;
}

// --key selects every name convert makes, positions in lists included.
TEST_F(MigrateCliTest, KeysThroughLists) {
  const std::string in = dir_.file("lists.pt");
  c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
  root.insert("l", c10::List<at::Tensor>({at::zeros({2}), at::ones({3})}));
  const std::vector<char> bytes = torch::pickle_save(root);
  st::test::write_bytes(in, std::string(bytes.begin(), bytes.end()));
  const std::string out = dir_.file("l1.safetensors");
  const Result r = run({"convert", in, out, "--key", "l.1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(st::load_file(out)["tensor"].equal(at::ones({3})));
  const Result diff = run({"diff", in, out, "--key-a", "l.1"});
  EXPECT_EQ(diff.code, 0) << diff.out << diff.err;
  const Result missing = run({"convert", in, dir_.file("x.safetensors"), "--key", "l.2"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_TRUE(contains(missing.err, "no key 'l.2' (positions: 0 to 1)")) << missing.err;
}

// A key that holds a dot is written with the dot escaped; an unescaped dot
// separates keys, and a backslash before anything else is a usage error.
TEST_F(MigrateCliTest, KeysThatHoldADot) {
  const std::string out = dir_.file("v2.safetensors");
  const Result r = run({"convert", kFixtures + "dotted_keys.pt", out, "--key", "model\\.v2"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(st::load_file(out).keys(), std::vector<std::string>{"w"});
  const Result diff = run({"diff", kFixtures + "dotted_keys.pt", out, "--key-a", "model\\.v2"});
  EXPECT_EQ(diff.code, 0) << diff.out << diff.err;
  const Result split = run({"convert", kFixtures + "dotted_keys.pt", dir_.file("x.safetensors"), "--key", "model.v2"});
  EXPECT_EQ(split.code, 1);
  EXPECT_TRUE(contains(split.err, "no key 'model' (keys: model.v2, epoch)")) << split.err;
  const Result bad = run({"convert", kFixtures + "dotted_keys.pt", dir_.file("x.safetensors"), "--key", "a\\b"});
  EXPECT_EQ(bad.code, 2);
  // Quoted back, the backslash is doubled, as every backslash in a message.
  EXPECT_TRUE(contains(bad.err, "a backslash must be followed by '.' or '\\\\'")) << bad.err;
}

// --backend pread reads without mapping, with the same results.
TEST_F(MigrateCliTest, ReadsWithPositionalReads) {
  for (const std::string& in : {kFixtures + "training.pt", kFixtures + "legacy_views.pt", kFixtures + "scripted.pt",
                                kFixtures + "state_dict.expected.safetensors"}) {
    SCOPED_TRACE(in);
    const std::string out = dir_.file("out.safetensors");
    const Result r = run({"convert", in, out, "--backend", "pread"});
    ASSERT_EQ(r.code, 0) << r.err;
    const Result same = run({"diff", in, out, "--backend", "pread"});
    EXPECT_EQ(same.code, 0) << same.out << same.err;
  }
  EXPECT_EQ(run({"convert", kFixtures + "training.pt", dir_.file("y.safetensors"), "--backend", "mapped"}).code, 2);
}

TEST_F(MigrateCliTest, RefusesHostileAndMalformedFilesWithOneLine) {
  const Result hostile = run({"convert", kFixtures + "hostile_reduce.pt", dir_.file("x.safetensors")});
  EXPECT_EQ(hostile.code, 1);
  EXPECT_TRUE(contains(hostile.err, "'posix.system' is not allowed")) << hostile.err;
  EXPECT_FALSE(fs::exists(dir_.file("x.safetensors")));
  std::string cut = st::test::read_bytes(kFixtures + "legacy.pt");
  cut.pop_back();
  st::test::write_bytes(dir_.file("cut.pt"), cut);
  const Result legacy = run({"convert", dir_.file("cut.pt"), dir_.file("y.safetensors")});
  EXPECT_EQ(legacy.code, 1);
  EXPECT_TRUE(contains(legacy.err, "cut.pt")) << legacy.err;
  EXPECT_TRUE(contains(legacy.err, "the file ends inside storage")) << legacy.err;
  EXPECT_FALSE(fs::exists(dir_.file("y.safetensors")));
  const Result missing = run({"convert", kFixtures + "training.pt", dir_.file("z.safetensors"), "--key", "nope"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_TRUE(contains(missing.err, "no key 'nope' (keys: model, optimizer, epoch, note)")) << missing.err;
}

// --- safetensors sets and files: the same pipeline as pickles -----------------------

const std::string kPythonSet = std::string(SAFETENSORS_TEST_DATA_DIR) + "/sharded/python_set";

// A set written by Python's safetensors (data/sharded/make_python_set.py)
// merged into one file: the summary names its format and the metadata key its
// shards disagree on, with every value and the shards giving it.
TEST_F(MigrateCliTest, ConvertMergesAPythonSetAndReportsMetadataItsShardsDisagreeOn) {
  const std::string out = dir_.file("merged.safetensors");
  const Result r = run({"convert", kPythonSet, out});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "(sharded safetensors set) -> " + out + ": 4 tensors, 76 bytes, ")) << r.out;
  EXPECT_TRUE(contains(r.out, "  shared tensors written once (recorded in the metadata): lm_head.weight -> "
                              "embed.weight\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "  metadata the set's files disagree on, the first value kept: producer: "
                              "\"trainer 1\" (model-00001-of-00002.safetensors), \"trainer 2\" "
                              "(model-00002-of-00002.safetensors)\n")) << r.out;
  const st::SafeOpen file(out, st::LoadOptions().unsupported_as_bytes(true));
  EXPECT_EQ(file.metadata().at("producer"), "trainer 1");
  EXPECT_EQ(file.metadata().at("model_type"), "toy");  // the index's
  EXPECT_EQ(file.info("f8").dtype, st::Dtype::F8_E4M3);
  const Result same = run({"diff", kPythonSet + "/model.safetensors.index.json", out});
  EXPECT_EQ(same.code, 0) << same.out << same.err;
  EXPECT_TRUE(contains(same.out, "equal: 5 identical")) << same.out;

  // --metadata settles the key: no conflict left to report.
  const Result given = run({"convert", kPythonSet, dir_.file("given.safetensors"), "--metadata", "producer=me"});
  ASSERT_EQ(given.code, 0) << given.err;
  EXPECT_FALSE(contains(given.out, "disagree")) << given.out;
  EXPECT_EQ(st::SafeOpen(dir_.file("given.safetensors")).metadata().at("producer"), "me");
}

// --no-values writes no non-tensor value as metadata and lists each as not converted.
TEST_F(MigrateCliTest, NoValuesKeepsNoNonTensorValue) {
  const std::string out = dir_.file("tensors.safetensors");
  const Result r = run({"convert", kFixtures + "training.pt", out, "--no-values"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(contains(r.out, "kept as metadata")) << r.out;
  EXPECT_TRUE(contains(r.out, "  not tensors, not converted: optimizer (")) << r.out;
  EXPECT_TRUE(contains(r.out, "epoch (int ")) << r.out;
  EXPECT_EQ(st::SafeOpen(out).metadata(), (st::Metadata{{"format", "pt"}}));
  const Result help = run({"convert", "--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_TRUE(contains(help.out, "--no-values")) << help.out;
}

// The non-tensor values are names of the checkpoint's tree: --include and
// --exclude select them, --strip-prefix and --add-prefix rename them; the
// metadata given is never renamed.
TEST_F(MigrateCliTest, ConvertSelectsAndRenamesNonTensorValuesAsTensors) {
  const std::string out = dir_.file("renamed.safetensors");
  const Result r = run({"convert", kFixtures + "training.pt", out, "--exclude", "epoch", "--add-prefix", "ckpt.",
                        "--metadata", "by=me"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "2 non-tensor values kept as metadata: ckpt.optimizer, ckpt.note\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "  left out: 1 (epoch)\n")) << r.out;
  const st::Metadata metadata = st::SafeOpen(out).metadata();
  EXPECT_EQ(metadata.count("ckpt.optimizer") + metadata.count("ckpt.note"), 2u);
  EXPECT_EQ(metadata.count("epoch") + metadata.count("ckpt.epoch"), 0u);
  EXPECT_EQ(metadata.at("by"), "me");
}

// A safetensors file goes through the same pipeline as a pickle: the same
// summary, and with nothing asked of it the same bytes out as in.
TEST_F(MigrateCliTest, ConvertOfASafetensorsFileWritesItsBytes) {
  const std::string in = dir_.file("in.safetensors");
  st::save_file({{"w", at::arange(6, at::kFloat)}, {"s", at::full({}, 3, at::kLong)}}, in,
                st::Metadata{{"note", "x"}});
  const std::string out = dir_.file("out.safetensors");
  const Result r = run({"convert", in, out});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "converted " + in + " (safetensors) -> " + out + ": 2 tensors, 32 bytes, "))
      << r.out;
  EXPECT_EQ(st::test::read_bytes(out), st::test::read_bytes(in));
}

}  // namespace
