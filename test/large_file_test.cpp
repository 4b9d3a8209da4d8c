// Files larger than the machine's memory: a sparse file of twice RAM + swap
// (it costs no disk) must open, list, slice and load zero-copy through every
// reader that maps files, with in-place writes kept private.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include "safetensors/load.hpp"
#include "safetensors/migrate.hpp"
#include "safetensors/module.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

using test::TempDir;
using namespace at::indexing;

int overcommit_mode() {
  std::ifstream in("/proc/sys/vm/overcommit_memory");
  int mode = -1;
  in >> mode;
  return mode;
}

// A sparse safetensors file: "head" (4 F32: 1, 2, 3, 4), "huge" (`huge_bytes`
// of U8, a hole but for its last byte, 9), then "tail" (4 F32: 5, 6, 7, 8).
class LargerThanMemory : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::uint64_t memory = test::meminfo_bytes("MemTotal") + test::meminfo_bytes("SwapTotal");
    ASSERT_GT(memory, 0u);
    huge_bytes_ = ((2 * memory) / 4096 + 1) * 4096;
    path_ = dir_.file("larger-than-memory.safetensors");
    std::string json = "{\"head\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                       "\"huge\":{\"dtype\":\"U8\",\"shape\":[" + std::to_string(huge_bytes_) +
                       "],\"data_offsets\":[16," + std::to_string(16 + huge_bytes_) +
                       "]},\"tail\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[" +
                       std::to_string(16 + huge_bytes_) + "," + std::to_string(32 + huge_bytes_) + "]}}";
    json.resize((json.size() + 7) / 8 * 8, ' ');
    data_offset_ = 8 + json.size();
    const std::string prefix = test::make_file(json);
    const float head[4] = {1, 2, 3, 4}, tail[4] = {5, 6, 7, 8};
    const unsigned char nine = 9;
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, prefix.data(), prefix.size(), 0), static_cast<ssize_t>(prefix.size()));
    ASSERT_EQ(::pwrite(fd, head, sizeof head, data_offset_), static_cast<ssize_t>(sizeof head));
    ASSERT_EQ(::pwrite(fd, &nine, 1, data_offset_ + 16 + huge_bytes_ - 1), 1);
    const bool sized = ::pwrite(fd, tail, sizeof tail, data_offset_ + 16 + huge_bytes_) ==
                       static_cast<ssize_t>(sizeof tail);
    const int err = errno;
    ::close(fd);
    if (!sized) GTEST_SKIP() << "the temporary folder's filesystem cannot hold a sparse file of "
                             << huge_bytes_ << " bytes: " << std::strerror(err);
    struct stat st;
    ASSERT_EQ(::stat(path_.c_str(), &st), 0);
    ASSERT_LT(st.st_blocks * 512, 1 << 20) << "the file is not sparse";
    ASSERT_GT(static_cast<std::uint64_t>(st.st_size), 2 * memory);
  }

  // Bytes of the file itself, read with pread: what in-place writes must not change.
  std::string file_bytes(std::uint64_t offset, std::size_t n) const {
    std::string out(n, '\0');
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::pread(fd, out.data(), n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
    ::close(fd);
    return out;
  }

  static void expect_floats(const at::Tensor& t, std::initializer_list<float> values) {
    ASSERT_EQ(t.scalar_type(), at::kFloat);
    EXPECT_TRUE(t.equal(at::tensor(std::vector<float>(values))));
  }

  TempDir dir_;
  std::string path_;
  std::uint64_t huge_bytes_ = 0;
  std::uint64_t data_offset_ = 0;
};

// Where the kernel charges a writable private mapping in full, mapping fails,
// and must say why and what to do instead.
bool refused_under_strict_overcommit(const std::function<void()>& open) {
  if (overcommit_mode() != 2) return false;
  try {
    open();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Io);
    EXPECT_NE(std::string(e.what()).find("overcommit"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Backend::Pread"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--backend pread"), std::string::npos) << e.what();
  }
  return true;
}

TEST_F(LargerThanMemory, OpensListsSlicesAndLoadsZeroCopy) {
  if (refused_under_strict_overcommit([&] { SafeOpen f(path_); })) return;
  SafeOpen f(path_);
  EXPECT_EQ(f.keys(), (std::vector<std::string>{"head", "huge", "tail"}));
  EXPECT_EQ(f.info("huge").nbytes(), huge_bytes_);
  expect_floats(f.get_tensor("tail"), {5, 6, 7, 8});

  const at::Tensor end = f.get_slice("huge")({Slice(-2, None)});
  EXPECT_TRUE(end.equal(at::tensor({0, 9}, at::kByte)));

  TensorDict all = load_file(path_);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all["huge"].numel(), static_cast<std::int64_t>(huge_bytes_));
  EXPECT_EQ(all["huge"][static_cast<std::int64_t>(huge_bytes_) - 1].item<std::uint8_t>(), 9);
  expect_floats(all["head"], {1, 2, 3, 4});
}

TEST_F(LargerThanMemory, InPlaceWritesStayPrivate) {
  if (refused_under_strict_overcommit([&] { load_file(path_); })) return;
  const std::string before = file_bytes(data_offset_, 16) + file_bytes(data_offset_ + 16 + huge_bytes_ - 1, 17);
  {
    TensorDict all = load_file(path_);
    all["head"].add_(10);
    all["huge"][static_cast<std::int64_t>(huge_bytes_) - 1] = 200;
    all["huge"][0] = 100;
    expect_floats(all["head"], {11, 12, 13, 14});
    EXPECT_EQ(all["huge"][0].item<std::uint8_t>(), 100);
    // Another mapping of the file still sees the file.
    expect_floats(load_file(path_)["head"], {1, 2, 3, 4});
  }
  EXPECT_EQ(file_bytes(data_offset_, 16) + file_bytes(data_offset_ + 16 + huge_bytes_ - 1, 17), before);
}

TEST_F(LargerThanMemory, MigrationReadersMapIt) {
  if (refused_under_strict_overcommit([&] { detect_format(path_); })) return;
  EXPECT_EQ(detect_format(path_), CheckpointFormat::Safetensors);
  const Checkpoint ckpt = read_checkpoint(path_);
  ASSERT_EQ(ckpt.tensors.size(), 3u);
  EXPECT_EQ(ckpt.tensors["huge"].numel(), static_cast<std::int64_t>(huge_bytes_));
  expect_floats(ckpt.tensors["tail"], {5, 6, 7, 8});
}

TEST_F(LargerThanMemory, ZeroCopyModuleLoadMapsIt) {
  if (refused_under_strict_overcommit([&] { SafeOpen f(path_); })) return;
  torch::nn::Module module;
  const auto n = static_cast<std::int64_t>(huge_bytes_);
  // Parameters of the right shapes that take no memory of their own.
  module.register_buffer("head", at::zeros({1}).expand({4}));
  module.register_buffer("huge", at::zeros({1}, at::kByte).expand({n}));
  module.register_buffer("tail", at::zeros({1}).expand({4}));
  const LoadReport report =
      load_state_dict(module, path_, StateDictLoadOptions().mode(LoadMode::ZeroCopy));
  EXPECT_TRUE(report.ok()) << report.describe();
  EXPECT_EQ(module.named_buffers()["huge"][n - 1].item<std::uint8_t>(), 9);
  expect_floats(module.named_buffers()["tail"], {5, 6, 7, 8});
}

}  // namespace
}  // namespace safetensors
