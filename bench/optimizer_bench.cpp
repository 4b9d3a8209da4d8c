// Save and load of a GPT-2-small-sized Adam state (124M parameters: about
// 1 GB of exp_avg and exp_avg_sq) with save_optimizer / load_optimizer against
// torch::save(optimizer) / torch::load(optimizer). Each is run once to warm
// the page cache and the allocator, then timed once.
//
//   optimizer_bench [FOLDER]    (default: the system's temporary folder)

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "safetensors/optimizer.hpp"

namespace {

std::vector<torch::Tensor> gpt2_small() {
  std::vector<std::vector<std::int64_t>> shapes = {{50257, 768}, {1024, 768}};
  for (int layer = 0; layer < 12; ++layer) {
    for (auto s : std::vector<std::vector<std::int64_t>>{{768}, {768}, {768, 2304}, {2304}, {768, 768}, {768},
                                                         {768}, {768}, {768, 3072}, {3072}, {3072, 768}, {768}})
      shapes.push_back(s);
  }
  shapes.push_back({768});
  shapes.push_back({768});
  std::vector<torch::Tensor> params;
  for (const auto& s : shapes) params.push_back(torch::randn(s).requires_grad_(true));
  return params;
}

double seconds(const std::function<void()>& f) {
  f();  // warm
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  const fs::path folder = argc > 1 ? fs::path(argv[1]) : fs::temp_directory_path();
  const std::string ours = (folder / "optimizer_bench.safetensors").string();
  const std::string theirs = (folder / "optimizer_bench.pt").string();

  std::vector<torch::Tensor> params = gpt2_small();
  std::int64_t count = 0;
  for (const auto& p : params) count += p.numel();
  torch::optim::Adam adam(params);
  for (auto& p : params) p.mutable_grad() = torch::randn_like(p);
  adam.step();
  const double gb = 2.0 * static_cast<double>(count) * 4 / 1e9;
  std::printf("Adam state of %lld parameters: %.2f GB of tensors\n", static_cast<long long>(count), gb);

  torch::optim::Adam target(params);
  const auto report = [&](const char* what, double s) {
    std::printf("%-40s %7.3f s  %6.2f GB/s\n", what, s, gb / s);
  };
  report("save_optimizer (fsync)", seconds([&] { safetensors::save_optimizer(adam, ours); }));
  report("save_optimizer (no fsync)", seconds([&] {
           safetensors::save_optimizer(adam, ours, std::nullopt,
                                       safetensors::OptimizerSaveOptions().fsync(false));
         }));
  report("torch::save(optimizer)", seconds([&] { torch::save(adam, theirs); }));
  report("load_optimizer", seconds([&] { safetensors::load_optimizer(target, ours); }));
  report("torch::load(optimizer)", seconds([&] { torch::load(target, theirs); }));
  fs::remove(ours);
  fs::remove(theirs);
  return 0;
}
