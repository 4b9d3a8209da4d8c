// Load and save timings against what users would use instead, measured side
// by side in one run: LibTorch's own archive (torch::save / torch::load), a
// plain memcpy of the same bytes, and a plain write() of the same bytes.
//
//   bench [--dir DIR] [--reps N] [--only NAME]
//   bench --file FILE [--reps N]      our figures on an existing file (see
//                                     tools/bench-reference.sh)
//
// Workloads are generated: a GPT-2-small-shaped state dict (124M parameters)
// in F32 and BF16, a LoRA-like file of 1000 [32, 32] tensors, and a header of
// 100,000 small tensors; "module-gpt2" loads and saves that F32 state dict as
// a torch::nn::Module (load_state_dict / save_state_dict against torch::load /
// torch::save of the module), with the peak memory each load adds, and as a
// sharded set (100 MB shards);
// "cuda-gpt2" (when a GPU is present) loads that file onto the GPU against a
// plain copy of the same bytes from pinned memory, the link's speed. Every
// figure is the median of N repetitions with a warm page cache, each into
// fresh memory (malloc_trim before each).

#include <fcntl.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/cuda.h>
#include <torch/nn/module.h>
#include <torch/serialize.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <safetensors/safetensors.hpp>

#include "support/memory.hpp"
#include "support/module.hpp"

namespace st = safetensors;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

struct Workload {
  std::string name;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::size_t bytes = 0;
};

// GPT-2 small: 12 layers, d=768, vocab 50257, 1024 positions (124M parameters).
Workload gpt2(c10::ScalarType dtype) {
  Workload w{dtype == at::kFloat ? "gpt2-f32" : "gpt2-bf16", {}, 0};
  const std::int64_t d = 768, vocab = 50257, positions = 1024;
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape) {
    at::Tensor t = at::randn(shape).to(dtype);
    w.bytes += t.nbytes();
    w.tensors.emplace_back(name, t);
  };
  add("wte.weight", {vocab, d});
  add("wpe.weight", {positions, d});
  for (int l = 0; l < 12; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", {d});
    add(p + "ln_1.bias", {d});
    add(p + "attn.c_attn.weight", {d, 3 * d});
    add(p + "attn.c_attn.bias", {3 * d});
    add(p + "attn.c_proj.weight", {d, d});
    add(p + "attn.c_proj.bias", {d});
    add(p + "ln_2.weight", {d});
    add(p + "ln_2.bias", {d});
    add(p + "mlp.c_fc.weight", {d, 4 * d});
    add(p + "mlp.c_fc.bias", {4 * d});
    add(p + "mlp.c_proj.weight", {4 * d, d});
    add(p + "mlp.c_proj.bias", {d});
  }
  add("ln_f.weight", {d});
  add("ln_f.bias", {d});
  return w;
}

Workload many(const std::string& name, int count, std::vector<std::int64_t> shape) {
  Workload w{name, {}, 0};
  for (int i = 0; i < count; ++i) {
    at::Tensor t = at::randn(shape);
    w.bytes += t.nbytes();
    w.tensors.emplace_back("base_model.model.layers." + std::to_string(i) + ".lora_A.weight", t);
  }
  return w;
}

