// Loads a Hugging Face GPT-2 checkpoint written by Python's `transformers`
// (zero-copy), and runs its embedding layer on a few token ids:
// hidden = wte[ids] + wpe[0..n).
//
//   gpt2_embeddings model.safetensors 1 2 3

#include <safetensors/safetensors.hpp>

#include <ATen/ATen.h>

#include <cstdlib>
#include <iostream>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " model.safetensors TOKEN_ID...\n";
    return 2;
  }
  try {
    safetensors::SafeOpen model(argv[1]);
    std::cout << model.size() << " tensors, format=" << model.metadata().at("format") << "\n";
    for (const auto& info : model.header().tensors()) {
      std::cout << "  " << info.name << " " << safetensors::dtype_name(info.dtype) << " [";
      for (std::size_t d = 0; d < info.shape.size(); ++d) std::cout << (d ? ", " : "") << info.shape[d];
      std::cout << "]\n";
    }
    std::vector<std::int64_t> ids;
    for (int i = 2; i < argc; ++i) ids.push_back(std::atoll(argv[i]));
    const auto n = static_cast<std::int64_t>(ids.size());
    at::Tensor wte = model.get_tensor("wte.weight");  // a view of the mapped file
    at::Tensor wpe = model.get_tensor("wpe.weight");
    at::Tensor hidden = wte.index_select(0, at::tensor(ids)) + wpe.slice(0, 0, n);
    std::cout << "embeddings of " << n << " tokens:\n" << hidden << "\n";
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
