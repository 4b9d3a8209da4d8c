// Load and save timings against what users would use instead, measured side
// by side in one run: LibTorch's own archive (torch::save / torch::load), a
// plain memcpy of the same bytes, and a plain write() of the same bytes.
//
//   bench [--dir DIR] [--reps N] [--only NAME]
//   bench --file FILE [--reps N]      our figures on an existing file (see
//                                     tools/bench-reference.sh)
//   bench --cold [--file FILE] [--dir DIR] [--reps N] [--file-pages-only]
//                                     cold loads: each in a fresh process,
//                                     the file's pages dropped just before
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
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
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

#include <CLI/CLI.hpp>
#include <ATen/ATen.h>
#include <torch/cuda.h>
#include <torch/nn/module.h>
#include <torch/serialize.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <safetensors/safetensors.hpp>

#include "support/memory.hpp"
#include "support/module.hpp"

extern char** environ;

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

// --- cold loads ---------------------------------------------------------------

// The loads --cold times, each in a process of its own.
const std::vector<std::string> kColdLoads = {"load_file+touch",          "load_file copy(true)",
                                             "read() into fresh memory", "torch::load (InputArchive)",
                                             "load_state_dict (module)", "torch::load(module)"};

// The module a service builds before it loads its weights: parameters of the
// file's names, shapes and dtypes, their memory already faulted in (zeros),
// as a constructed model's is. Only the header of the file is read.
std::shared_ptr<torch::nn::Module> module_shaped_like(const std::string& file) {
  const st::SafeOpen f(file);
  std::vector<std::pair<std::string, at::Tensor>> zeros;
  for (const st::TensorInfo& info : f.header().tensors()) {
    const std::vector<std::int64_t> shape(info.shape.begin(), info.shape.end());
    zeros.emplace_back(info.name, at::zeros(shape, at::TensorOptions(*st::to_torch_dtype(info.dtype))));
  }
  return make_module(zeros);
}

// Drops the page cache's copy of a file: its dirty pages are written first,
// since only clean pages can be dropped; with root and `whole_cache`, the
// machine's whole page cache too (what the kernel's readahead of neighbouring
// files would otherwise keep).
void drop_pages(const std::string& path, bool whole_cache) {
  st::test::drop_file_pages(path);
  if (whole_cache && ::geteuid() == 0) {
    ::sync();
    if (FILE* f = std::fopen("/proc/sys/vm/drop_caches", "w")) {
      std::fputs("1", f);
      std::fclose(f);
    }
  }
}

// torch::save(module) of the same weights, beside the tensors' archive.
std::string module_archive(const std::string& archive) { return archive + ".module"; }

// In the child: one load, timed from the first byte read to the last, printed
// as seconds on stdout.
int cold_child(const std::string& load, const std::string& file, const std::string& archive) {
  double seconds = 0;
  std::shared_ptr<torch::nn::Module> module;  // built before the clock starts
  if (load == kColdLoads[4] || load == kColdLoads[5]) module = module_shaped_like(file);
  if (load == kColdLoads[0]) {
    seconds = seconds_once([&] { touch(st::load_file(file)); });
  } else if (load == kColdLoads[1]) {
    seconds = seconds_once([&] { st::load_file(file, st::LoadOptions().copy(true)); });
  } else if (load == kColdLoads[2]) {
    seconds = seconds_once([&] {
      const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) throw std::runtime_error("cannot open " + file);
      const std::size_t size = static_cast<std::size_t>(::lseek(fd, 0, SEEK_END));
      std::unique_ptr<char[]> buffer(new char[size]);
      for (std::size_t done = 0; done < size;) {
        const ssize_t got = ::pread(fd, buffer.get() + done, size - done, static_cast<off_t>(done));
        if (got <= 0) throw std::runtime_error("read failed: " + file);
        done += static_cast<std::size_t>(got);
      }
      ::close(fd);
      touch_sink = static_cast<std::uint64_t>(buffer[size / 2]);
    });
  } else if (load == kColdLoads[3]) {
    seconds = seconds_once([&] {
      torch::serialize::InputArchive in;
      in.load_from(archive);
      std::vector<std::string> keys = in.keys();
      std::vector<at::Tensor> loaded(keys.size());
      for (std::size_t i = 0; i < keys.size(); ++i) in.read(keys[i], loaded[i]);
    });
  } else if (load == kColdLoads[4]) {
    seconds = seconds_once([&] { st::load_state_dict(*module, file); });
  } else if (load == kColdLoads[5]) {
    seconds = seconds_once([&] { torch::load(module, module_archive(archive)); });
  } else {
    throw std::runtime_error("no cold load '" + load + "'");
  }
  std::printf("%.9f\n", seconds);
  return 0;
}

