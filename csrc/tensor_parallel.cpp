// Sharding plans: names to placements, and each rank's part of a dimension.

#include "safetensors/tensor_parallel.hpp"

#include <algorithm>

#include "detail/glob.hpp"
#include "safetensors/error.hpp"

namespace safetensors {

PartRange part_range(std::int64_t size, int rank, int world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw Error(ErrorCode::InvalidArgument, "", "",
                "rank " + std::to_string(rank) + " is not in a world of " + std::to_string(world_size));
  if (size < 0) throw Error(ErrorCode::InvalidArgument, "", "", "a dimension cannot be negative");
  const std::int64_t base = size / world_size, extra = size % world_size;
  return {rank * base + std::min<std::int64_t>(rank, extra), base + (rank < extra ? 1 : 0)};
}

PartitionPlan& PartitionPlan::split(std::string pattern, std::int64_t dim) {
  return add(std::move(pattern), Placement::split(dim));
}

PartitionPlan& PartitionPlan::replicate(std::string pattern) {
  return add(std::move(pattern), Placement::replicate());
}

PartitionPlan& PartitionPlan::add(std::string pattern, Placement placement) {
  if (pattern.empty()) throw Error(ErrorCode::InvalidArgument, "", "", "a plan's pattern cannot be empty");
  rules_.push_back({std::move(pattern), placement});
  return *this;
}

Placement PartitionPlan::placement(const std::string& name) const {
  for (const Rule& rule : rules_)
    if (!detail::is_glob(rule.pattern) && rule.pattern == name) return rule.placement;
  for (const Rule& rule : rules_)
    if (detail::is_glob(rule.pattern) && detail::glob_matches(rule.pattern, name))
      return rule.placement;
  return Placement::replicate();
}

Placement TensorParallel::placement(const std::string& name, std::size_t ndim) const {
  Placement p = plan.placement(name);
  if (!p.split_dim) return p;
  const std::int64_t rank_of_tensor = static_cast<std::int64_t>(ndim);
  std::int64_t dim = *p.split_dim;
  if (dim < 0) dim += rank_of_tensor;
  if (dim < 0 || dim >= rank_of_tensor)
    throw Error(ErrorCode::InvalidArgument, "", name,
                "the plan splits dimension " + std::to_string(*p.split_dim) + " of a tensor with " +
                    std::to_string(ndim) + " dimension" + (ndim == 1 ? "" : "s"));
  return Placement::split(dim);
}

std::optional<PartRange> TensorParallel::range(const std::string& name,
                                                const std::vector<std::int64_t>& shape) const {
  const Placement p = placement(name, shape.size());
  if (!p.split_dim) return std::nullopt;
  return part_range(shape[static_cast<std::size_t>(*p.split_dim)], rank, world_size);
}

std::vector<std::int64_t> TensorParallel::local_shape(const std::string& name,
                                                      std::vector<std::int64_t> shape) const {
  const Placement p = placement(name, shape.size());
  if (p.split_dim) {
    auto& size = shape[static_cast<std::size_t>(*p.split_dim)];
    size = part_range(size, rank, world_size).length;
  }
  return shape;
}

}  // namespace safetensors
