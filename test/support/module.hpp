#pragma once
// Modules made from named tensors, for tests and benchmarks of module loads.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace safetensors::test {

/// What make_module fills its tensors with.
enum class ModuleFill {
  copies,  ///< clones of the given tensors (fresh memory)
  zeros,   ///< zeros of their shapes and dtypes
};

/// A module holding a tensor of each given one under its dotted name, with
/// submodules for the parts before the last dot. Floating-point tensors are
/// parameters, others buffers.
std::shared_ptr<torch::nn::Module> make_module(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                               ModuleFill fill);

}  // namespace safetensors::test
