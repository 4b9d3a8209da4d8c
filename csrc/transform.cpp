// Tensor selection, renaming and casting on the way to a new file, and the
// comparison of two checkpoints already read.

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
#include "safetensors/migrate.hpp"
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

std::string dtype_text(const at::Tensor& t) {
  const auto dtype = from_torch_dtype(t.scalar_type());
  return dtype ? std::string(dtype_name(*dtype)) : std::string(c10::toString(t.scalar_type()));
}

// Compares two tensors of one dtype and shape piece by piece, so that the
// memory used stays bounded whatever their size or layout: a piece is made
// contiguous (a copy, for a view) and widened to 64 bits only when it differs.
class Comparison {
 public:
  void compare(const at::Tensor& a, const at::Tensor& b) {
    if (a.dim() == 0 || a.numel() <= kDiffChunkElements) return compare_piece(a, b);
    if (a.size(0) == 1) return compare(a.select(0, 0), b.select(0, 0));
    const std::int64_t row = a.numel() / a.size(0);
    const std::int64_t rows = std::max<std::int64_t>(1, kDiffChunkElements / row);
    for (std::int64_t i = 0; i < a.size(0); i += rows) {
      const std::int64_t n = std::min(rows, a.size(0) - i);
      compare(a.narrow(0, i, n), b.narrow(0, i, n));
    }
  }

  // "" when bitwise identical.
  std::string detail() const {
    if (equal_) return "";
    if (!has_max_) return "values differ";
    return "values differ: max abs difference " + (integral_ ? std::to_string(max_int_) : std::to_string(max_));
  }

 private:
  void compare_piece(const at::Tensor& a, const at::Tensor& b) {
    if (a.numel() == 0) return;
    const at::Tensor ac = a.contiguous(), bc = b.contiguous();
    if (std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0) return;
    equal_ = false;
    if (a.is_complex()) {
      update((ac.to(at::kComplexDouble) - bc.to(at::kComplexDouble)).abs().max().item<double>());
    } else if (a.is_floating_point()) {
      update((ac.to(at::kDouble) - bc.to(at::kDouble)).abs().max().item<double>());
    } else if (a.scalar_type() != at::kBool) {
      const auto max = (ac.to(at::kLong) - bc.to(at::kLong)).abs().max().item<std::int64_t>();
      integral_ = true;
      max_int_ = has_max_ ? std::max(max_int_, max) : max;
      has_max_ = true;
    }
  }
  // The largest difference of every piece; NaN once any piece has one, as
  // max() over the whole tensor would give.
  void update(double max) {
    if (!has_max_ || std::isnan(max) || (!std::isnan(max_) && max > max_)) max_ = max;
    has_max_ = true;
  }

  static constexpr std::int64_t kDiffChunkElements = 1 << 21;
  bool equal_ = true;
  bool has_max_ = false;
  bool integral_ = false;
  double max_ = 0;
  std::int64_t max_int_ = 0;
};

// The tensor compared for `name` in `c`: that of the first name of its view
// (for an alias, its kept name, whether or not the alias is a tensor of its
// own), or nullptr when `c` has no such name.
const at::Tensor* first_of_view(const Checkpoint& c, const std::string& name) {
  const auto alias = c.aliases.find(name);
  return c.tensors.find(alias == c.aliases.end() ? name : alias->second);
}

// Why two tensors of one name differ, or "" when they are bitwise identical.
std::string difference(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type()) return "dtype " + dtype_text(a) + " vs " + dtype_text(b);
  if (a.sizes() != b.sizes())
    return "shape " + detail::shape_text(a.sizes().vec()) + " vs " + detail::shape_text(b.sizes().vec());
  Comparison comparison;
  comparison.compare(a, b);
  return comparison.detail();
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

DiffReport diff_checkpoints(const Checkpoint& ca, const Checkpoint& cb) {
  // A view under many names (tied weights, an expand shared by thousands of
  // entries) is compared once per pair of views, not once per name: each name
  // stands for the first name of its view (its alias's kept name), and each
  // pair of those is compared once, so that the work is that of the distinct bytes.
  std::map<std::pair<const at::Tensor*, const at::Tensor*>, std::string> compared;
  DiffReport report;
  auto compare = [&](const std::string& name) {
    const at::Tensor* other = first_of_view(cb, name);
    if (!other) return report.only_in_a.push_back(name);
    const at::Tensor* mine = first_of_view(ca, name);
    if (!mine) return report.only_in_a.push_back(name);  // an alias whose kept tensor is missing
    const auto views = std::make_pair(mine, other);
    auto done = compared.find(views);
    if (done == compared.end()) done = compared.emplace(views, difference(*views.first, *views.second)).first;
    if (done->second.empty()) {
      ++report.identical;
    } else {
      report.different.push_back({name, done->second});
    }
  };
  for (const auto& item : ca.tensors) compare(item.key());
  for (const auto& [name, kept] : ca.aliases)
    if (!ca.tensors.contains(name)) compare(name);
  for (const auto& item : cb.tensors)
    if (!first_of_view(ca, item.key())) report.only_in_b.push_back(item.key());
  for (const auto& [name, kept] : cb.aliases)
    if (!cb.tensors.contains(name) && !first_of_view(ca, name)) report.only_in_b.push_back(name);
  return report;
}

}  // namespace safetensors
