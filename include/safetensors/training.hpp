#pragma once
// A whole training checkpoint in one call: the model, the optimizer, the step
// and epoch, and the default CPU generator's state, as one crash-safe file (or
// a sharded set) whose names Python loads as they are:
//
//   model.{name}                  the module's state dict (save_state_dict)
//   optimizer.state.{i}.{key}     the optimizer's state (save_optimizer)
//   rng_state                     U8: torch.get_rng_state() / set_rng_state()
//   metadata  optimizer.param_groups, step, epoch, format, and the caller's keys
//
//   safetensors::save_training_checkpoint("ckpt.safetensors", *model, optimizer, {step, epoch});
//   safetensors::TrainingLoadResult r = safetensors::load_training_checkpoint("ckpt.safetensors", *model, optimizer);

#include <cstdint>
#include <optional>
#include <string>

#include <torch/arg.h>

#include "safetensors/header.hpp"
#include "safetensors/load.hpp"
#include "safetensors/module.hpp"
#include "safetensors/optimizer.hpp"

namespace torch::nn {
class Module;
}  // namespace torch::nn
namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace safetensors {

/// The prefixes and names of a training checkpoint.
inline constexpr const char* kModelPrefix = "model.";
inline constexpr const char* kOptimizerPrefix = "optimizer.";
inline constexpr const char* kRngStateName = "rng_state";
inline constexpr const char* kStepKey = "step";
inline constexpr const char* kEpochKey = "epoch";

/// Where training stands, saved beside the tensors.
struct TrainingState {
  std::int64_t step = 0;
  std::int64_t epoch = 0;
  /// The caller's own metadata. Its keys may not be the checkpoint's own
  /// (step, epoch, format, optimizer.param_groups) nor start with `model.` or
  /// `optimizer.`.
  Metadata metadata;
};

/// Options of save_training_checkpoint.
/// fsync and progress: see WriteOptions.
struct TrainingSaveOptions : WriteOptions<TrainingSaveOptions> {
  /// When set, `path` is a folder (which must exist) and the checkpoint is
  /// sharded (save_sharded): model, optimizer and RNG state are packed together.
  TORCH_ARG(std::optional<std::uint64_t>, max_shard_size) = std::nullopt;
};

/// Saves the module's state dict, the optimizer's state and the default CPU
/// generator's state with `state`'s step, epoch and metadata, crash-safely:
/// a failed save leaves the previous checkpoint as it was. Tied parameters
/// are saved once, the alias recorded as save_state_dict records it (under
/// `model.`). Throws InvalidArgument for metadata keys the checkpoint uses,
/// and as save_state_dict and save_optimizer do.
void save_training_checkpoint(const std::string& path, const torch::nn::Module& module,
                              const torch::optim::Optimizer& optimizer, const TrainingState& state,
                              const TrainingSaveOptions& options = {});

/// Options of load_training_checkpoint.
struct TrainingLoadOptions {
  /// As StateDictLoadOptions::strict and OptimizerLoadOptions::strict.
  TORCH_ARG(bool, strict) = true;
  TORCH_ARG(LoadMode, mode) = LoadMode::Copy;
  /// Set the default CPU generator to the saved state.
  TORCH_ARG(bool, restore_rng) = true;
  /// How a path is read. Unset: as load_state_dict reads for `mode`.
  TORCH_ARG(std::optional<Backend>, backend) = std::nullopt;
};

/// What load_training_checkpoint did.
struct TrainingLoadResult {
  TrainingState state;  ///< the metadata without the checkpoint's own keys
  LoadReport model;
  LoadReport optimizer;
};

/// Loads what save_training_checkpoint saved (a file, a folder or an index).
/// The optimizer's state and the RNG state are checked and read first, then
/// the module is loaded (checked before it is filled), and only then do the
/// optimizer and the generator change: a checkpoint that does not fit leaves
/// all three as they were. A step or epoch that is not a decimal integer, a
/// missing or malformed `rng_state` (when restore_rng) are StateDictMismatch.
TrainingLoadResult load_training_checkpoint(const std::string& path, torch::nn::Module& module,
                                            torch::optim::Optimizer& optimizer,
                                            const TrainingLoadOptions& options = {});

}  // namespace safetensors
