#pragma once
// The matching of checkpoint names to a module's, shared by load_state_dict
// and its distributed variants. Internal.

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/TensorIndexing.h>
#include <ATen/core/Tensor.h>

#include "safetensors/header.hpp"
#include "safetensors/module.hpp"
#include "safetensors/tensor_parallel.hpp"

namespace safetensors {
class ShardedOpen;
}  // namespace safetensors

namespace safetensors::detail {

using Entries = std::vector<std::pair<std::string, at::Tensor>>;

/// The backend a load from a path uses: the one asked for, else pread for a
/// copy (no file pages mapped into the process) and mmap for zero-copy.
inline Backend default_backend(const StateDictLoadOptions& options) {
  return options.backend().value_or(options.mode() == LoadMode::Copy ? Backend::Pread : Backend::Mmap);
}

/// Parameters then buffers, with the dotted names Python's state_dict uses.
Entries module_state(const torch::nn::Module& module);

/// The shape a file tensor has in torch: packed sub-byte dtypes (F4) hold
/// several values per element.
std::vector<std::int64_t> torch_shape(const TensorInfo& info);

/// "[2, 3]".
std::string shape_text(const std::vector<std::int64_t>& shape);
std::string shape_text(const std::vector<std::uint64_t>& shape);

/// The index selecting `range` of dimension `dim` (and all of the ones before).
std::vector<at::indexing::TensorIndex> part_index(std::int64_t dim, const ShardRange& range);

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
  ShardRange range;
};

/// One module entry and the checkpoint tensor that fills it, or a part of it.
struct Fill {
  std::size_t target;
  std::string source;
  std::optional<Part> part;
};

/// Matches the checkpoint's names to the module's and checks every pair.
class Matcher {
 public:
  Matcher(const Entries& targets, const Catalog& checkpoint, const StateDictLoadOptions& options);
  void match();
  LoadReport& report() { return report_; }
  const std::vector<Fill>& fills() const { return fills_; }

 private:
  // `name` is the file's name for the entry; `source` the tensor that holds its
  // data (itself, or the kept name of an alias).
  void consider(const std::string& name, const std::string& source, bool alias);
  void fill_module_ties();

  const Entries& targets_;
  const Catalog& checkpoint_;
  const StateDictLoadOptions& options_;
  std::unordered_map<std::string, std::size_t> index_;
  std::vector<bool> claimed_;  // matched by a name of the file (filled or mismatched)
  std::vector<Fill> fills_;
  LoadReport report_;
};

/// Deduplicated state of a module, with the aliases recorded in the metadata
/// (format "pt" added), as save_state_dict saves it.
std::pair<NamedTensors, Metadata> state_to_save(const torch::nn::Module& module,
                                                const std::optional<Metadata>& metadata);

}  // namespace safetensors::detail
