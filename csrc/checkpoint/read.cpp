// Reading a checkpoint of any format, a sharded set included, into named
// tensors: the reader of its format, then the views that share storage
// (aliases to record, overlapping views to copy), whatever the format.

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/checkpoint_internal.hpp"
#include "detail/extent.hpp"
#include "safetensors/error.hpp"
#include "safetensors/load.hpp"
#include "safetensors/sharded.hpp"
#include "safetensors/source.hpp"
#include "safetensors/torch_dtype.hpp"

namespace safetensors {
namespace detail {
namespace {

// Identical views of one storage are aliases: one is kept. Different views
// whose bytes overlap cannot share bytes in a safetensors file: each is saved
// as its own copy. Disjoint views (chunks of one storage) need nothing.
void find_shared(Checkpoint& ckpt) {
  // Keys and extents refer to the tensors by position: a checkpoint may hold
  // many views of high rank, whose sizes and names are not copied again.
  const auto& items = ckpt.tensors.items();
  auto less = [&](std::size_t i, std::size_t j) {
    const at::Tensor &a = items[i].value(), &b = items[j].value();
    const void *sa = a.storage().unsafeGetStorageImpl(), *sb = b.storage().unsafeGetStorageImpl();
    if (sa != sb) return std::less<const void*>()(sa, sb);
    if (a.storage_offset() != b.storage_offset()) return a.storage_offset() < b.storage_offset();
    if (a.scalar_type() != b.scalar_type()) return a.scalar_type() < b.scalar_type();
    if (a.sizes() != b.sizes())
      return std::lexicographical_compare(a.sizes().begin(), a.sizes().end(), b.sizes().begin(), b.sizes().end());
    return std::lexicographical_compare(a.strides().begin(), a.strides().end(), b.strides().begin(),
                                        b.strides().end());
  };
  std::set<std::size_t, decltype(less)> first_of_view(less);
  std::vector<StorageExtent> extents;
  extents.reserve(items.size());  // one per tensor, as flattening charged
  for (std::size_t i = 0; i < items.size(); ++i) {
    const at::Tensor& t = items[i].value();
    if (!t.has_storage() || t.numel() == 0) continue;
    auto [it, inserted] = first_of_view.insert(i);
    if (!inserted) {
      ckpt.aliases[items[i].key()] = items[*it].key();
      continue;
    }
    extents.push_back(storage_extent(t, i));
  }
  std::vector<bool> overlapping(items.size());
  for_each_overlapping(extents, [&](const StorageExtent* first, const StorageExtent* last) {
    for (; first != last; ++first) overlapping[first->index] = true;
  });
  for (std::size_t i = 0; i < items.size(); ++i)
    if (overlapping[i]) ckpt.copied_views.push_back(items[i].key());
}

// The metadata of one file of a safetensors input, named as a conflict names it.
struct MetadataSource {
  std::string file;
  const Metadata* metadata;
};

// Merges the metadata of a safetensors input's files into `out`, the first
// file's value of a key kept and every disagreement reported. Names that a
// state-dict saver removed as tied weights (`removed -> kept`, kept a tensor,
// removed none) come back as aliases of the kept tensor, not as tensors of
// their own: a header of millions of short entries would otherwise make a
// tensor and its places for each. The entries move from the merge into
// `metadata` or `aliases`, so that a header of millions of them is held twice
// at most, by its parser and here.
void merge_metadata(const std::vector<MetadataSource>& sources, bool any, Checkpoint& out) {
  Metadata merged;
  std::set<std::string> conflicting;
  for (const MetadataSource& source : sources)
    for (const auto& [key, value] : *source.metadata) {
      if (key == kShardSetKey) continue;
      const auto [it, fresh] = merged.emplace(key, value);
      if (!fresh && it->second != value) conflicting.insert(key);
    }
  for (const std::string& key : conflicting) {
    MetadataConflict conflict{key, {}};
    for (const MetadataSource& source : sources) {
      const auto found = source.metadata->find(key);
      if (found == source.metadata->end()) continue;
      auto same = std::find_if(conflict.values.begin(), conflict.values.end(),
                               [&](const MetadataConflict::Value& v) { return v.value == found->second; });
      if (same == conflict.values.end()) {
        conflict.values.push_back({found->second, {}});
        same = std::prev(conflict.values.end());
      }
      same->files.push_back(source.file);
    }
    out.metadata_conflicts.push_back(std::move(conflict));
  }
  if (any) out.metadata.emplace();
  while (!merged.empty()) {
    auto node = merged.extract(merged.begin());
    if (node.key() != "format" && !out.tensors.contains(node.key()) && out.tensors.contains(node.mapped())) {
      out.aliases.insert(out.aliases.end(), std::move(node));
    } else {
      out.metadata->insert(out.metadata->end(), std::move(node));
    }
  }
}

// The tensors of a safetensors file, as views of its mapping with the Mmap
// backend: dtypes this LibTorch lacks arrive as raw bytes; their real dtypes
// go to `raw`, so that a conversion keeps them.
void add_tensors(const SafeOpen& file, Checkpoint& out, std::map<std::string, TensorInfo>& raw) {
  for (const TensorInfo& info : file.header().tensors()) {
    out.tensors.insert(info.name, file.get_tensor(info.name));
    if (!to_torch_dtype(info.dtype)) raw.emplace(info.name, info);
  }
}

void read_safetensors(std::shared_ptr<Source> source, Checkpoint& out, SafetensorsInput& input) {
  const SafeOpen file(std::move(source), LoadOptions().unsupported_as_bytes(true));
  add_tensors(file, out, input.raw);
  merge_metadata({{file.path(), &file.metadata()}}, file.header().has_metadata(), out);
}

// A set's shards, shard by shard, then its index's metadata but total_size
// (which describes the set as it was written, not what is made of it).
void read_safetensors_set(const std::string& path, const CheckpointOptions& options, Checkpoint& out,
                          SafetensorsInput& input) {
  if (!options.key().empty())
    throw Error(ErrorCode::InvalidArgument, path, "", "a sharded set has no nested keys to select");
  const ShardedOpen set(path, LoadOptions().unsupported_as_bytes(true).backend(options.backend()));
  std::vector<MetadataSource> sources;
  bool any = false;
  for (const SafeOpen& shard : set.shards()) {
    add_tensors(shard, out, input.raw);
    sources.push_back({std::filesystem::path(shard.path()).filename().string(), &shard.metadata()});
    any = any || shard.header().has_metadata();
  }
  if (const ShardIndex* index = set.index()) {
    sources.push_back({std::filesystem::path(set.path()).filename().string(), &index->metadata});
    any = any || !index->metadata.empty();
    input.set_files.push_back(set.path());
    for (const SafeOpen& shard : set.shards()) input.set_files.push_back(shard.path());
  }
  merge_metadata(sources, any, out);
}

// A file of any format; an index read as its set.
void read_file(const std::string& path, const CheckpointOptions& options, Checkpoint& ckpt,
               SafetensorsInput& safetensors) {
  const std::shared_ptr<Source> source = open_file(path, options.backend());
  Detected detected = detect(source);
  ckpt.format = detected.format;
  if (ckpt.format == CheckpointFormat::Unknown && names_an_index(path))
    ckpt.format = CheckpointFormat::SafetensorsSet;
  switch (ckpt.format) {
    case CheckpointFormat::TorchZip:
    case CheckpointFormat::TorchArchive: read_torch_zip(source, ckpt.format, options, ckpt); break;
    case CheckpointFormat::Safetensors: {
      if (!options.key().empty())
        throw Error(ErrorCode::InvalidArgument, path, "", "a safetensors file has no nested keys to select");
      read_safetensors(source, ckpt, safetensors);
      break;
    }
    case CheckpointFormat::SafetensorsSet: read_safetensors_set(path, options, ckpt, safetensors); break;
    case CheckpointFormat::TorchLegacy: read_torch_legacy(source, options, ckpt); break;
    case CheckpointFormat::Unknown:
      // A file whose first 8 bytes are a plausible header length is told why
      // the safetensors parser refuses it.
      if (!refused_by_length(*detected.safetensors_refusal)) throw *detected.safetensors_refusal;
      throw Error(ErrorCode::InvalidCheckpoint, path, "",
                  "not a safetensors file, torch.save file or TorchScript archive");
  }
}

}  // namespace

Checkpoint read_checkpoint(const std::string& path, const CheckpointOptions& options, SafetensorsInput* input) {
  SafetensorsInput unused;
  SafetensorsInput& safetensors = input ? *input : unused;
  Checkpoint ckpt;
  if (is_folder(path)) {
    ckpt.format = CheckpointFormat::SafetensorsSet;
    read_safetensors_set(path, options, ckpt, safetensors);
  } else {
    read_file(path, options, ckpt, safetensors);
  }
  find_shared(ckpt);
  return ckpt;
}

}  // namespace detail

Checkpoint read_checkpoint(const std::string& path, const CheckpointOptions& options) {
  return detail::read_checkpoint(path, options, nullptr);
}

}  // namespace safetensors
