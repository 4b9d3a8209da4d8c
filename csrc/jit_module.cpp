// A TorchScript module's state dict: the table of its named tensors, for the
// engine every kind of module shares (module.cpp).

#include "safetensors/jit_module.hpp"

#include "module_internal.hpp"

#include <torch/csrc/jit/api/module.h>

#include "safetensors/sharded.hpp"

namespace safetensors {

namespace detail {

// The iterators Python's state_dict of a scripted module is made of (its
// _parameters and _buffers, module by module), here recursively.
Entries module_state(const torch::jit::Module& module) {
  Entries out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) out.emplace_back(item.name, item.value);
  for (const auto& item : module.named_buffers(/*recurse=*/true)) out.emplace_back(item.name, item.value);
  return out;
}

}  // namespace detail

LoadReport load_state_dict(torch::jit::Module& module, const ShardedOpen& checkpoint,
                           const StateDictLoadOptions& options) {
  detail::Entries targets = detail::module_state(module);
  return detail::load_state(targets, checkpoint, options);
}

LoadReport load_state_dict(torch::jit::Module& module, const std::string& path,
                           const StateDictLoadOptions& options) {
  return load_state_dict(module, detail::open_for_load(path, options), options);
}

LoadReport load_state_dict(torch::jit::Module& module, const SafeOpen& file,
                           const StateDictLoadOptions& options) {
  return load_state_dict(module, ShardedOpen(file), options);
}

void save_state_dict(const torch::jit::Module& module, const std::string& path,
                     const std::optional<Metadata>& metadata, const StateDictSaveOptions& options) {
  detail::save_state(detail::module_state(module), path, metadata, options);
}

}  // namespace safetensors
