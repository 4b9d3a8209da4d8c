// A TorchScript model served with its weights from safetensors, against
// torch::jit::load of an archive that embeds them: an MLP of 4096-wide
// layers (8 layers: 537 MB of F32 weights). One mode per process, so that
// each process's peak RSS is its mode's:
//
//   jit_bench make FOLDER [LAYERS]   writes model.pt (weights embedded), arch.pt
//                                    (the code and the shapes only) and model.safetensors
//   /usr/bin/time -f %M jit_bench torchscript FOLDER   torch::jit::load(model.pt)
//   /usr/bin/time -f %M jit_bench zerocopy FOLDER      torch::jit::load(arch.pt), then
//                                                      load_state_dict, LoadMode::ZeroCopy
//   /usr/bin/time -f %M jit_bench copy FOLDER          the same into allocated tensors (LoadMode::Copy)
//   /usr/bin/time -f %M jit_bench reload FOLDER        load_state_dict (Copy) into the module of
//                                                      model.pt: new weights for a served model
//
// Each mode loads twice (the first run warms the page cache), prints the
// second run's time, then runs one forward pass, which touches every weight,
// checks its output against the one `make` recorded, and prints how much of
// the process's memory is its own (RssAnon) and how much file pages it
// shares with the page cache (RssFile).
//
// arch.pt saves each weight as a broadcast zero (stride 0): torch::jit::load
// of it gives the module its shapes without the weights' bytes.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include <torch/script.h>
#include <torch/serialize.h>

#include "safetensors/jit_module.hpp"

namespace {

namespace fs = std::filesystem;
namespace st = safetensors;
constexpr std::int64_t kWidth = 4096;

torch::jit::Module make_model(int layers, bool placeholders) {
  auto unit = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module root("__torch__.Mlp", unit, /*shouldMangle=*/true);
  std::string code = "def forward(self, x):\n";
  torch::manual_seed(0);
  for (int i = 0; i < layers; ++i) {
    torch::jit::Module layer("__torch__.Layer", unit, /*shouldMangle=*/true);
    torch::Tensor w = torch::randn({kWidth, kWidth}) / 64, b = torch::randn({kWidth});
    if (placeholders) {
      w = torch::zeros({}).expand({kWidth, kWidth});
      b = torch::zeros({}).expand({kWidth});
    }
    layer.register_parameter("weight", w, /*is_buffer=*/false);
    layer.register_parameter("bias", b, /*is_buffer=*/false);
    const std::string name = "layer" + std::to_string(i);
    root.register_module(name, layer);
    code += "    x = torch.tanh(torch.linear(x, self." + name + ".weight, self." + name + ".bias))\n";
  }
  root.define(code + "    return x\n");
  return root;
}

double seconds(const std::function<void()>& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

torch::Tensor input() { return torch::ones({1, kWidth}); }

// The lines of /proc/self/status that split the resident memory.
void print_resident() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("RssAnon:", 0) == 0 || line.rfind("RssFile:", 0) == 0) std::printf("%s\n", line.c_str());
}

int check(torch::jit::Module& model, const fs::path& folder) {
  torch::NoGradGuard no_grad;
  const torch::Tensor out = model.forward({input()}).toTensor();
  torch::Tensor expected;
  torch::load(expected, (folder / "output.pt").string());
  if (!torch::allclose(out, expected)) {
    std::fprintf(stderr, "jit_bench: the forward pass differs from the one recorded\n");
    return 1;
  }
  std::printf("forward pass: as recorded\n");
  print_resident();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s make|torchscript|zerocopy|copy|reload FOLDER [LAYERS]\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const fs::path folder = argv[2];
  try {
    if (mode == "make") {
      const int layers = argc > 3 ? std::atoi(argv[3]) : 8;
      fs::create_directories(folder);
      torch::jit::Module model = make_model(layers, /*placeholders=*/false);
      model.save((folder / "model.pt").string());
      st::save_state_dict(model, (folder / "model.safetensors").string());
      make_model(layers, /*placeholders=*/true).save((folder / "arch.pt").string());
      torch::NoGradGuard no_grad;
      torch::save(model.forward({input()}).toTensor(), (folder / "output.pt").string());
      for (const char* name : {"model.pt", "arch.pt", "model.safetensors"})
        std::printf("%-18s %10.1f MB\n", name, static_cast<double>(fs::file_size(folder / name)) / 1e6);
      return 0;
    }
    torch::jit::Module model;
    std::function<void()> load;
    if (mode == "torchscript") {
      load = [&] { model = torch::jit::load((folder / "model.pt").string()); };
    } else if (mode == "zerocopy" || mode == "copy") {
      const bool copy = mode == "copy";
      load = [&, copy] {
        model = torch::jit::load((folder / "arch.pt").string());
        if (copy)
          for (torch::Tensor t : model.parameters()) t.set_data(torch::empty(t.sizes()));
        st::load_state_dict(model, (folder / "model.safetensors").string(),
                            st::StateDictLoadOptions().mode(copy ? st::LoadMode::Copy : st::LoadMode::ZeroCopy));
      };
    } else if (mode == "reload") {
      model = torch::jit::load((folder / "model.pt").string());
      load = [&] { st::load_state_dict(model, (folder / "model.safetensors").string()); };
    } else {
      std::fprintf(stderr, "jit_bench: no mode '%s'\n", mode.c_str());
      return 2;
    }
    load();
    if (mode != "reload") model = torch::jit::Module();
    std::printf("%s: load %.1f ms\n", mode.c_str(), seconds(load) * 1e3);
    return check(model, folder);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "jit_bench: %s\n", e.what());
    return 1;
  }
}
