#pragma once
// The state-dict engine: one for every kind of module (torch::nn and
// torch::jit), its plain and distributed loads, and its saves. Each kind
// contributes only the table of its named tensors (module_state). Internal.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/TensorIndexing.h>
#include <ATen/core/Tensor.h>

#include "detail/text.hpp"
#include "detail/torch_shape.hpp"
#include "safetensors/header.hpp"
#include "safetensors/module.hpp"
#include "safetensors/tensor_parallel.hpp"

namespace torch::jit {
struct Module;
}  // namespace torch::jit

namespace safetensors {
class ShardedOpen;
}  // namespace safetensors

namespace safetensors::detail {

/// A module's state: each parameter and buffer under its dotted name. Each
/// tensor is a handle on the module's own TensorImpl, not a copy: the engine
/// writes through it (copy_ in place, set_data in ZeroCopy mode), so a load
/// changes the module's tensors themselves, whichever kind of module holds
/// them, and never a slot of the module.
using Entries = std::vector<std::pair<std::string, at::Tensor>>;

/// The backend a load from a path uses: the one asked for, else pread for a
/// copy (no file pages mapped into the process) and mmap for zero-copy.
inline Backend default_backend(const StateDictLoadOptions& options) {
  return options.backend().value_or(options.mode() == LoadMode::Copy ? Backend::Pread : Backend::Mmap);
}

/// Parameters then buffers, recursively, with the dotted names Python's
/// state_dict uses. Of a torch::jit::Module, every buffer: TorchScript does
/// not record which were registered non-persistent, and Python's state_dict
/// of a scripted module lists them too (defined in jit_module.cpp).
Entries module_state(const torch::nn::Module& module);
Entries module_state(const torch::jit::Module& module);

/// A checkpoint opened for load_state_dict from a path.
ShardedOpen open_for_load(const std::string& path, const StateDictLoadOptions& options);

/// With options.strict(), a report that is not ok is a StateDictMismatch
/// naming `file`: "<what> and the checkpoint disagree:" and every problem.
void refuse_mismatch(const LoadReport& report, const StateDictLoadOptions& options, const std::string& file,
                     const std::string& what);

/// load_state_dict of a module whose state is `targets`: matches, checks
/// (throws before changing anything when strict), then fills.
LoadReport load_state(Entries& targets, const ShardedOpen& checkpoint, const StateDictLoadOptions& options);

/// The index selecting `range` of dimension `dim` (and all of the ones before).
std::vector<at::indexing::TensorIndex> part_index(std::int64_t dim, const PartRange& range);

/// What a checkpoint holds, without its data: the tensors in key order, and
/// the `removed -> kept` aliases a saver recorded in the metadata.
struct Catalog {
  std::string path;
  std::vector<TensorInfo> tensors;
  std::unordered_map<std::string, std::size_t> index;
  std::vector<std::pair<std::string, std::string>> aliases;

  static Catalog of(const ShardedOpen& checkpoint);
  void add(TensorInfo info);
  const TensorInfo& info(const std::string& name) const;
};

/// A rank's part of a tensor split across ranks.
struct Part {
  std::int64_t dim;
  PartRange range;
};

/// One module entry and the checkpoint tensor that fills it, or a part of it.
struct Fill {
  std::size_t target;
  std::string source;
  std::optional<Part> part;
};

/// The module's ties: entries that are the same memory seen the same way (one
/// tensor under two names, or tensors at one address with the same sizes,
/// strides and dtype). `result[i]` is the first entry of entry i's group.
std::vector<std::size_t> tie_groups(const Entries& targets);

/// One write of a load: a group of entries the module ties, written once.
struct Write {
  /// The fill of the group's member that comes last in the module's order:
  /// the last copy wins, as in PyTorch's load_state_dict.
  const Fill* fill;
  /// Every entry of the group, filled or not, in module order.
  std::vector<std::size_t> members;
  /// The group's memory overlaps another entry's that is not the same view
  /// (a transposed buffer over a parameter): it is filled in place in every
  /// mode, so that the memory stays shared.
  bool linked = false;
};

/// Matches the checkpoint's names to the module's and checks every pair.
class Matcher {
 public:
  Matcher(const Entries& targets, const Catalog& checkpoint, const StateDictLoadOptions& options);
  void match();
  LoadReport& report() { return report_; }
  /// What to write, in the module's order of each write's fill.
  std::vector<Write> writes() const;

 private:
  // `name` is the file's name for the entry; `source` the tensor that holds its
  // data (itself, or the kept name of an alias).
  void consider(const std::string& name, const std::string& source, bool alias);
  void fill_module_ties();

  const Entries& targets_;
  const Catalog& checkpoint_;
  const StateDictLoadOptions& options_;
  std::unordered_map<std::string, std::size_t> index_;
  std::vector<std::size_t> groups_;  // tie_groups(targets_)
  std::vector<bool> claimed_;        // matched by a name of the file (filled or mismatched)
  std::vector<Fill> fills_;
  LoadReport report_;
};

/// The tensors a ZeroCopy load makes its entries: one whose memory an earlier
/// write of the load already holds (a second alias of one file tensor, or a
/// part inside a whole) is cloned, so that entries the module keeps apart do
/// not share memory, as in Copy mode.
class Handout {
 public:
  at::Tensor own(at::Tensor t);

 private:
  std::map<std::uintptr_t, std::uintptr_t> ranges_;  // begin -> end of the memory handed out
};

/// Deduplicated state of a module, with the aliases recorded in the metadata
/// (format "pt" added), as save_state_dict saves it.
std::pair<NamedTensors, Metadata> state_to_save(Entries state, const std::optional<Metadata>& metadata);

/// save_state_dict of a module whose state is `state`.
void save_state(Entries state, const std::string& path, const std::optional<Metadata>& metadata,
                const StateDictSaveOptions& options);

}  // namespace safetensors::detail
