// Save and load of a GPT-2-small-sized Adam state (124M parameters: about
// 1 GB of exp_avg and exp_avg_sq) with save_optimizer / load_optimizer against
// torch::save(optimizer) / torch::load(optimizer), and against plain pread()s
// of the same bytes into fresh and into touched memory.
//
//   optimizer_bench [FOLDER] [REPS]   (default: the system's temporary folder, 3)
//
// Saves are run once to warm up, then timed once. Loads go into an optimizer
// that already holds a state of the same size (a load replaces it), each
// repetition after malloc_trim(0), so that every load gets fresh pages from
// the kernel instead of what an earlier row freed; warm with the file in the
// page cache, cold after fdatasync and posix_fadvise(DONTNEED) of the file.
// The median of REPS is printed, and the loads once more without
// malloc_trim, into what malloc kept of the state the previous load
// replaced (as an optimizer reloaded in a loop would). Peak memory: the parameters (0.5 GB), the
// state being replaced and the one being read (1 GB each), and the page
// cache's copies of the two files.

#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "safetensors/load.hpp"
#include "safetensors/optimizer.hpp"
#include "support/memory.hpp"

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
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The median of `reps` runs of `load`, each after malloc_trim(0) unless
// `reuse`, and after dropping `file` from the page cache when `cold`.
double timed(const std::function<void()>& load, const std::string& file, bool cold, int reps,
             bool reuse = false) {
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    if (!reuse) ::malloc_trim(0);
    if (cold) safetensors::test::drop_file_pages(file);
    times.push_back(seconds(load));
  }
  return median(times);
}

// Each tensor's bytes of a safetensors file, pread() on one thread into
// `into` (one byte tensor per tensor of the file).
void pread_all(const std::string& path, std::vector<torch::Tensor>& into, bool fresh) {
  const safetensors::SafeOpen file(path);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  if (fresh) into.clear();
  std::size_t i = 0;
  for (const safetensors::TensorInfo& t : file.header().tensors()) {
    const auto n = static_cast<std::size_t>(t.nbytes());
    if (fresh) into.push_back(torch::empty({static_cast<std::int64_t>(n)}, torch::kByte));
    auto* dst = static_cast<char*>(into[i++].data_ptr());
    std::uint64_t offset = file.header().data_offset() + t.begin;
    for (std::size_t done = 0; done < n;) {
      const ssize_t got = ::pread(fd, dst + done, n - done, static_cast<off_t>(offset + done));
      if (got <= 0) throw std::runtime_error("pread(" + path + ") failed");
      done += static_cast<std::size_t>(got);
    }
  }
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  const fs::path folder = argc > 1 ? fs::path(argv[1]) : fs::temp_directory_path();
  const int reps = argc > 2 ? std::max(1, std::atoi(argv[2])) : 3;
  const std::string ours = (folder / "optimizer_bench.safetensors").string();
  const std::string theirs = (folder / "optimizer_bench.pt").string();

  std::vector<torch::Tensor> params = gpt2_small();
  std::int64_t count = 0;
  for (const auto& p : params) count += p.numel();
  const double gb = 2.0 * static_cast<double>(count) * 4 / 1e9;
  std::printf("Adam state of %lld parameters: %.2f GB of tensors; %d intra-op threads; median of %d\n",
              static_cast<long long>(count), gb, at::get_num_threads(), reps);
  const auto report = [&](const char* what, double s) {
    std::printf("%-44s %7.3f s  %6.2f GB/s\n", what, s, gb / s);
  };
  const auto report2 = [&](const char* what, double warm, double cold) {
    std::printf("%-44s warm %7.3f s  %6.2f GB/s   cold %7.3f s  %6.2f GB/s\n", what, warm, gb / warm, cold,
                gb / cold);
  };
  {
    torch::optim::Adam adam(params);
    for (auto& p : params) p.mutable_grad() = torch::randn_like(p);
    adam.step();
    for (auto& p : params) p.mutable_grad() = torch::Tensor();
    const auto twice = [](const std::function<void()>& f) {
      f();  // warm
      return seconds(f);
    };
    report("save_optimizer (fsync)", twice([&] { safetensors::save_optimizer(adam, ours); }));
    report("save_optimizer (no fsync)", twice([&] {
             safetensors::save_optimizer(adam, ours, std::nullopt,
                                         safetensors::OptimizerSaveOptions().fsync(false));
           }));
    report("torch::save(optimizer) (no fsync)", twice([&] { torch::save(adam, theirs); }));
  }

  {
    std::vector<torch::Tensor> buffers;
    pread_all(ours, buffers, /*fresh=*/true);  // warm
    const auto fresh = [&] { pread_all(ours, buffers, true); };
    report2("pread() into fresh memory (one thread)", timed(fresh, ours, false, reps), timed(fresh, ours, true, reps));
    const auto touched = [&] { pread_all(ours, buffers, false); };
    report2("pread() into touched memory (one thread)", timed(touched, ours, false, reps),
            timed(touched, ours, true, reps));
  }

  torch::optim::Adam target(params);
  const auto load_ours = [&] { safetensors::load_optimizer(target, ours); };
  const auto load_theirs = [&] { torch::load(target, theirs); };
  load_ours();  // the state a load replaces
  report2("load_optimizer", timed(load_ours, ours, false, reps), timed(load_ours, ours, true, reps));
  report2("torch::load(optimizer)", timed(load_theirs, theirs, false, reps), timed(load_theirs, theirs, true, reps));
  // What the previous version of this benchmark measured: each load into the
  // pages malloc kept from the state the previous load replaced.
  report2("load_optimizer, no malloc_trim", timed(load_ours, ours, false, reps, true),
          timed(load_ours, ours, true, reps, true));
  report2("torch::load(optimizer), no malloc_trim", timed(load_theirs, theirs, false, reps, true),
          timed(load_theirs, theirs, true, reps, true));
  fs::remove(ours);
  fs::remove(theirs);
  return 0;
}
