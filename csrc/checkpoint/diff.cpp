// Comparing two checkpoints of any formats tensor by tensor, in bounded
// memory, each view once however many names it has.

#include "safetensors/migrate.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "detail/text.hpp"
#include "safetensors/torch_dtype.hpp"

namespace safetensors {
namespace {

std::string dtype_text(const at::Tensor& t) {
  const auto dtype = from_torch_dtype(t.scalar_type());
  return dtype ? std::string(dtype_name(*dtype)) : std::string(c10::toString(t.scalar_type()));
}

// Compares two tensors of one dtype and shape piece by piece, so that the
// memory used stays bounded whatever their size or layout: a piece is made
// contiguous (a copy, for a view) and widened to 64 bits only when it differs.
class Comparison {
 public:
  /// `compared(bytes)` is called after each piece.
  explicit Comparison(std::function<void(std::uint64_t)> compared) : compared_(std::move(compared)) {}

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
    const bool same = std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0;
    if (compared_) compared_(ac.nbytes());
    if (same) return;
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
  std::function<void(std::uint64_t)> compared_;
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

// Whether two tensors are compared byte by byte: of one dtype and shape.
bool comparable(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes();
}

// Why two tensors of one name differ, or "" when they are bitwise identical.
std::string difference(const at::Tensor& a, const at::Tensor& b, const std::function<void(std::uint64_t)>& compared) {
  if (a.scalar_type() != b.scalar_type()) return "dtype " + dtype_text(a) + " vs " + dtype_text(b);
  if (a.sizes() != b.sizes()) return "shape " + detail::shape_text(a.sizes().vec()) + " vs " + detail::shape_text(b.sizes().vec());
  Comparison comparison(compared);
  comparison.compare(a, b);
  return comparison.detail();
}

}  // namespace

DiffReport diff_checkpoints(const Checkpoint& ca, const Checkpoint& cb, const DiffProgress& progress) {
  // A view under many names (tied weights, an expand shared by thousands of
  // entries) is compared once per pair of views, not once per name: each name
  // stands for the first name of its view (its alias's kept name), and each
  // pair of those is compared once, so that the work is that of the distinct bytes.
  std::map<std::pair<const at::Tensor*, const at::Tensor*>, std::string> compared;
  DiffReport report;
  // The bytes to compare, counted over the same pairs as the comparison below.
  std::uint64_t total = 0, done = 0;
  std::function<void(std::uint64_t)> on_piece;
  if (progress) {
    std::set<std::pair<const at::Tensor*, const at::Tensor*>> pairs;
    auto count = [&](const std::string& name) {
      const at::Tensor *mine = first_of_view(ca, name), *other = first_of_view(cb, name);
      if (mine && other && comparable(*mine, *other) && pairs.emplace(mine, other).second) total += mine->nbytes();
    };
    for (const auto& item : ca.tensors) count(item.key());
    for (const auto& [name, kept] : ca.aliases)
      if (!ca.tensors.contains(name)) count(name);
    on_piece = [&](std::uint64_t bytes) { progress(done += bytes, total); };
  }
  auto compare = [&](const std::string& name) {
    const at::Tensor* other = first_of_view(cb, name);
    if (!other) return report.only_in_a.push_back(name);
    const at::Tensor* mine = first_of_view(ca, name);
    if (!mine) return report.only_in_a.push_back(name);  // an alias whose kept tensor is missing
    const auto views = std::make_pair(mine, other);
    auto done = compared.find(views);
    if (done == compared.end()) done = compared.emplace(views, difference(*views.first, *views.second, on_piece)).first;
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
  if (progress) progress(total, total);
  return report;
}

DiffReport diff_checkpoints(const std::string& a, const std::string& b, const CheckpointOptions& options_a,
                            const CheckpointOptions& options_b) {
  return diff_checkpoints(read_checkpoint(a, options_a), read_checkpoint(b, options_b));
}

}  // namespace safetensors
