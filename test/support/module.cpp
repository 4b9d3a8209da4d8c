#include "support/module.hpp"

#include <ATen/ATen.h>

namespace safetensors::test {

std::shared_ptr<torch::nn::Module> make_module(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                               ModuleFill fill) {
  auto root = std::make_shared<torch::nn::Module>();
  for (const auto& [name, tensor] : tensors) {
    std::shared_ptr<torch::nn::Module> m = root;
    std::string rest = name;
    for (std::size_t dot; (dot = rest.find('.')) != std::string::npos; rest.erase(0, dot + 1)) {
      const std::string part = rest.substr(0, dot);
      auto children = m->named_children();
      m = children.contains(part) ? children[part] : m->register_module(part, std::make_shared<torch::nn::Module>());
    }
    at::Tensor value = fill == ModuleFill::copies ? tensor.clone() : at::zeros_like(tensor);
    if (c10::isFloatingType(tensor.scalar_type())) {
      m->register_parameter(rest, value);
    } else {
      m->register_buffer(rest, value);
    }
  }
  return root;
}

}  // namespace safetensors::test
