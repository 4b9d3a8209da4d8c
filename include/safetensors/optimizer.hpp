#pragma once
// A LibTorch optimizer's state as a safetensors checkpoint, in the layout
// Python's `optimizer.state_dict()` flattens to, so that either side resumes
// the other's training:
//
//   tensors   state.{i}.{key}   i: the parameter's index across the param
//                               groups, in order; key: Python's name
//                               (exp_avg, exp_avg_sq, max_exp_avg_sq,
//                               momentum_buffer, square_avg, grad_avg, sum,
//                               step as a 0-dim float tensor)
//   metadata  param_groups      JSON: Python's hyperparameter names and the
//                               `params` index lists
//
//   safetensors::save_optimizer(optimizer, "optimizer.safetensors");
//   safetensors::load_optimizer(optimizer, "optimizer.safetensors");
//
// SGD, Adam (amsgrad too), AdamW, RMSprop and Adagrad; see docs/training.md.

#include <cstdint>
#include <optional>
#include <string>

#include <torch/arg.h>

#include "safetensors/header.hpp"
#include "safetensors/load.hpp"
#include "safetensors/module.hpp"
#include "safetensors/save.hpp"

// Declared, not included: a reference is all these functions take.
namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace safetensors {

class ShardedOpen;

/// The metadata key holding the param groups, after the prefix.
inline constexpr const char* kParamGroupsKey = "param_groups";

/// Options of save_optimizer.
/// fsync and progress: see WriteOptions.
struct OptimizerSaveOptions : WriteOptions<OptimizerSaveOptions> {
  /// Put in front of every tensor name and of the metadata key (`optimizer.`).
  TORCH_ARG(std::string, prefix) = "";
  /// When set, `path` is a folder and the state is sharded (see save_sharded).
  TORCH_ARG(std::optional<std::uint64_t>, max_shard_size) = std::nullopt;
};

/// Saves the state of every parameter that has one, and the param groups'
/// hyperparameters, crash-safely (save_file, or save_sharded). The state
/// tensors keep their dtype and device (copied to CPU one at a time while
/// writing). LibTorch's integer `step` is written as the 0-dim float32 tensor
/// Python uses, or float64 above 2^24, where float32 would round it. A
/// hyperparameter that is NaN or infinite is written `NaN`, `Infinity` or
/// `-Infinity`, as Python's json.dumps writes it (and json.loads reads it). The
/// metadata gets `{"format": "pt"}` unless it sets "format"; a key of
/// `metadata` that is the param groups' key is InvalidArgument. An optimizer
/// other than SGD, Adam, AdamW, RMSprop and Adagrad is InvalidArgument: LBFGS
/// keeps one history for all its parameters (deques of flattened tensors and
/// Python floats), which has no `state.{i}.{key}` tensor form Python loads.
void save_optimizer(const torch::optim::Optimizer& optimizer, const std::string& path,
                    const std::optional<Metadata>& metadata = std::nullopt,
                    const OptimizerSaveOptions& options = {});

/// Options of load_optimizer.
struct OptimizerLoadOptions {
  /// Throw a StateDictMismatch error listing every problem before changing
  /// anything. Off: a parameter whose tensors all fit takes them, the others
  /// keep their state, and the report says why. Problems of the param groups
  /// (their number and sizes, a hyperparameter LibTorch cannot honour) are
  /// errors either way: without them no state can be matched to a parameter.
  /// A group's key that LibTorch's optimizer does not have (a Python LR
  /// scheduler's `initial_lr`, a key of the user's) is unexpected, named
  /// `{prefix}param_groups[g].{key}` in the report: refused when strict,
  /// dropped otherwise.
  TORCH_ARG(bool, strict) = true;
  /// Only names under this prefix are the optimizer's (`optimizer.` in a file
  /// holding a whole training checkpoint); tensors outside it are ignored.
  TORCH_ARG(std::string, prefix) = "";
  /// How a path is read. Unset: Pread.
  TORCH_ARG(std::optional<Backend>, backend) = std::nullopt;
};

/// Replaces `optimizer`'s state and hyperparameters with the checkpoint's, as
/// Python's `optimizer.load_state_dict` does: the file's parameter numbers are
/// matched, in order, to the optimizer's parameters, group by group; a
/// parameter without tensors in the file has no state afterwards (except for
/// Adagrad, which needs state for every parameter). Every state tensor must
/// have its parameter's shape and dtype, and is read into new memory on the
/// parameter's device; `step` must be a 0-dim tensor holding a whole number.
/// The hyperparameters (lr, betas, ...) are taken from the file, with Python's
/// names as torch 1.13 and 2.x write them, read as Python's json.loads reads
/// them (bare NaN, Infinity and -Infinity are floats); `maximize` true is
/// refused (LibTorch cannot maximize), and foreach, fused, capturable and
/// differentiable, which choose an implementation, are accepted whatever they
/// hold. Everything is
/// checked and read before the optimizer changes: a failed load leaves it as
/// it was. The report names the file's tensors; `loaded_keys` those taken.
LoadReport load_optimizer(torch::optim::Optimizer& optimizer, const std::string& path,
                          const OptimizerLoadOptions& options = {});
LoadReport load_optimizer(torch::optim::Optimizer& optimizer, const SafeOpen& file,
                          const OptimizerLoadOptions& options = {});
LoadReport load_optimizer(torch::optim::Optimizer& optimizer, const ShardedOpen& checkpoint,
                          const OptimizerLoadOptions& options = {});

}  // namespace safetensors
