// A module's state dict from and to checkpoints: match the file's names to the
// module's, check every entry before touching a parameter, then fill them one
// tensor at a time (or make them views of the mapping).

#include "safetensors/module.hpp"

#include "module_internal.hpp"
#include "save_internal.hpp"

#include <torch/nn/module.h>
#include <torch/utils.h>

#include <algorithm>
#include <sstream>
#include <tuple>
#include <unordered_map>

#include "safetensors/error.hpp"
#include "safetensors/sharded.hpp"
#include "safetensors/torch_dtype.hpp"

namespace safetensors {

namespace detail {

Entries module_state(const torch::nn::Module& module) {
  Entries out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

std::vector<std::int64_t> torch_shape(const TensorInfo& info) {
  std::vector<std::int64_t> shape(info.shape.begin(), info.shape.end());
  const unsigned bits = dtype_bits(info.dtype);
  if (bits < 8 && !shape.empty()) shape.back() /= 8 / bits;
  return shape;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string shape_text(const std::vector<std::uint64_t>& shape) {
  return shape_text(std::vector<std::int64_t>(shape.begin(), shape.end()));
}

std::vector<at::indexing::TensorIndex> part_index(std::int64_t dim, const ShardRange& range) {
  std::vector<at::indexing::TensorIndex> index(static_cast<std::size_t>(dim), at::indexing::Slice());
  index.emplace_back(at::indexing::Slice(range.start, range.start + range.length));
  return index;
}

namespace {

// Torch dtypes by their safetensors names where the format has one, so a
// report compares like with like ("F32" against "BF16").
std::string dtype_text(c10::ScalarType type) {
  if (auto d = from_torch_dtype(type)) return std::string(dtype_name(*d));
  return c10::toString(type);
}

// Why a file tensor cannot fill `target`, or nullopt when it can. `part` is
// the rank's part of the tensor when the tensor is split across ranks.
std::optional<std::string> misfit(const at::Tensor& target, const TensorInfo& info,
                                  const std::optional<TensorParallel>& tp,
                                  const std::optional<Part>& part, bool convert_dtype) {
  const auto type = to_torch_dtype(info.dtype);
  if (!type)
    return "the file's dtype has no torch dtype in LibTorch " + torch_version();
  if (part) {
    if (dtype_bits(info.dtype) < 8) return std::string("a packed sub-byte dtype cannot be split across ranks");
    std::vector<std::int64_t> local = torch_shape(info);
    local[static_cast<std::size_t>(part->dim)] = part->range.length;
    if (c10::IntArrayRef(local) != target.sizes())
      return "shape: rank " + std::to_string(tp->rank) + " of " + std::to_string(tp->world_size) +
             " holds " + shape_text(local) + " of it (dimension " + std::to_string(part->dim) +
             ", elements " + std::to_string(part->range.start) + ".." +
             std::to_string(part->range.start + part->range.length) + ")";
  } else if (c10::IntArrayRef(torch_shape(info)) != target.sizes()) {
    return std::string("shape");
  }
  if (*type == target.scalar_type()) return std::nullopt;
  if (convert_dtype && c10::isFloatingType(*type) && c10::isFloatingType(target.scalar_type()))
    return std::nullopt;
  return std::string("dtype");
}

std::optional<std::string> module_name_of(const std::string& file_name,
                                          const StateDictLoadOptions& options) {
  std::string name = file_name;
  const std::string& strip = options.strip_prefix();
  if (!strip.empty() && name.compare(0, strip.size(), strip) == 0) name.erase(0, strip.size());
  name.insert(0, options.add_prefix());
  if (options.rename()) return options.rename()(name);
  return name;
}

}  // namespace

Catalog Catalog::of(const ShardedOpen& checkpoint) {
  Catalog out;
  out.path = checkpoint.path();
  for (const SafeOpen& shard : checkpoint.shards())
    for (const TensorInfo& info : shard.header().tensors()) out.add(info);
  // `removed -> kept` entries a saver recorded in the metadata: a key that is
  // no tensor of the checkpoint, naming one that is.
  for (const SafeOpen& shard : checkpoint.shards())
    for (const auto& [key, value] : shard.metadata())
      if (checkpoint.contains(value) && !checkpoint.contains(key)) out.aliases.emplace_back(key, value);
  return out;
}

void Catalog::add(TensorInfo info) {
  index.emplace(info.name, tensors.size());
  tensors.push_back(std::move(info));
}

const TensorInfo& Catalog::info(const std::string& name) const {
  const auto it = index.find(name);
  if (it == index.end())
    throw Error(ErrorCode::TensorNotFound, path, name, "the checkpoint does not contain this tensor");
  return tensors[it->second];
}

namespace {

// The same memory seen the same way: entries tied in the module.
bool same_view(const at::Tensor& a, const at::Tensor& b) {
  return a.is_same(b) ||
         (a.has_storage() && b.has_storage() && a.storage().is_alias_of(b.storage()) &&
          a.storage_offset() == b.storage_offset() && a.sizes() == b.sizes() &&
          a.strides() == b.strides() && a.scalar_type() == b.scalar_type());
}

}  // namespace

Matcher::Matcher(const Entries& targets, const Catalog& checkpoint, const StateDictLoadOptions& options)
    : targets_(targets), checkpoint_(checkpoint), options_(options), claimed_(targets.size()) {
  for (std::size_t i = 0; i < targets.size(); ++i) index_.emplace(targets[i].first, i);
}

void Matcher::match() {
  for (const TensorInfo& info : checkpoint_.tensors) consider(info.name, info.name, /*alias=*/false);
  for (const auto& [removed, kept] : checkpoint_.aliases) consider(removed, kept, /*alias=*/true);
  fill_module_ties();
  for (std::size_t i = 0; i < targets_.size(); ++i)
    if (!claimed_[i]) report_.missing_keys.push_back(targets_[i].first);
  std::vector<bool> filled(targets_.size());
  for (const Fill& f : fills_) filled[f.target] = true;
  for (std::size_t i = 0; i < targets_.size(); ++i)
    if (filled[i]) report_.loaded_keys.push_back(targets_[i].first);
}

void Matcher::consider(const std::string& name, const std::string& source, bool alias) {
  const std::optional<std::string> mapped = module_name_of(name, options_);
  if (!mapped) return;
  const auto it = index_.find(*mapped);
  if (it == index_.end()) {
    // An alias names no tensor of the file: a module without it is not at fault.
    if (!alias) report_.unexpected_keys.push_back({name, *mapped});
    return;
  }
  const std::size_t i = it->second;
  if (claimed_[i])
    throw Error(ErrorCode::InvalidArgument, "", name,
                "renaming maps two tensors of the checkpoint to '" + *mapped + "'");
  claimed_[i] = true;
  const at::Tensor& target = targets_[i].second;
  const TensorInfo& info = checkpoint_.info(source);
  std::optional<Part> part;
  if (const auto& tp = options_.tensor_parallel()) {
    const std::vector<std::int64_t> shape = torch_shape(info);
    const Placement placement = tp->placement(*mapped, shape.size());
    if (placement.split_dim) {
      const std::int64_t dim = *placement.split_dim;
      part = Part{dim, shard_range(shape[static_cast<std::size_t>(dim)], tp->rank, tp->world_size)};
    }
  }
  if (auto reason = misfit(target, info, options_.tensor_parallel(), part, options_.convert_dtype())) {
    report_.mismatched.push_back({name, *mapped, target.sizes().vec(), target.scalar_type(),
                                  info.shape, info.dtype, *reason});
    return;
  }
  fills_.push_back({i, source, part});
}

// An entry the file lacks but that the module ties to a filled one (an output
// layer sharing the embedding's weight) gets the same tensor.
void Matcher::fill_module_ties() {
  const std::size_t loaded = fills_.size();
  for (std::size_t i = 0; i < targets_.size(); ++i) {
    if (claimed_[i]) continue;
    for (std::size_t f = 0; f < loaded; ++f) {
      if (!same_view(targets_[i].second, targets_[fills_[f].target].second)) continue;
      claimed_[i] = true;
      fills_.push_back({i, fills_[f].source, fills_[f].part});
      break;
    }
  }
}

}  // namespace detail

using namespace detail;

namespace {

void fill(Entries& targets, const std::vector<Fill>& fills, const ShardedOpen& checkpoint,
          LoadMode mode) {
  torch::NoGradGuard no_grad;
  // Tied entries must end up sharing one tensor, so each view is made once.
  std::unordered_map<std::string, at::Tensor> views;
  std::vector<std::pair<const SafeOpen*, std::vector<std::pair<std::string, at::Tensor>>>> reads;
  for (const Fill& f : fills) {
    at::Tensor& target = targets[f.target].second;
    if (mode == LoadMode::ZeroCopy && target.device().is_cpu()) {
      auto [it, fresh] = views.try_emplace(f.source);
      if (fresh) {
        at::Tensor view = checkpoint.get_tensor(f.source);
        if (f.part) view = view.narrow(f.part->dim, f.part->range.start, f.part->range.length).contiguous();
        it->second = view.to(target.scalar_type());
      }
      target.set_data(it->second);
    } else if (f.part) {
      // Only the part's bytes are read.
      target.copy_(checkpoint.get_slice(f.source)(part_index(f.part->dim, f.part->range)));
    } else {
      // Straight from the file into the parameter's memory (converting and
      // crossing devices on the way when it must): no second copy of the
      // tensor. Gathered per shard, so that parameters on a GPU share one pass
      // through the staging buffers.
      const SafeOpen* shard = &checkpoint.shard_of(f.source);
      auto group = std::find_if(reads.begin(), reads.end(), [&](const auto& g) { return g.first == shard; });
      if (group == reads.end()) group = reads.insert(reads.end(), {shard, {}});
      group->second.emplace_back(f.source, target);
    }
  }
  for (const auto& [shard, targets_of_shard] : reads) shard->read_into(targets_of_shard);
}

// Covers its whole storage, as the reference's `_is_complete` asks.
bool is_complete(const at::Tensor& t) {
  return t.storage_offset() == 0 &&
         static_cast<std::uint64_t>(t.numel()) * t.element_size() == t.storage().nbytes();
}

}  // namespace

std::string LoadReport::describe() const {
  std::ostringstream out;
  for (const std::string& name : missing_keys) out << "missing: '" << name << "'\n";
  for (const Unexpected& u : unexpected_keys) {
    out << "unexpected: '" << u.file_name << "'";
    if (u.module_name != u.file_name) out << " (renamed '" << u.module_name << "')";
    out << "\n";
  }
  for (const Mismatch& m : mismatched) {
    out << "mismatched: '" << m.file_name << "'";
    if (m.module_name != m.file_name) out << " (renamed '" << m.module_name << "')";
    out << ": the module has " << dtype_text(m.expected_dtype) << " " << shape_text(m.expected_shape)
        << ", the checkpoint " << dtype_name(m.found_dtype) << " " << shape_text(m.found_shape) << " ("
        << m.reason << ")\n";
  }
  return out.str();
}

LoadReport load_state_dict(torch::nn::Module& module, const ShardedOpen& checkpoint,
                           const StateDictLoadOptions& options) {
  Entries targets = module_state(module);
  const Catalog catalog = Catalog::of(checkpoint);
  Matcher matcher(targets, catalog, options);
  matcher.match();
  LoadReport& report = matcher.report();
  // Checked before anything is filled: a failed strict load leaves the module as it was.
  if (options.strict() && !report.ok())
    throw Error(ErrorCode::StateDictMismatch, checkpoint.path(), "",
                "the module and the checkpoint disagree:\n" + report.describe());
  fill(targets, matcher.fills(), checkpoint, options.mode());
  return std::move(report);
}

LoadReport load_state_dict(torch::nn::Module& module, const std::string& path,
                           const StateDictLoadOptions& options) {
  return load_state_dict(module, ShardedOpen(path, LoadOptions().backend(default_backend(options))), options);
}

LoadReport load_state_dict(torch::nn::Module& module, const SafeOpen& file,
                           const StateDictLoadOptions& options) {
  return load_state_dict(module, ShardedOpen(file), options);
}

Deduplicated deduplicate_shared(const NamedTensors& tensors) {
  Deduplicated out;
  for (auto group : overlapping_groups(tensors)) {
    std::sort(group.begin(), group.end(), [](const auto* a, const auto* b) { return a->name < b->name; });
    const auto kept = std::find_if(group.begin(), group.end(),
                                   [](const auto* item) { return is_complete(item->tensor); });
    if (kept == group.end()) {
      std::string names;
      for (const auto* item : group) names += (names.empty() ? "'" : ", '") + item->name + "'";
      throw Error(ErrorCode::InvalidArgument, "", group.front()->name,
                  "tensors " + names +
                      " share memory and none covers the whole storage: saving one would store "
                      "more than the tensors; .clone() them");
    }
    for (const auto* item : group)
      if (item != *kept) out.aliases.emplace(item->name, (*kept)->name);
  }
  for (const auto& item : tensors.items())
    if (!out.aliases.count(item.name)) {
      if (item.raw_dtype) {
        out.tensors.add_raw(item.name, *item.raw_dtype, item.raw_shape, item.tensor);
      } else {
        out.tensors.add(item.name, item.tensor);
      }
    }
  return out;
}

std::pair<NamedTensors, Metadata> detail::state_to_save(const torch::nn::Module& module,
                                                        const std::optional<Metadata>& metadata) {
  NamedTensors state;
  for (auto& [name, tensor] : module_state(module)) state.add(std::move(name), std::move(tensor));
  Deduplicated saved = deduplicate_shared(state);
  Metadata meta = metadata.value_or(Metadata{});
  meta.emplace("format", "pt");
  for (const auto& [removed, kept] : saved.aliases) meta.emplace(removed, kept);  // user keys win
  return {std::move(saved.tensors), std::move(meta)};
}

void save_state_dict(const torch::nn::Module& module, const std::string& path,
                     const std::optional<Metadata>& metadata, const StateDictSaveOptions& options) {
  auto [tensors, meta] = detail::state_to_save(module, metadata);
  if (options.max_shard_size()) {
    save_sharded(tensors, path, meta,
                 ShardedSaveOptions().max_shard_size(*options.max_shard_size()).fsync(options.fsync()));
  } else {
    save_file(tensors, path, meta, SaveOptions().fsync(options.fsync()));
  }
}

}  // namespace safetensors
