#pragma once
// A TorchScript module's state dict as a safetensors checkpoint: the
// architecture from torch::jit::load, the weights from safetensors.
//
//   torch::jit::Module model = torch::jit::load("model.pt");   // code, and weights to replace
//   safetensors::load_state_dict(model, "model.safetensors");
//   safetensors::save_state_dict(model, "model.safetensors");
//
// The same functions, options and report as for a torch::nn::Module
// (safetensors/module.hpp), over the same names as Python's
// `scripted.state_dict()`: parameters then buffers, recursively, dotted.
// Every buffer of a TorchScript module is in it, including those the Python
// module registered with persistent=False: TorchScript does not record that
// flag, and Python's state_dict of a scripted or loaded module lists them too.
// A frozen module (torch.jit.freeze) has folded its weights into its code and
// has none left to load.
//
// Loads change the module's tensors themselves, never its attribute slots, as
// for a torch::nn::Module: in Copy mode each is filled in place; in ZeroCopy
// mode its data is replaced (set_data) by a view of the mapping. Either way a
// tensor obtained from the module before the load (`module.attr("weight")`)
// is the module's tensor after it, and the module's methods see the new values.

#include <optional>
#include <string>

#include "safetensors/module.hpp"

// Declared, not included: <torch/csrc/jit/api/module.h> is heavy, and a
// reference is all these functions take.
namespace torch::jit {
struct Module;
}  // namespace torch::jit

namespace safetensors {

/// Fills `module`'s parameters and buffers (recursively) from a safetensors
/// file, a sharded checkpoint's index, or the folder holding either, with the
/// contract of load_state_dict for a torch::nn::Module: strict reports,
/// nothing changed when the checkpoint does not fit, renaming, dtype
/// conversion, zero-copy, aliases and ties, tensor parallelism.
LoadReport load_state_dict(torch::jit::Module& module, const std::string& path,
                           const StateDictLoadOptions& options = {});
LoadReport load_state_dict(torch::jit::Module& module, const SafeOpen& file,
                           const StateDictLoadOptions& options = {});
LoadReport load_state_dict(torch::jit::Module& module, const ShardedOpen& checkpoint,
                           const StateDictLoadOptions& options = {});

/// Saves `module`'s parameters and buffers as save_state_dict does a
/// torch::nn::Module's: tied tensors once, each removed name recorded in the
/// metadata as `removed -> kept`, `{"format": "pt"}`, sharded when asked.
void save_state_dict(const torch::jit::Module& module, const std::string& path,
                     const std::optional<Metadata>& metadata = std::nullopt,
                     const StateDictSaveOptions& options = {});

}  // namespace safetensors
