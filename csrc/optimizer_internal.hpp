#pragma once
// The steps of save_optimizer and load_optimizer, for callers that write or
// read an optimizer beside other state (training checkpoints). Internal.

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/optim/optimizer.h>

#include "safetensors/module.hpp"
#include "safetensors/optimizer.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"

namespace safetensors::detail {

/// A metadata entry of a checkpoint: the index's, else the first shard's that
/// has it (save_sharded writes the caller's metadata into every shard).
const std::string* metadata_entry(const ShardedOpen& checkpoint, const std::string& key);

/// The state tensors under `prefix`, and the JSON text of the param groups
/// (for the metadata key prefix + kParamGroupsKey). `file` names the
/// destination in errors.
std::pair<NamedTensors, std::string> optimizer_to_save(const torch::optim::Optimizer& optimizer,
                                                       const std::string& prefix, const std::string& file);

/// A load of an optimizer that was checked and read, and changes nothing
/// until commit().
class OptimizerLoad {
 public:
  /// Checks the checkpoint against `optimizer` and reads the tensors of every
  /// parameter whose state fits. Throws as load_optimizer does.
  OptimizerLoad(torch::optim::Optimizer& optimizer, const ShardedOpen& checkpoint,
                const OptimizerLoadOptions& options);
  OptimizerLoad(OptimizerLoad&&) noexcept;
  ~OptimizerLoad();

  LoadReport& report() noexcept { return report_; }
  /// Replaces the optimizer's state and hyperparameters. Does not throw but
  /// for memory.
  void commit();

 private:
  struct Parameter;
  torch::optim::Optimizer* optimizer_;
  std::vector<Parameter> parameters_;
  std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> options_;
  LoadReport report_;
};

}  // namespace safetensors::detail