// One run, nothing before it.
double seconds_once(const std::function<void()>& f) {
  const auto start = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median_seconds(int reps, const std::function<void()>& f) {
  std::vector<double> times;
  f();  // warm-up: page cache, allocator, lazy initialisation
  for (int i = 0; i < reps; ++i) {
    // Free memory goes back to the kernel first, so that every operation
    // that allocates gets fresh pages, as a load at startup does; otherwise
    // a figure depends on what earlier rows left in malloc's free lists.
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    times.push_back(seconds_once(f));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

long peak_rss_kb() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

// The resident memory an operation adds at its peak, in MB (mapped file pages
// that the operation touches count, as they do for the process).
double peak_added_mb(const std::function<void()>& f) { return st::test::peak_added_kb(f) / 1e3; }

// A module holding the tensors under their dotted names (fresh memory).
std::shared_ptr<torch::nn::Module> make_module(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  return st::test::make_module(tensors, st::test::ModuleFill::copies);
}

// Reads a byte of every cache line so that lazily mapped pages are really
// loaded; the sum goes to a volatile so the reads cannot be optimised away.
volatile std::uint64_t touch_sink;
void touch(const st::TensorDict& tensors) {
  std::uint64_t sum = 0;
  for (const auto& item : tensors) {
    const auto* p = static_cast<const std::uint8_t*>(item.value().data_ptr());
    const std::size_t n = item.value().nbytes();
    for (std::size_t i = 0; i < n; i += 64) sum += p[i];
  }
  touch_sink = sum;
}

void write_all(int fd, const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t put = ::write(fd, p, n);
    if (put <= 0) throw std::runtime_error("write failed");
    p += put;
    n -= static_cast<std::size_t>(put);
  }
}

struct Row {
  std::string workload, what;
  double seconds;
  std::string baseline;  // the row this one is compared with
};

class Report {
 public:
  void add(const std::string& workload, const std::string& what, double seconds,
           const std::string& baseline = "") {
    rows_.push_back({workload, what, seconds, baseline});
    std::printf("%-12s %-34s %10.3f ms\n", workload.c_str(), what.c_str(), seconds * 1e3);
    std::fflush(stdout);
  }
  void print_ratios() const {
    std::printf("\n%-12s %-34s %10s  %s\n", "workload", "operation", "ms",
                "compared with (its time / this time)");
    for (const Row& r : rows_) {
      std::printf("%-12s %-34s %10.3f", r.workload.c_str(), r.what.c_str(), r.seconds * 1e3);
      if (!r.baseline.empty())
        for (const Row& b : rows_)
          if (b.workload == r.workload && b.what == r.baseline)
            std::printf("  %7.2fx  %s", b.seconds / r.seconds, b.what.c_str());
      std::printf("\n");
    }
  }

 private:
  std::vector<Row> rows_;
};

void run(const Workload& w, const fs::path& dir, int reps, Report& report) {
  const std::string file = (dir / (w.name + ".safetensors")).string();
  const std::string archive = (dir / (w.name + ".pt")).string();
  const std::string raw = (dir / (w.name + ".bin")).string();
  std::printf("== %s: %zu tensors, %.1f MB\n", w.name.c_str(), w.tensors.size(), w.bytes / 1e6);

  // --- saving
  const st::NamedTensors named(w.tensors);
  report.add(w.name, "save_file", median_seconds(reps, [&] { st::save_file(named, file); }),
             "write() of the same bytes");
  report.add(w.name, "save_file (no fsync)",
             median_seconds(reps, [&] { st::save_file(named, file, std::nullopt, st::SaveOptions().fsync(false)); }),
             "write() of the same bytes");
  report.add(w.name, "write() of the same bytes", median_seconds(reps, [&] {
               int fd = ::open(raw.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
               for (const auto& [name, t] : w.tensors) write_all(fd, t.data_ptr(), t.nbytes());
               ::fsync(fd);
               ::close(fd);
             }));
  // LibTorch's archive slows down with the number of entries: at 100,000
  // tensors one torch::save did not finish in 10 minutes.
  const bool archive_baseline = w.tensors.size() <= 10'000;
  if (archive_baseline)
  report.add(w.name, "torch::save (OutputArchive)", median_seconds(reps, [&] {
               torch::serialize::OutputArchive out;
               for (const auto& [name, t] : w.tensors) out.write(name, t);
               out.save_to(archive);
             }),
             "save_file");

  // --- loading
  report.add(w.name, "load_file (zero-copy)", median_seconds(reps, [&] { st::load_file(file); }),
             "torch::load (InputArchive)");
  report.add(w.name, "load_file + touch every page",
             median_seconds(reps, [&] { touch(st::load_file(file)); }), "memcpy of the same bytes");
  report.add(w.name, "load_file copy(true) (pread)",
             median_seconds(reps, [&] { st::load_file(file, st::LoadOptions().copy(true)); }),
             "memcpy of the same bytes");
  report.add(w.name, "load_file copy(true), huge pages",
             median_seconds(reps, [&] { st::load_file(file, st::LoadOptions().copy(true).huge_pages(true)); }),
             "memcpy of the same bytes");
  report.add(w.name, "load_file copy(true), mmap backend",
             median_seconds(reps, [&] { st::load_file(file, st::LoadOptions().copy(true).backend(st::Backend::Mmap)); }),
             "memcpy of the same bytes");
  report.add(w.name, "load_file pread backend",
             median_seconds(reps, [&] { st::load_file(file, st::LoadOptions().backend(st::Backend::Pread)); }),
             "memcpy of the same bytes");
  report.add(w.name, "SafeOpen + get_tensor(one)", median_seconds(reps, [&] {
               st::SafeOpen f(file);
               f.get_tensor(w.tensors.front().first);
             }));
  {
    const at::Tensor& big = w.tensors.front().second;
    using at::indexing::Slice;
    report.add(w.name, "get_slice(first tensor)[0:n/8]", median_seconds(reps, [&] {
                 st::SafeOpen f(file);
                 f.get_slice(w.tensors.front().first)({Slice(0, std::max<std::int64_t>(1, big.size(0) / 8))});
               }));
  }
  // Like a load, every copy is kept until all are made: freeing each one at
  // once would let the next reuse memory that is already faulted in.
  report.add(w.name, "memcpy of the same bytes", median_seconds(reps, [&] {
               std::vector<at::Tensor> copies;
               copies.reserve(w.tensors.size());
               for (const auto& [name, t] : w.tensors) {
                 copies.push_back(at::empty_like(t));
                 std::memcpy(copies.back().data_ptr(), t.data_ptr(), t.nbytes());
               }
             }));
  if (archive_baseline)
  report.add(w.name, "torch::load (InputArchive)", median_seconds(reps, [&] {
               torch::serialize::InputArchive in;
               in.load_from(archive);
               std::vector<at::Tensor> loaded(w.tensors.size());
               for (std::size_t i = 0; i < w.tensors.size(); ++i) in.read(w.tensors[i].first, loaded[i]);
             }));
  fs::remove(file);
  fs::remove(archive);
  fs::remove(raw);
}

// A whole module: what a C++ deployment calls instead of torch::load(module, path).
void run_module(const Workload& w, const fs::path& dir, int reps, Report& report) {
  const std::string file = (dir / "module.safetensors").string();
  const std::string archive = (dir / "module.pt").string();
  const std::string name = "module-gpt2";
  std::printf("== %s: %zu parameters, %.1f MB\n", name.c_str(), w.tensors.size(), w.bytes / 1e6);
  std::shared_ptr<torch::nn::Module> module = make_module(w.tensors);
  report.add(name, "save_state_dict", median_seconds(reps, [&] { st::save_state_dict(*module, file); }),
             "torch::save(module)");
  report.add(name, "torch::save(module)", median_seconds(reps, [&] { torch::save(module, archive); }));

  using Mode = st::StateDictLoadOptions;
  const std::vector<std::pair<std::string, Mode>> loads = {
      {"load_state_dict copy (pread)", Mode()},
      {"load_state_dict copy (mmap)", Mode().backend(st::Backend::Mmap)},
      {"load_state_dict zero-copy", Mode().mode(st::LoadMode::ZeroCopy)},
  };
  for (const auto& [what, options] : loads)
    report.add(name, what, median_seconds(reps, [&] { st::load_state_dict(*module, file, options); }),
               "torch::load(module)");
  report.add(name, "torch::load(module)", median_seconds(reps, [&] { torch::load(module, archive); }));

  // The same model as a sharded set (index + 100 MB shards), as large
  // checkpoints are published, against the single file.
  const std::string sharded = (dir / "module-sharded").string();
  fs::create_directories(sharded);  // save_sharded writes into an existing folder
  report.add(name, "save_state_dict, 100 MB shards",
             median_seconds(reps, [&] {
               st::save_state_dict(*module, sharded, std::nullopt,
                                   st::StateDictSaveOptions().max_shard_size(100'000'000));
             }),
             "save_state_dict");
  report.add(name, "load_state_dict copy, 100 MB shards",
             median_seconds(reps, [&] { st::load_state_dict(*module, sharded); }), "load_state_dict copy (pread)");

  // Peak memory added by one load into a module that already exists (the
  // model's own memory is not counted). Each on a fresh module, after the
  // timings, with the file in the page cache.
  std::printf("\n%-12s %-34s %10s\n", "workload", "load into an existing module", "peak +MB");
  auto memory = [&](const std::string& what, const std::function<void(torch::nn::Module&)>& load) {
    auto fresh = make_module(w.tensors);
    std::printf("%-12s %-34s %10.1f\n", name.c_str(), what.c_str(), peak_added_mb([&] { load(*fresh); }));
  };
  for (const auto& [what, options] : loads)
    memory(what, [&, &options = options](torch::nn::Module& m) { st::load_state_dict(m, file, options); });
  memory("torch::load(module)", [&](torch::nn::Module& m) {
    std::shared_ptr<torch::nn::Module> ptr(&m, [](torch::nn::Module*) {});
    torch::load(ptr, archive);
  });
  std::printf("(largest parameter %.1f MB)\n\n", w.tensors.front().second.nbytes() / 1e6);
  fs::remove(file);
  fs::remove(archive);
  fs::remove_all(sharded);
}

// Loading onto the GPU, against the host-to-device copy of the same bytes
// from pinned memory (the most a load can reach) and from the mapped file's
// pageable memory (what a load without staging gets).
void run_cuda(const Workload& w, const fs::path& dir, int reps, Report& report) {
  const std::string name = "cuda-gpt2";
  const std::string file = (dir / "cuda.safetensors").string();
  st::save_file(st::NamedTensors(w.tensors), file, std::nullopt, st::SaveOptions().fsync(false));
  std::printf("== %s: %zu tensors, %.1f MB\n", name.c_str(), w.tensors.size(), w.bytes / 1e6);
  const c10::Device gpu(c10::kCUDA, 0);
  auto timed = [&](const std::function<void()>& f) {
    return median_seconds(reps, [&] {
      f();
      torch::cuda::synchronize();
    });
  };
  {
    at::Tensor pinned = at::empty({static_cast<std::int64_t>(w.bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    std::memset(pinned.data_ptr(), 1, w.bytes);
    report.add(name, "pinned memcpy of the same bytes", timed([&] { pinned.to(gpu); }));
  }
  report.add(name, "pageable .to(cuda) of the mapping", timed([&] {
               for (const auto& item : st::load_file(file)) item.value().to(gpu);
             }),
             "pinned memcpy of the same bytes");
  report.add(name, "load_file device(cuda)",
             timed([&] { st::load_file(file, st::LoadOptions().device(gpu)); }), "pinned memcpy of the same bytes");
  report.add(name, "load_file device(cuda) pread", timed([&] {
               st::load_file(file, st::LoadOptions().device(gpu).backend(st::Backend::Pread));
             }),
             "pinned memcpy of the same bytes");
  std::shared_ptr<torch::nn::Module> module = make_module(w.tensors);
  module->to(gpu);
  report.add(name, "load_state_dict, module on cuda",
             timed([&] { st::load_state_dict(*module, file); }), "pinned memcpy of the same bytes");
  std::printf("(for cuda-gpt2 the ratio is the fraction of the pinned copy's speed reached)\n");
  fs::remove(file);
}

}  // namespace

// Times our operations on an existing file and prints "ours OPERATION MS"
// lines, for tools/bench-reference.sh to set beside the Python reference's.
void run_on_file(const std::string& file, const fs::path& dir, int reps) {
  auto line = [](const char* what, double seconds) { std::printf("ours %s %.3f\n", what, seconds * 1e3); };
  // First, in a process that has allocated nothing large yet: what loading a
  // model at startup costs, every page of the tensors fresh from the kernel.
  line("load_file_copy_first", seconds_once([&] { st::load_file(file, st::LoadOptions().copy(true)); }));
  line("load_file", median_seconds(reps, [&] { st::load_file(file); }));
  line("load_file_copy", median_seconds(reps, [&] { st::load_file(file, st::LoadOptions().copy(true)); }));
  line("load_file_pread",
       median_seconds(reps, [&] { st::load_file(file, st::LoadOptions().backend(st::Backend::Pread)); }));
  const st::TensorDict tensors = st::load_file(file, st::LoadOptions().copy(true));
  const std::string out = (dir / "bench-resave.safetensors").string();
  line("save_file", median_seconds(reps, [&] { st::save_file(tensors, out); }));
  line("save_file_nofsync",
       median_seconds(reps, [&] { st::save_file(tensors, out, std::nullopt, st::SaveOptions().fsync(false)); }));
  fs::remove(out);
}

int run_bench(int argc, char** argv) {
  fs::path dir = fs::temp_directory_path();
  int reps = 5;
  std::string only, file;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--dir") dir = argv[i + 1];
    else if (flag == "--reps") reps = std::atoi(argv[i + 1]);
    else if (flag == "--only") only = argv[i + 1];
    else if (flag == "--file") file = argv[i + 1];
  }
  if (!file.empty()) {
    run_on_file(file, dir, reps);
    return 0;
  }
  at::manual_seed(0);
  std::printf("safetensors-torch %s, LibTorch %s, files in %s, median of %d\n", SAFETENSORS_TORCH_VERSION,
              st::torch_version().c_str(), dir.c_str(), reps);
  Report report;
  const std::vector<std::pair<std::string, std::function<Workload()>>> workloads = {
      {"gpt2-f32", [] { return gpt2(at::kFloat); }},
      {"gpt2-bf16", [] { return gpt2(at::kBFloat16); }},
      {"lora-1000", [] { return many("lora-1000", 1000, {32, 32}); }},
      {"header-100k", [] { return many("header-100k", 100000, {2}); }},
  };
  for (const auto& [name, make] : workloads)
    if (only.empty() || name == only) run(make(), dir, reps, report);
  if (only.empty() || only == "module-gpt2") run_module(gpt2(at::kFloat), dir, reps, report);
  if (only.empty() || only == "cuda-gpt2") {
    if (torch::cuda::is_available())
      run_cuda(gpt2(at::kFloat), dir, reps, report);
    else
      std::printf("== cuda-gpt2: no CUDA device, skipped\n");
  }
  report.print_ratios();
  std::printf("peak RSS %.1f MB\n", peak_rss_kb() / 1e3);
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run_bench(argc, argv);
  } catch (const std::exception& e) {  // a folder that does not exist, a full disk
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 1;
  }
}
