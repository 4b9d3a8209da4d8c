// Tests of `safetensors-torch convert` on torch.save files and of
// `safetensors-torch diff`: the tool is run as a child process.

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <vector>

#include "safetensors/safetensors.hpp"
#include "test_util.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
namespace st = safetensors;
using st::test::TempDir;

const std::string kFixtures = std::string(SAFETENSORS_TEST_DATA_DIR) + "/pickle/";

struct Result {
  int code = -1;
  std::string out, err;
};

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

class MigrateCliTest : public ::testing::Test {
 protected:
  // Runs the tool with `args`, stdin empty, stdout and stderr captured.
  Result run(std::vector<std::string> args) const {
    const std::string out_path = dir_.file(".stdout"), err_path = dir_.file(".stderr");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    args.insert(args.begin(), SAFETENSORS_CLI_PATH);
    std::vector<char*> argv;
    for (std::string& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    Result r;
    pid_t pid = 0;
    const int spawned = posix_spawn(&pid, SAFETENSORS_CLI_PATH, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) {
      ADD_FAILURE() << "cannot run " << SAFETENSORS_CLI_PATH;
      return r;
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = st::test::read_bytes(out_path);
    r.err = st::test::read_bytes(err_path);
    return r;
  }

  TempDir dir_;
};

TEST_F(MigrateCliTest, ConvertsATrainingCheckpointAndReportsWhatItSkipped) {
  const std::string out = dir_.file("all.safetensors");
  const Result r = run({"convert", kFixtures + "training.pt", out});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "(torch.save (zip))")) << r.out;
  EXPECT_TRUE(contains(r.out, "8 tensors")) << r.out;
  EXPECT_TRUE(contains(r.out, "not tensors, not converted: optimizer (dict of 2), epoch (int 3), note (str 'hello')"))
      << r.out;
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

TEST_F(MigrateCliTest, RefusesHostileAndLegacyFilesWithOneLine) {
  const Result hostile = run({"convert", kFixtures + "hostile_reduce.pt", dir_.file("x.safetensors")});
  EXPECT_EQ(hostile.code, 1);
  EXPECT_TRUE(contains(hostile.err, "'posix.system' is not allowed")) << hostile.err;
  EXPECT_FALSE(fs::exists(dir_.file("x.safetensors")));
  const Result legacy = run({"convert", kFixtures + "legacy.pt", dir_.file("y.safetensors")});
  EXPECT_EQ(legacy.code, 1);
  EXPECT_TRUE(contains(legacy.err, "re-save it")) << legacy.err;
  const Result missing = run({"convert", kFixtures + "training.pt", dir_.file("z.safetensors"), "--key", "nope"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_TRUE(contains(missing.err, "no key 'nope' (keys: model, optimizer, epoch, note)")) << missing.err;
}

}  // namespace
