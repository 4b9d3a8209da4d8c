#pragma once
// Tensor parallelism: which part of each tensor a rank holds (a "part"; a
// "shard" is a file of a sharded checkpoint, sharded.hpp). A plan maps
// tensor names (exact, or glob patterns) to a dimension to split or to
// "replicate"; with a rank and a world size it gives each rank's slice.
// Torch-free.
//
//   auto plan = safetensors::PartitionPlan()
//                   .split("*.q_proj.weight", 0)    // column-parallel: output rows
//                   .split("*.q_proj.bias", 0)
//                   .split("*.o_proj.weight", 1);   // row-parallel: input columns
//   // everything else is replicated
//   safetensors::load_state_dict(model, "model.safetensors",
//       safetensors::StateDictLoadOptions().tensor_parallel({plan, rank, world_size}));
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace safetensors {

/// Where a tensor lives across ranks.
struct Placement {
  /// The dimension split across ranks (negative counts from the end), or
  /// nullopt: every rank holds the whole tensor.
  std::optional<std::int64_t> split_dim;

  static Placement replicate() { return {}; }
  static Placement split(std::int64_t dim) { return {dim}; }
  bool is_split() const noexcept { return split_dim.has_value(); }
  bool operator==(const Placement& other) const noexcept { return split_dim == other.split_dim; }
};

/// A rank's part of one dimension: elements [start, start + length).
struct PartRange {
  std::int64_t start = 0;
  std::int64_t length = 0;
  bool operator==(const PartRange& other) const noexcept {
    return start == other.start && length == other.length;
  }
};

/// The usual uneven split: `size` elements over `world_size` ranks, the first
/// `size % world_size` ranks taking one more. Throws InvalidArgument for a
/// rank outside [0, world_size) or a negative size.
PartRange part_range(std::int64_t size, int rank, int world_size);

/// Rules from names to placements. A name takes the placement of its exact
/// rule if it has one, else of the first pattern (`*` any run of characters,
/// dots included; `?` one character; `[...]` a set) that matches, in the order
/// the rules were added; names no rule matches are replicated.
class PartitionPlan {
 public:
  /// Splits the matching tensors along `dim` (0: column-parallel linear
  /// weights and their biases; 1: row-parallel linear weights).
  PartitionPlan& split(std::string pattern, std::int64_t dim);
  /// Every rank holds the whole of the matching tensors.
  PartitionPlan& replicate(std::string pattern);
  PartitionPlan& add(std::string pattern, Placement placement);

  Placement placement(const std::string& name) const;

  struct Rule {
    std::string pattern;
    Placement placement;
  };
  const std::vector<Rule>& rules() const noexcept { return rules_; }

 private:
  std::vector<Rule> rules_;
};

/// A plan, and the rank it is applied for.
struct TensorParallel {
  PartitionPlan plan;
  int rank = 0;
  int world_size = 1;

  /// The placement of `name` with its split dimension made non-negative.
  /// Throws InvalidArgument (naming the tensor) when the dimension is outside
  /// a tensor of rank `shape.size()`.
  Placement placement(const std::string& name, std::size_t ndim) const;
  /// This rank's part along the split dimension of a tensor of `shape`, or
  /// nullopt when the tensor is replicated.
  std::optional<PartRange> range(const std::string& name, const std::vector<std::int64_t>& shape) const;
  /// This rank's shape of a tensor of `shape`.
  std::vector<std::int64_t> local_shape(const std::string& name, std::vector<std::int64_t> shape) const;
};

// The names of release 0.1, kept for one release.
using ShardRange [[deprecated("use PartRange")]] = PartRange;
using ShardingPlan [[deprecated("use PartitionPlan")]] = PartitionPlan;
[[deprecated("use part_range")]] inline PartRange shard_range(std::int64_t size, int rank, int world_size) {
  return part_range(size, rank, world_size);
}

}  // namespace safetensors
