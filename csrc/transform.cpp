// Tensor selection, renaming and casting on the way to a new file.

#include "safetensors/transform.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <unordered_map>
#include <utility>

#include "detail/glob.hpp"
#include "detail/text.hpp"
#include "safetensors/error.hpp"
#include "safetensors/torch_dtype.hpp"

namespace safetensors {
namespace {

bool matches(const std::string& pattern, const std::string& name) {
  return detail::is_glob(pattern) ? detail::glob_matches(pattern, name) : pattern == name;
}

bool any_matches(const std::vector<std::string>& patterns, const std::string& name) {
  return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) { return matches(p, name); });
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

// The largest finite value of a cast's source or target dtype (F16, BF16, F32, F64).
double max_finite(Dtype dtype) noexcept {
  switch (dtype) {
    case Dtype::F16: return 65504.0;
    case Dtype::BF16: return 3.3895313892515355e38;
    case Dtype::F32: return 3.4028234663852886e38;
    // The 8-bit floats fit in F16 (and wider), F8_E8M0 in F32 alone.
    case Dtype::F8_E4M3:
    case Dtype::F8_E4M3FNUZ: return 448.0;
    case Dtype::F8_E5M2:
    case Dtype::F8_E5M2FNUZ: return 57344.0;
    case Dtype::F8_E8M0: return 1.7014118346046923e38;
    default: return std::numeric_limits<double>::max();
  }
}

// The infinities and NaNs of `t`, counted a slice at a time so that the mask
// stays small whatever the tensor's size.
std::uint64_t non_finite(const at::Tensor& t) {
  // LibTorch's isfinite lacks the 8-bit floats: they are counted widened
  // (exactly), a slice at a time.
  const bool narrow = t.element_size() == 1;
  if (narrow && !t.is_contiguous()) return non_finite(t.contiguous());
  if (!t.is_contiguous()) return static_cast<std::uint64_t>(at::isfinite(t).logical_not().sum().item<std::int64_t>());
  const at::Tensor flat = t.view({-1});
  constexpr std::int64_t kSlice = std::int64_t{1} << 24;
  std::uint64_t n = 0;
  for (std::int64_t i = 0; i < flat.numel(); i += kSlice) {
    const at::Tensor slice = flat.narrow(0, i, std::min(kSlice, flat.numel() - i));
    n += static_cast<std::uint64_t>(
        at::isfinite(narrow ? slice.to(at::kFloat) : slice).logical_not().sum().item<std::int64_t>());
  }
  return n;
}

// "'a', 'b*'"
std::string quoted(const std::vector<std::string>& patterns) {
  std::string out;
  for (const std::string& p : patterns) out += (out.empty() ? "'" : ", '") + p + "'";
  return out;
}

// The patterns of `patterns` that `used` does not mark.
std::vector<std::string> unused(const std::vector<std::string>& patterns, const std::vector<bool>& used) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < patterns.size(); ++i)
    if (!used[i]) out.push_back(patterns[i]);
  return out;
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
                               std::map<std::string, std::string>* aliases, TransformReport* report,
                               std::vector<std::string>* values) {
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
    if (name.empty())
      throw Error(ErrorCode::InvalidArgument, "", original,
                  "removing the prefix '" + transform.strip_prefix() + "' would leave it no name");
    const auto [it, fresh] = original_of.emplace(name, original);
    if (!fresh)
      throw Error(ErrorCode::InvalidArgument, "", name,
                  "both '" + it->second + "' and '" + original + "' would take this name");
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
      const at::Tensor source = t;
      t = t.to(*target);
      if (from) {
        // Only values beyond the target's range become infinite: counted when
        // the cast made some value non-finite, against the source's own.
        std::uint64_t overflowed = 0;
        if (max_finite(*from) > max_finite(*transform.dtype()))
          if (const std::uint64_t after = non_finite(t)) overflowed = after - non_finite(source);
        r.cast.push_back({name, *from, *transform.dtype(), overflowed});
      }
    }
    out.add(name, std::move(t));
  };

  // Which patterns match some name of the input, tensor or alias.
  const std::vector<std::string>& include = transform.include();
  const std::vector<std::string>& exclude = transform.exclude();
  std::vector<bool> include_used(include.size()), exclude_used(exclude.size());
  auto note_matches = [&](const std::string& name) {
    for (std::size_t i = 0; i < include.size(); ++i)
      if (!include_used[i] && matches(include[i], name)) include_used[i] = true;
    for (std::size_t i = 0; i < exclude.size(); ++i)
      if (!exclude_used[i] && matches(exclude[i], name)) exclude_used[i] = true;
  };

  std::unordered_map<std::string, const NamedTensors::Item*> by_name;
  for (const NamedTensors::Item& item : tensors.items()) {
    note_matches(item.name);
    by_name.emplace(item.name, &item);
    if (transform.selects(item.name)) {
      emit(item.name, item);
    } else {
      r.excluded.push_back(item.name);
    }
  }
  // The values written beside the tensors share their names.
  std::size_t kept_values = 0;
  if (values)
    for (std::string& name : *values) {
      note_matches(name);
      if (!transform.selects(name)) {
        r.excluded.push_back(name);
        name.clear();
        continue;
      }
      name = claim(name);
      ++kept_values;
    }
  const std::size_t input_values = values ? values->size() : 0;

  // A selection that leaves nothing of a non-empty input is refused before
  // anything is written.
  const std::size_t input_aliases = aliases ? aliases->size() : 0;
  auto check_selection = [&](std::size_t kept_aliases) {
    if (tensors.size() + input_aliases + input_values == 0 || out.size() + kept_aliases + kept_values > 0) return;
    std::string selection;
    if (!include.empty()) selection = "include " + quoted(include);
    if (!exclude.empty()) selection += (selection.empty() ? "exclude " : "; exclude ") + quoted(exclude);
    std::string what = std::to_string(tensors.size()) + (tensors.size() == 1 ? " tensor" : " tensors");
    if (input_aliases) what += " and " + std::to_string(input_aliases) + (input_aliases == 1 ? " alias" : " aliases");
    if (input_values) what += " and " + std::to_string(input_values) + (input_values == 1 ? " value" : " values");
    throw EmptySelection(ErrorCode::InvalidArgument, "", "",
                         "the selection (" + selection + ") leaves none of the " + what);
  };
  if (aliases) {
    std::map<std::string, std::string> kept_aliases;
    for (const auto& [removed, kept] : *aliases) {
      note_matches(removed);
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
    check_selection(kept_aliases.size());
    *aliases = std::move(kept_aliases);
  } else {
    check_selection(0);
  }
  r.unmatched_include = unused(include, include_used);
  r.unmatched_exclude = unused(exclude, exclude_used);
  return out;
}

}  // namespace safetensors
