// Serves an AOTInductor package with weights from safetensors: loads the
// package (compiled once by torch._inductor.aoti_compile_and_package), fills
// its constants from a checkpoint by the model's parameter names, and runs it
// on an input read from another safetensors file. Given a second checkpoint,
// swaps it in and runs again, as a serving process replacing its weights.
//
//   aoti_deploy model.pt2 weights.safetensors input.safetensors [other.safetensors]
//
// The input file holds the model's inputs as tensors named "0", "1", ..., of the shapes the
// package was compiled for.

#include <safetensors/safetensors.hpp>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <chrono>
#include <iostream>
#include <string>
#include <vector>

namespace {

void run(torch::inductor::AOTIModelPackageLoader& package, const std::vector<at::Tensor>& inputs) {
  const std::vector<at::Tensor> outputs = package.run(inputs);
  for (std::size_t i = 0; i < outputs.size(); ++i)
    std::cout << "output " << i << " " << outputs[i].sizes() << ":\n" << outputs[i] << "\n";
}

void load(torch::inductor::AOTIModelPackageLoader& package, const std::string& weights) {
  const auto start = std::chrono::steady_clock::now();
  // Strict: every constant of the package filled, nothing of the file left over.
  const safetensors::LoadReport report = safetensors::load_constants(package, weights);
  const std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - start;
  std::cout << report.loaded_keys.size() << " constants from " << weights << " in " << took.count() << " ms\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::cerr << "usage: " << argv[0] << " model.pt2 weights.safetensors input.safetensors [other.safetensors]\n";
    return 2;
  }
  try {
    torch::inductor::AOTIModelPackageLoader package(argv[1]);
    std::cout << "constants:";
    for (const std::string& name : package.get_constant_fqns()) std::cout << " " << name;
    std::cout << "\n";
    load(package, argv[2]);
    safetensors::SafeOpen input(argv[3]);
    std::vector<at::Tensor> inputs;
    for (std::size_t i = 0; input.contains(std::to_string(i)); ++i) inputs.push_back(input.get_tensor(std::to_string(i)));
    run(package, inputs);
    if (argc == 5) {
      load(package, argv[4]);
      run(package, inputs);
    }
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
