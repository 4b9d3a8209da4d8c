// A module's state dict from and to checkpoints: match the file's names to the
// module's, check every entry before touching a parameter, then fill them one
// tensor at a time (or make them views of the mapping).

#include "safetensors/module.hpp"

#include "detail/extent.hpp"
#include "module_internal.hpp"
#include "save_internal.hpp"

#include <torch/nn/module.h>
#include <torch/utils.h>

#include <algorithm>
#include <limits>
#include <map>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

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

std::vector<at::indexing::TensorIndex> part_index(std::int64_t dim, const PartRange& range) {
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
std::optional<std::string> misfit(const at::Tensor& target, const TensorInfo& info, const std::string& file,
                                  const std::optional<TensorParallel>& tp,
                                  const std::optional<Part>& part, bool convert_dtype) {
  const auto type = to_torch_dtype(info.dtype);
  if (!type)
    return "the file's dtype has no torch dtype in LibTorch " + torch_version();
  if (part) {
    if (dtype_bits(info.dtype) < 8) return std::string("a packed sub-byte dtype cannot be split across ranks");
    std::vector<std::int64_t> local = torch_shape(info, file);
    local[static_cast<std::size_t>(part->dim)] = part->range.length;
    if (c10::IntArrayRef(local) != target.sizes())
      return "shape: rank " + std::to_string(tp->rank) + " of " + std::to_string(tp->world_size) +
             " holds " + shape_text(local) + " of it (dimension " + std::to_string(part->dim) +
             ", elements " + std::to_string(part->range.start) + ".." +
             std::to_string(part->range.start + part->range.length) + ")";
  } else if (c10::IntArrayRef(torch_shape(info, file)) != target.sizes()) {
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
  // no tensor of the checkpoint, naming one that is. save_state_dict records
  // them in every shard of a set, huggingface_hub in the index only: each
  // counts once per set, and a name recorded for two tensors is ambiguous.
  struct Recorded {
    const std::string* kept;
    const std::string* file;
  };
  std::unordered_map<std::string, Recorded> recorded;
  auto collect = [&](const Metadata& metadata, const std::string& file) {
    for (const auto& [key, value] : metadata) {
      if (!checkpoint.contains(value) || checkpoint.contains(key)) continue;
      const auto [it, fresh] = recorded.emplace(key, Recorded{&value, &file});
      if (fresh) {
        out.aliases.emplace_back(key, value);
      } else if (*it->second.kept != value) {
        throw Error(ErrorCode::InvalidIndex, checkpoint.path(), key,
                    "recorded as an alias of '" + *it->second.kept + "' in " + *it->second.file + " and of '" +
                        value + "' in " + file + ": which tensor it names is ambiguous");
      }
    }
  };
  if (const ShardIndex* index = checkpoint.index()) collect(index->metadata, checkpoint.path());
  for (const SafeOpen& shard : checkpoint.shards()) collect(shard.metadata(), shard.path());
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

// What makes two entries the same memory seen the same way. A tensor without
// data of its own (meta, empty) is only ever the same as itself.
using ViewKey = std::tuple<int, std::uintptr_t, std::vector<std::int64_t>, std::vector<std::int64_t>, int>;

ViewKey view_key(const at::Tensor& t) {
  const auto extent = extent_of(t);
  if (!extent) return {-1, reinterpret_cast<std::uintptr_t>(t.unsafeGetTensorImpl()), {}, {}, -1};
  return {extent->device, extent->begin, t.sizes().vec(), t.strides().vec(), static_cast<int>(t.scalar_type())};
}

}  // namespace

std::vector<std::size_t> tie_groups(const Entries& targets) {
  std::map<ViewKey, std::size_t> first;
  std::vector<std::size_t> groups(targets.size());
  for (std::size_t i = 0; i < targets.size(); ++i)
    groups[i] = first.emplace(view_key(targets[i].second), i).first->second;
  return groups;
}

Matcher::Matcher(const Entries& targets, const Catalog& checkpoint, const StateDictLoadOptions& options)
    : targets_(targets), checkpoint_(checkpoint), options_(options), groups_(tie_groups(targets)),
      claimed_(targets.size()) {
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
    const std::vector<std::int64_t> shape = torch_shape(info, checkpoint_.path);
    const Placement placement = tp->placement(*mapped, shape.size());
    if (placement.split_dim) {
      const std::int64_t dim = *placement.split_dim;
      part = Part{dim, part_range(shape[static_cast<std::size_t>(dim)], tp->rank, tp->world_size)};
    }
  }
  if (auto reason = misfit(target, info, checkpoint_.path, options_.tensor_parallel(), part, options_.convert_dtype())) {
    report_.mismatched.push_back({name, *mapped, target.sizes().vec(), target.scalar_type(),
                                  info.shape, info.dtype, *reason});
    return;
  }
  fills_.push_back({i, source, part});
}

// An entry the file lacks but that the module ties to a filled one (an output
// layer sharing the embedding's weight) gets the same tensor: that of the
// group's first fill.
void Matcher::fill_module_ties() {
  std::unordered_map<std::size_t, std::size_t> first_fill;  // group -> fill
  for (std::size_t f = 0; f < fills_.size(); ++f) first_fill.emplace(groups_[fills_[f].target], f);
  for (std::size_t i = 0; i < targets_.size(); ++i) {
    if (claimed_[i]) continue;
    const auto it = first_fill.find(groups_[i]);
    if (it == first_fill.end()) continue;
    claimed_[i] = true;
    Fill tie = fills_[it->second];
    tie.target = i;
    fills_.push_back(std::move(tie));
  }
}

std::vector<Write> Matcher::writes() const {
  std::unordered_map<std::size_t, std::size_t> write_of;  // group -> write
  std::vector<Write> out;
  for (const Fill& f : fills_) {
    const auto [it, fresh] = write_of.emplace(groups_[f.target], out.size());
    if (fresh) {
      out.push_back({&f, {}, false});
    } else if (f.target > out[it->second].fill->target) {
      out[it->second].fill = &f;
    }
  }
  for (std::size_t i = 0; i < targets_.size(); ++i) {
    const auto it = write_of.find(groups_[i]);
    if (it != write_of.end()) out[it->second].members.push_back(i);
  }
  // Groups whose memory overlaps another group's: one sweep over the extents
  // of every group of the module, in address order.
  std::vector<std::pair<Extent, std::size_t>> extents;  // (extent, group)
  for (std::size_t i = 0; i < targets_.size(); ++i)
    if (groups_[i] == i)
      if (const auto e = extent_of(targets_[i].second)) extents.emplace_back(*e, i);
  std::sort(extents.begin(), extents.end(), [](const auto& a, const auto& b) {
    return std::tie(a.first.device, a.first.begin) < std::tie(b.first.device, b.first.begin);
  });
  std::unordered_set<std::size_t> linked;
  // `reach`: of the extents before k on k's device, the one that ends last.
  // Any earlier extent that overlaps k overlaps it too, so was marked with it.
  for (std::size_t k = 1, reach = 0; k < extents.size(); ++k) {
    const Extent& here = extents[k].first;
    const Extent& far = extents[reach].first;
    const bool same_device = far.device == here.device;
    if (same_device && far.end > here.begin) {
      linked.insert(extents[reach].second);
      linked.insert(extents[k].second);
    }
    if (!same_device || here.end > far.end) reach = k;
  }
  for (Write& w : out) w.linked = linked.count(groups_[w.fill->target]) != 0;
  std::sort(out.begin(), out.end(), [](const Write& a, const Write& b) { return a.fill->target < b.fill->target; });
  return out;
}

at::Tensor Handout::own(at::Tensor t) {
  const auto extent = extent_of(t);
  if (!extent) return t;
  // The ranges are disjoint: only the last one that begins before `t` ends can overlap it.
  const auto next = ranges_.lower_bound(extent->end);
  if (next != ranges_.begin() && std::prev(next)->second > extent->begin) {
    t = t.clone(at::MemoryFormat::Contiguous);  // fresh memory, which nothing else holds
    ranges_.emplace(extent_of(t)->begin, extent_of(t)->end);
    return t;
  }
  ranges_.emplace(extent->begin, extent->end);
  return t;
}

}  // namespace detail

