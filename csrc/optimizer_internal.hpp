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

/// Saves `tensors` as one file at `path`, or as a sharded set in the folder
/// `path` when `max_shard_size` is given, with the fsync and progress of `options`.
template <class Options>
void save_one_or_sharded(const NamedTensors& tensors, const std::string& path, const Metadata& meta,
                         const std::optional<std::uint64_t>& max_shard_size,
                         const WriteOptions<Options>& options) {
  if (max_shard_size) {
    save_sharded(tensors, path, meta,
                 ShardedSaveOptions().max_shard_size(*max_shard_size).fsync(options.fsync()).progress(
                     options.progress()));
  } else {
    save_file(tensors, path, meta, SaveOptions().fsync(options.fsync()).progress(options.progress()));
  }
}

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
