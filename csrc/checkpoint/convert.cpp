// Converting a checkpoint of any format to a safetensors file or sharded set:
// its aliases and its non-tensor values become metadata, views that overlap
// become copies, and dtypes this LibTorch lacks are written as they were read.

#include <ATen/ATen.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <utility>

#include "checkpoint/checkpoint_internal.hpp"
#include "detail/text.hpp"
#include "save_internal.hpp"
#include "safetensors/migrate.hpp"
#include "safetensors/save.hpp"

namespace safetensors {

ConvertReport convert_checkpoint(const std::string& in, const std::string& out, const ConvertOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  std::map<std::string, TensorInfo> raw;
  Checkpoint ckpt = detail::read_checkpoint(in,
                                            CheckpointOptions()
                                                .key(options.key())
                                                .backend(options.backend())
                                                .non_tensors_as_json(options.keep_non_tensors()),
                                            &raw);

  // An alias is recorded as a metadata key of its name: one whose name is a
  // key already (the caller's or "format") is written as a copy instead.
  Metadata metadata = options.metadata();
  metadata.emplace("format", "pt");
  std::set<std::string> copies(ckpt.copied_views.begin(), ckpt.copied_views.end());
  for (auto it = ckpt.aliases.begin(); it != ckpt.aliases.end();) {
    if (!metadata.count(it->first)) {
      ++it;
      continue;
    }
    copies.insert(it->first);
    // A safetensors input's aliases are names only: give this one its tensor.
    if (!ckpt.tensors.contains(it->first)) {
      const at::Tensor kept = ckpt.tensors[it->second];
      ckpt.tensors.insert(it->first, kept);
      if (const auto r = raw.find(it->second); r != raw.end()) raw.emplace(it->first, r->second);
    }
    it = ckpt.aliases.erase(it);
  }
  for (const auto& [removed, kept] : ckpt.aliases) metadata.emplace(removed, kept);

  // Then the non-tensor values with a JSON form, under names no key above has.
  ConvertReport summary;
  for (NonTensorEntry& entry : ckpt.non_tensors) {
    if (entry.json) {
      const char* refusal = entry.name.empty()                  ? "the checkpoint itself is no metadata entry"
                            : !detail::is_valid_utf8(entry.name) ? "its name is not valid UTF-8"
                                                                 : nullptr;
      if (!refusal && metadata.try_emplace(entry.name, std::move(*entry.json)).second) {
        summary.metadata_keys.push_back(entry.name);
        continue;
      }
      entry.description.append(", not kept: ").append(refusal ? refusal : "its name is a metadata key already");
      entry.json.reset();
    }
    summary.non_tensors.push_back(std::move(entry));
  }
  NamedTensors tensors;
  for (const auto& item : ckpt.tensors) {
    if (ckpt.aliases.count(item.key())) continue;
    at::Tensor t = copies.count(item.key()) ? item.value().clone(at::MemoryFormat::Contiguous) : item.value();
    if (auto r = raw.find(item.key()); r != raw.end()) {
      tensors.add_raw(item.key(), r->second.dtype, r->second.shape, t);
    } else {
      tensors.add(item.key(), t);
    }
    summary.bytes += t.nbytes();
  }
  if (options.max_shard_size()) {
    std::error_code ec;
    std::filesystem::create_directories(out, ec);  // save_sharded reports a folder it cannot use
  }
  summary.files = detail::save_one_or_sharded(tensors, out, std::optional<Metadata>(std::move(metadata)),
                                              options.max_shard_size(), options);

  summary.format = ckpt.format;
  summary.tensors = tensors.size();
  summary.aliases = std::move(ckpt.aliases);
  summary.copied_views = std::move(ckpt.copied_views);
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace safetensors