// Runs this program again for one cold load and returns the seconds it took.
double cold_run(const std::string& load, const std::string& file, const std::string& archive,
                const fs::path& dir) {
  const std::string out = (dir / "bench-cold.out").string();
  std::vector<std::string> args = {"/proc/self/exe", "--cold-child", load, "--file", file, "--archive", archive};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int spawned = ::posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) throw std::runtime_error(std::string("cannot start a child: ") + std::strerror(spawned));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error("the cold load '" + load + "' failed");
  double seconds = -1;
  if (FILE* f = std::fopen(out.c_str(), "r")) {
    if (std::fscanf(f, "%lf", &seconds) != 1) seconds = -1;
    std::fclose(f);
  }
  fs::remove(out);
  if (seconds < 0) throw std::runtime_error("the cold load '" + load + "' printed no time");
  return seconds;
}

// Cold loads of FILE (or of a generated GPT-2-small file), against a read()
// of it into fresh memory and torch::load of the same tensors: the rounds
// interleave the loads, so that a disk or machine slowing down over the run
// weighs on each alike.
void run_cold(std::string file, const fs::path& dir, int reps, bool whole_cache) {
  std::vector<std::string> made;
  if (file.empty()) {
    at::manual_seed(0);
    const Workload w = gpt2(at::kFloat);
    file = (dir / "bench-cold.safetensors").string();
    st::save_file(st::NamedTensors(w.tensors), file);
    made.push_back(file);
  }
  const std::string archive = (dir / "bench-cold.pt").string();
  {
    torch::serialize::OutputArchive out;
    for (const auto& item : st::load_file(file)) out.write(item.key(), item.value());
    out.save_to(archive);
    made.push_back(archive);
  }
  {
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& item : st::load_file(file)) tensors.emplace_back(item.key(), item.value());
    torch::save(make_module(tensors), module_archive(archive));
    made.push_back(module_archive(archive));
  }
  std::printf("cold loads of %s (%.1f MB), median of %d, each in a fresh process after %s\n", file.c_str(),
              static_cast<double>(fs::file_size(file)) / 1e6, reps,
              whole_cache && ::geteuid() == 0 ? "posix_fadvise(DONTNEED) and drop_caches" : "posix_fadvise(DONTNEED)");
  std::map<std::string, std::vector<double>> times;
  for (int round = 0; round < reps; ++round)
    for (const std::string& load : kColdLoads) {
      drop_pages(file, whole_cache);
      drop_pages(archive, whole_cache);
      drop_pages(module_archive(archive), whole_cache);
      times[load].push_back(cold_run(load, file, archive, dir));
    }
  std::printf("%-30s %10s %10s %10s\n", "load", "median ms", "min ms", "max ms");
  for (const std::string& load : kColdLoads) {
    std::vector<double>& t = times[load];
    std::sort(t.begin(), t.end());
    std::printf("%-30s %10.1f %10.1f %10.1f\n", load.c_str(), t[t.size() / 2] * 1e3, t.front() * 1e3,
                t.back() * 1e3);
  }
  for (const std::string& f : made) fs::remove(f);
}

int run_bench(int argc, char** argv) {
  CLI::App app{"Load and save timings beside LibTorch's archive, memcpy and write() of the same bytes.", "bench"};
  std::string dir_arg = fs::temp_directory_path().string();
  int reps = 5;
  std::string only, file, cold_child_load, archive;
  bool cold = false, file_pages_only = false;
  app.add_option("--dir", dir_arg, "Folder for the files written (default: the temporary folder)")
      ->check(CLI::ExistingDirectory);
  app.add_option("--reps", reps, "Repetitions of each timing; the median is printed")
      ->check(CLI::PositiveNumber);
  app.add_option("--only", only, "Run one workload")
      ->check(CLI::IsMember({"gpt2-f32", "gpt2-bf16", "lora-1000", "header-100k", "module-gpt2", "cuda-gpt2"}));
  app.add_option("--file", file, "Time our loads and saves of an existing file")->check(CLI::ExistingFile);
  app.add_flag("--cold", cold,
               "Cold loads: each in a fresh process with the file's pages dropped just before "
               "(of --file, or of a generated GPT-2-small file)");
  app.add_flag("--file-pages-only", file_pages_only,
               "With --cold as root: drop only the files' pages, not the machine's whole page cache");
  app.add_option("--cold-child", cold_child_load)->group("");  // the process --cold starts
  app.add_option("--archive", archive)->group("");
  app.footer("Example: bench --cold --file model.safetensors --reps 5");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "bench: %s\nRun with --help for more information.\n", e.what());
    return 2;
  }
  const fs::path dir = dir_arg;
  if (!cold_child_load.empty()) return cold_child(cold_child_load, file, archive);
  if (cold) {
    run_cold(file, dir, reps, !file_pages_only);
    return 0;
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