using namespace detail;

namespace {

// Each write once: a group of tied entries is one memory, filled from one
// file tensor (or part of it).
void fill(Entries& targets, const std::vector<Write>& writes, const ShardedOpen& checkpoint, LoadMode mode) {
  torch::NoGradGuard no_grad;
  Handout handout;
  std::vector<std::pair<const SafeOpen*, std::vector<std::pair<std::string, at::Tensor>>>> reads;
  std::unordered_map<const SafeOpen*, std::size_t> read_of;  // shard -> reads
  std::vector<const Write*> in_place;                         // linked writes, after the others
  auto write_in_place = [&](const Fill& f) {
    at::Tensor& target = targets[f.target].second;
    if (f.part) {
      target.copy_(checkpoint.get_slice(f.source)(part_index(f.part->dim, f.part->range)));  // only the part's bytes
    } else {
      checkpoint.shard_of(f.source).read_into(f.source, target);
    }
  };
  for (const Write& w : writes) {
    const Fill& f = *w.fill;
    at::Tensor& target = targets[f.target].second;
    if (w.linked) {
      in_place.push_back(&w);
    } else if (mode == LoadMode::ZeroCopy && target.device().is_cpu()) {
      at::Tensor view = checkpoint.get_tensor(f.source);
      if (f.part) view = view.narrow(f.part->dim, f.part->range.start, f.part->range.length).contiguous();
      view = handout.own(view.to(target.scalar_type()));
      for (std::size_t m : w.members) targets[m].second.set_data(view);
    } else if (f.part) {
      write_in_place(f);
    } else {
      // Straight from the file into the parameter's memory (converting and
      // crossing devices on the way when it must): no second copy of the
      // tensor. Gathered per shard, so that parameters on a GPU share one pass
      // through the staging buffers.
      const SafeOpen* shard = &checkpoint.shard_of(f.source);
      const auto [it, fresh] = read_of.emplace(shard, reads.size());
      if (fresh) reads.emplace_back(shard, std::vector<std::pair<std::string, at::Tensor>>{});
      reads[it->second].second.emplace_back(f.source, target);
    }
  }
  for (const auto& [shard, targets_of_shard] : reads) shard->read_into(targets_of_shard);
  // In the module's order: the last write to shared memory wins.
  for (const Write* w : in_place) write_in_place(*w->fill);
}

// Covers its whole storage, as the reference's `_is_complete` asks.
bool is_complete(const at::Tensor& t) {
  return t.storage_offset() == 0 &&
         static_cast<std::uint64_t>(t.numel()) * t.element_size() == t.storage().nbytes();
}

}  // namespace

