#pragma once
// A torch::nn::Module's state dict as a safetensors checkpoint: parameters and
// buffers under the dotted names Python uses (`encoder.layers.0.fc.weight`).
//
//   safetensors::save_state_dict(*model, "model.safetensors");
//   safetensors::LoadReport r = safetensors::load_state_dict(*model, "model.safetensors");
//   safetensors::load_state_dict(*model, "checkpoint/",            // a sharded set
//                                safetensors::StateDictLoadOptions().strict(false));

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>
#include <torch/arg.h>

#include "safetensors/dtype.hpp"
#include "safetensors/header.hpp"
#include "safetensors/load.hpp"
#include "safetensors/save.hpp"
#include "safetensors/source.hpp"
#include "safetensors/tensor_parallel.hpp"

// Declared, not included: <torch/nn/module.h> is heavy, and a reference is all
// these functions take.
namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace safetensors {

class ShardedOpen;

/// How load_state_dict fills a module.
enum class LoadMode {
  /// Each parameter keeps its own memory and is filled in place (under
  /// NoGradGuard), one tensor at a time straight from the file: peak memory is
  /// the model plus at most one tensor. References to parameters stay valid.
  Copy,
  /// CPU parameters and buffers become views of the privately mapped file: no
  /// copy, and processes serving the same model share one copy in the page
  /// cache. Writing to them stays private to the process. Parameters on other
  /// devices, converted dtypes and unaligned data are still copied. Memory is
  /// shared exactly as in Copy mode: entries the module ties share one view,
  /// an entry the module keeps apart from another filled from the same file
  /// tensor (an alias) gets its own copy, and an entry whose memory overlaps
  /// another's without being the same view (a transposed buffer over a
  /// parameter) is filled in place.
  ZeroCopy,
};

/// Maps a name of the file (after prefix handling) to a module name; nullopt drops the tensor.
using RenameFn = std::function<std::optional<std::string>(const std::string&)>;

/// Options of load_state_dict, in LibTorch's chainable style:
/// `StateDictLoadOptions().strict(false).strip_prefix("model.")`.
struct StateDictLoadOptions {
  /// Throw a StateDictMismatch error listing every missing, unexpected and
  /// mismatched entry before changing anything. Off: load what matches, report the rest.
  TORCH_ARG(bool, strict) = true;
  TORCH_ARG(LoadMode, mode) = LoadMode::Copy;
  /// Convert a floating-point tensor of the file to the parameter's
  /// floating-point dtype (BF16 file into F32 parameters). Off: a dtype that
  /// differs is a mismatch. Other dtypes must always match exactly.
  TORCH_ARG(bool, convert_dtype) = false;
  /// Removed from the start of every file name that has it (`model.`).
  TORCH_ARG(std::string, strip_prefix) = "";
  /// Then put in front of every file name.
  TORCH_ARG(std::string, add_prefix) = "";
  /// Then applied to every file name; unset: names are kept.
  TORCH_ARG(RenameFn, rename) = nullptr;
  /// How files are read when loading from a path. Unset: Pread in Copy mode
  /// (as fast, and no file pages mapped into the process: the load adds
  /// nothing to resident memory beyond the model), Mmap in ZeroCopy mode.
  TORCH_ARG(std::optional<Backend>, backend) = std::nullopt;
  /// Tensor parallelism: the module holds this rank's part of each tensor the
  /// plan splits (its shapes are the local ones), and only the bytes of that
  /// part are read (through get_slice). The plan is matched against the
  /// module's names. ZeroCopy makes a part a view of the mapping when it is
  /// contiguous in the file (a split of the first dimension).
  TORCH_ARG(std::optional<TensorParallel>, tensor_parallel) = std::nullopt;
};

/// What load_state_dict did, with both the file's and the module's names.
struct LoadReport {
  /// A tensor of the file that fills nothing.
  struct Unexpected {
    std::string file_name;
    std::string module_name;  ///< what renaming made of it
  };
  /// A tensor whose shape or dtype does not fit its parameter or buffer.
  struct Mismatch {
    std::string file_name;
    std::string module_name;
    std::vector<std::int64_t> expected_shape;
    c10::ScalarType expected_dtype;
    std::vector<std::uint64_t> found_shape;
    Dtype found_dtype;
    /// "shape", "dtype", or a sentence when the file's dtype has no torch dtype here.
    std::string reason;
  };

  /// Module names that were filled (tied names included), in module order.
  std::vector<std::string> loaded_keys;
  /// Module names that nothing in the file filled, in module order.
  std::vector<std::string> missing_keys;
  /// In file order.
  std::vector<Unexpected> unexpected_keys;
  /// In file order. Their parameters were left unchanged.
  std::vector<Mismatch> mismatched;

  /// No missing, unexpected or mismatched entries.
  bool ok() const noexcept {
    return missing_keys.empty() && unexpected_keys.empty() && mismatched.empty();
  }
  /// Every problem, one per line ("" when ok()).
  std::string describe() const;
};

/// Fills `module`'s parameters and buffers (recursively) from a safetensors file,
/// a sharded checkpoint's `model.safetensors.index.json`, or the folder holding
/// either. Shapes must match exactly (no broadcasting); see StateDictLoadOptions
/// for dtypes and renaming. Names the saver recorded as aliases of a kept tensor
/// (`{"lm_head.weight": "wte.weight"}` in the metadata, see save_state_dict; of
/// a sharded set, in its shards or its index, where huggingface_hub records
/// them), and parameters tied in the module to a loaded one, are filled from it
/// and not reported missing; each alias takes its own part (tensor_parallel)
/// and dtype. A name recorded as the alias of two different tensors is refused
/// (InvalidIndex). Entries the module ties (the same memory seen the same way)
/// are written once: when the file holds several of them, the one last in the
/// module's order wins, as the last copy does in PyTorch's load_state_dict.
/// Throws StateDictMismatch when strict and anything is off.
LoadReport load_state_dict(torch::nn::Module& module, const std::string& path,
                           const StateDictLoadOptions& options = {});
LoadReport load_state_dict(torch::nn::Module& module, const SafeOpen& file,
                           const StateDictLoadOptions& options = {});
LoadReport load_state_dict(torch::nn::Module& module, const ShardedOpen& checkpoint,
                           const StateDictLoadOptions& options = {});

/// Options of save_state_dict: fsync and progress (over every shard when
/// sharded), and whether to shard.
struct StateDictSaveOptions : WriteOptions<StateDictSaveOptions> {
  /// When set, `path` is a folder and the checkpoint is sharded (see save_sharded).
  TORCH_ARG(std::optional<std::uint64_t>, max_shard_size) = std::nullopt;
};

/// Tensors to save with each block of shared memory saved once.
struct Deduplicated {
  NamedTensors tensors;
  /// removed name -> kept name, for the metadata.
  std::map<std::string, std::string> aliases;
};

/// Keeps one name per block of shared memory (tied embeddings and output
/// layers), as the reference's `save_model` does: among the names that cover
/// the whole storage, the first in byte order. Tensors that merely sit side by
/// side in one storage are kept apart. Throws InvalidArgument when no name of
/// a group covers its whole storage (saving would store more than the tensors).
Deduplicated deduplicate_shared(const NamedTensors& tensors);

/// Saves `module`'s parameters and buffers (copied one at a time to CPU when
/// elsewhere). Tied tensors are saved once (deduplicate_shared), each removed
/// name recorded in the metadata as `removed -> kept` unless `metadata` already
/// has that key (in every shard of a sharded set, as the rest of the metadata). The metadata gets `{"format": "pt"}` unless it sets "format",
/// so Python tools (transformers) accept the file.
void save_state_dict(const torch::nn::Module& module, const std::string& path,
                     const std::optional<Metadata>& metadata = std::nullopt,
                     const StateDictSaveOptions& options = {});

}  // namespace safetensors
