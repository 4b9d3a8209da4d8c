// Many threads reading at once, from one SafeOpen (each backend) and from
// separate handles, whole tensors and slices: every result must equal what a
// single thread reads. Run under ThreadSanitizer by tools/sanitize.sh.

#include <atomic>
#include <functional>
#include <thread>

#include "safetensors/load.hpp"
#include "safetensors/save.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

using at::indexing::Slice;
using test::bitwise_equal;
using test::TempDir;

constexpr int kThreads = 8;
constexpr int kRounds = 10;

// Whole tensors, then a few slices of each, in a fixed order.
std::vector<at::Tensor> read_all(const SafeOpen& f, int variant) {
  std::vector<at::Tensor> out;
  for (const std::string& name : f.keys()) {
    out.push_back(f.get_tensor(name));
    const TensorSlice s = f.get_slice(name);
    out.push_back(s({Slice(variant % 3, at::indexing::None, 2)}));
    out.push_back(s({Slice(), Slice(1, 7, 3)}));  // many small runs
    out.push_back(s({-1}));
  }
  return out;
}

class Concurrency : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    path_ = dir_.file("m.safetensors");
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (int i = 0; i < 12; ++i)
      tensors.emplace_back("t" + std::to_string(i), at::randn({37 + i, 9}));
    tensors.emplace_back("ints", at::arange(40 * 8, at::kLong).reshape({40, 8}));
    tensors.emplace_back("half", at::randn({33, 8}).to(at::kHalf));
    save_file(tensors, path_);
    SafeOpen f(path_, LoadOptions().backend(GetParam()));
    for (int v = 0; v < kThreads; ++v) expected_.push_back(read_all(f, v));
  }

  // Runs `body(thread index)` on kThreads threads at once; counts mismatches.
  int mismatches(const std::function<std::vector<at::Tensor>(int)>& body) {
    std::atomic<int> bad{0};
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int k = 0; k < kThreads; ++k)
      threads.emplace_back([&, k] {
        ++ready;
        while (ready.load() < kThreads) std::this_thread::yield();  // start together
        for (int round = 0; round < kRounds; ++round) {
          const std::vector<at::Tensor> got = body(k);
          const std::vector<at::Tensor>& want = expected_[k];
          if (got.size() != want.size()) {
            ++bad;
            continue;
          }
          for (std::size_t i = 0; i < got.size(); ++i)
            if (!bitwise_equal(got[i], want[i])) ++bad;
        }
      });
    for (auto& t : threads) t.join();
    return bad.load();
  }

  TempDir dir_;
  std::string path_;
  std::vector<std::vector<at::Tensor>> expected_;  // per thread, read by one thread
};

TEST_P(Concurrency, OneHandleManyThreads) {
  SafeOpen f(path_, LoadOptions().backend(GetParam()));
  EXPECT_EQ(mismatches([&](int k) { return read_all(f, k); }), 0);
}

TEST_P(Concurrency, CopiesOfOneHandleManyThreads) {
  SafeOpen f(path_, LoadOptions().backend(GetParam()));
  EXPECT_EQ(mismatches([&](int k) {
              SafeOpen copy = f;  // copies share the open file
              return read_all(copy, k);
            }),
            0);
}

TEST_P(Concurrency, SeparateHandlesManyThreads) {
  EXPECT_EQ(mismatches([&](int k) {
              return read_all(SafeOpen(path_, LoadOptions().backend(GetParam())), k);
            }),
            0);
}

TEST_P(Concurrency, TensorsOutliveTheirHandleAcrossThreads) {
  // Tensors made on one thread, their handle dropped, read on others.
  std::vector<std::vector<at::Tensor>> made;
  {
    SafeOpen f(path_, LoadOptions().backend(GetParam()));
    for (int k = 0; k < kThreads; ++k) made.push_back(read_all(f, k));
  }
  EXPECT_EQ(mismatches([&](int k) { return made[k]; }), 0);
}

INSTANTIATE_TEST_SUITE_P(Backends, Concurrency, ::testing::Values(Backend::Mmap, Backend::Pread),
                         [](const auto& info) {
                           return std::string(info.param == Backend::Mmap ? "Mmap" : "Pread");
                         });

}  // namespace
}  // namespace safetensors