std::string LoadReport::describe() const {
  // Names come from files: one with a newline must not forge a line.
  const auto name_of = [](const std::string& name) { return detail::escape_control(name); };
  std::ostringstream out;
  for (const std::string& name : missing_keys) out << "missing: '" << name_of(name) << "'\n";
  for (const Unexpected& u : unexpected_keys) {
    out << "unexpected: '" << name_of(u.file_name) << "'";
    if (u.module_name != u.file_name) out << " (renamed '" << name_of(u.module_name) << "')";
    out << "\n";
  }
  for (const Mismatch& m : mismatched) {
    out << "mismatched: '" << name_of(m.file_name) << "'";
    if (m.module_name != m.file_name) out << " (renamed '" << name_of(m.module_name) << "')";
    out << ": the module has " << dtype_text(m.expected_dtype) << " " << shape_text(m.expected_shape)
        << ", the checkpoint " << dtype_name(m.found_dtype) << " " << shape_text(m.found_shape) << " ("
        << m.reason << ")\n";
  }
  return out.str();
}

void detail::refuse_mismatch(const LoadReport& report, const StateDictLoadOptions& options, const std::string& file,
                             const std::string& what) {
  if (options.strict() && !report.ok())
    throw Error(ErrorCode::StateDictMismatch, file, "", what + " and the checkpoint disagree:\n" + report.describe());
}

LoadReport detail::load_state(Entries& targets, const ShardedOpen& checkpoint, const StateDictLoadOptions& options) {
  const Catalog catalog = Catalog::of(checkpoint);
  Matcher matcher(targets, catalog, options);
  matcher.match();
  LoadReport& report = matcher.report();
  // Checked before anything is filled: a failed strict load leaves the module as it was.
  refuse_mismatch(report, options, checkpoint.path(), "the module");
  fill(targets, matcher.writes(), checkpoint, options.mode());
  return std::move(report);
}

ShardedOpen detail::open_for_load(const std::string& path, const StateDictLoadOptions& options) {
  return ShardedOpen(path, LoadOptions().backend(default_backend(options)));
}

LoadReport load_state_dict(torch::nn::Module& module, const ShardedOpen& checkpoint,
                           const StateDictLoadOptions& options) {
  Entries targets = module_state(module);
  return load_state(targets, checkpoint, options);
}

LoadReport load_state_dict(torch::nn::Module& module, const std::string& path,
                           const StateDictLoadOptions& options) {
  return load_state_dict(module, open_for_load(path, options), options);
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

std::pair<NamedTensors, Metadata> detail::state_to_save(Entries state, const std::optional<Metadata>& metadata) {
  NamedTensors tensors;
  for (auto& [name, tensor] : state) tensors.add(std::move(name), std::move(tensor));
  Deduplicated saved = deduplicate_shared(tensors);
  Metadata meta = metadata.value_or(Metadata{});
  meta.emplace("format", "pt");
  for (const auto& [removed, kept] : saved.aliases) meta.emplace(removed, kept);  // user keys win
  return {std::move(saved.tensors), std::move(meta)};
}

void detail::save_state(Entries state, const std::string& path, const std::optional<Metadata>& metadata,
                        const StateDictSaveOptions& options) {
  auto [tensors, meta] = state_to_save(std::move(state), metadata);
  save_one_or_sharded(tensors, path, meta, options.max_shard_size(), options);
}

void save_state_dict(const torch::nn::Module& module, const std::string& path,
                     const std::optional<Metadata>& metadata, const StateDictSaveOptions& options) {
  save_state(module_state(module), path, metadata, options);
}

}  // namespace safetensors
