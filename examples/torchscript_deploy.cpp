// Serves a TorchScript model whose weights come from safetensors: the
// architecture from torch::jit::load, the weights loaded strictly and
// zero-copy (processes serving the same file share one copy of it in the
// page cache), then a forward pass over token ids.
//
//   torchscript_deploy MODEL.pt WEIGHTS.safetensors TOKEN...   prints the next token after each
//   torchscript_deploy --export MODEL.pt WEIGHTS.safetensors   writes the archive's own weights
//
// MODEL.pt is torch.jit.save of a scripted module (its own weights are
// replaced); WEIGHTS.safetensors a state dict of it, from Python
// (safetensors.torch.save_file(model.state_dict(), ...)) or from --export.
// Exits 1 on any error, naming the file and the tensor.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <torch/script.h>

#include "safetensors/jit_module.hpp"

int main(int argc, char** argv) {
  namespace st = safetensors;
  try {
    if (argc == 4 && std::strcmp(argv[1], "--export") == 0) {
      st::save_state_dict(torch::jit::load(argv[2]), argv[3]);
      std::printf("wrote %s\n", argv[3]);
      return 0;
    }
    if (argc < 4) {
      std::fprintf(stderr,
                   "usage: %s MODEL.pt WEIGHTS.safetensors TOKEN...\n"
                   "       %s --export MODEL.pt WEIGHTS.safetensors\n",
                   argv[0], argv[0]);
      return 2;
    }
    torch::jit::Module model = torch::jit::load(argv[1]);
    const st::LoadReport report =
        st::load_state_dict(model, argv[2], st::StateDictLoadOptions().mode(st::LoadMode::ZeroCopy));
    model.eval();
    std::printf("loaded %zu tensors from %s\n", report.loaded_keys.size(), argv[2]);

    std::vector<std::int64_t> tokens;
    for (int i = 3; i < argc; ++i) tokens.push_back(std::strtoll(argv[i], nullptr, 10));
    torch::NoGradGuard no_grad;
    const torch::Tensor logits = model.forward({torch::tensor(tokens)}).toTensor();
    const torch::Tensor next = logits.argmax(-1);
    std::string text;
    for (std::int64_t i = 0; i < next.numel(); ++i) text += (i ? " " : "") + std::to_string(next[i].item<std::int64_t>());
    std::printf("next tokens: %s\n", text.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "torchscript_deploy: %s\n", e.what());
    return 1;
  }
}
