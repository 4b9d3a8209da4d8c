// Tensor selection, renaming and casting on the way to a new file.

#include "safetensors/transform.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>
#include <utility>

#include "detail/glob.hpp"
#include "detail/text.hpp"
#include "safetensors/error.hpp"
#include "safetensors/torch_dtype.hpp"

namespace safetensors {
namespace {

bool any_matches(const std::vector<std::string>& patterns, const std::string& name) {
  return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) {
    return detail::is_glob(p) ? detail::glob_matches(p, name) : p == name;
  });
}

bool is_floating(Dtype dtype) noexcept {
  switch (dtype) {
    case Dtype::F4: case Dtype::F6_E2M3: case Dtype::F6_E3M2: case Dtype::F8_E5M2: case Dtype::F8_E4M3:
    case Dtype::F8_E8M0: case Dtype::F8_E4M3FNUZ: case Dtype::F8_E5M2FNUZ: case Dtype::F16: case Dtype::BF16:
    case Dtype::F32: case Dtype::F64:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool TensorTransform::identity() const noexcept {
  return include_.empty() && exclude_.empty() && strip_prefix_.empty() && add_prefix_.empty() && !dtype_;
}

bool TensorTransform::selects(const std::string& name) const {
  return (include_.empty() || any_matches(include_, name)) && !any_matches(exclude_, name);
}

std::string TensorTransform::rename(const std::string& name) const {
  const bool strip = !strip_prefix_.empty() && name.compare(0, strip_prefix_.size(), strip_prefix_) == 0;
  return add_prefix_ + (strip ? name.substr(strip_prefix_.size()) : name);
}

NamedTensors transform_tensors(const NamedTensors& tensors, const TensorTransform& transform,
                               std::map<std::string, std::string>* aliases, TransformReport* report) {
  std::optional<at::ScalarType> target;
  if (const std::optional<Dtype> dtype = transform.dtype()) {
    if (*dtype != Dtype::F16 && *dtype != Dtype::BF16 && *dtype != Dtype::F32 && *dtype != Dtype::F64)
      throw Error(ErrorCode::InvalidArgument, "", "",
                  "cannot cast to " + std::string(dtype_name(*dtype)) + ": the target must be F16, BF16, F32 or F64");
    target = to_torch_dtype(*dtype);
  }
  TransformReport local;
  TransformReport& r = report ? *report : local;
  r = {};

  std::unordered_map<std::string, std::string> original_of;  // new name -> original name
  auto claim = [&](const std::string& original) {
    std::string name = transform.rename(original);
    const auto [it, fresh] = original_of.emplace(name, original);
    if (!fresh)
      throw Error(ErrorCode::InvalidArgument, "", name,
                  "both '" + detail::escape_control(it->second) + "' and '" + detail::escape_control(original) +
                      "' would take this name");
    if (name != original) ++r.renamed;
    return name;
  };

  NamedTensors out;
  auto emit = [&](const std::string& original, const NamedTensors::Item& item) {
    const std::string name = claim(original);
    if (item.raw_dtype) {
      if (target && is_floating(*item.raw_dtype) && *item.raw_dtype != *transform.dtype())
        r.not_cast.push_back(name);
      out.add_raw(name, *item.raw_dtype, item.raw_shape, item.tensor);
      return;
    }
    at::Tensor t = item.tensor;
    if (target && t.is_floating_point() && t.scalar_type() != *target) {
      const std::optional<Dtype> from = from_torch_dtype(t.scalar_type());
      if (from) r.cast.push_back({name, *from, *transform.dtype()});
      t = t.to(*target);
    }
    out.add(name, std::move(t));
  };

  std::unordered_map<std::string, const NamedTensors::Item*> by_name;
  for (const NamedTensors::Item& item : tensors.items()) {
    by_name.emplace(item.name, &item);
    if (transform.selects(item.name)) {
      emit(item.name, item);
    } else {
      r.excluded.push_back(item.name);
    }
  }
  if (aliases) {
    std::map<std::string, std::string> kept_aliases;
    for (const auto& [removed, kept] : *aliases) {
      if (!transform.selects(removed)) {
        r.excluded.push_back(removed);
        continue;
      }
      const auto item = by_name.find(kept);
      if (item != by_name.end() && !transform.selects(kept)) {
        emit(removed, *item->second);  // its bytes, under its own name
      } else {
        kept_aliases.emplace(claim(removed), transform.rename(kept));
      }
    }
    *aliases = std::move(kept_aliases);
  }
  return out;
}

}  // namespace safetensors
