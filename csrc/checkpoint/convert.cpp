// Converting a checkpoint of any format, a sharded set included, to a
// safetensors file or sharded set: its aliases and its non-tensor values become
// metadata, a safetensors input keeps its own, views that overlap become
// copies, and dtypes this LibTorch lacks are written as they were read.

#include <ATen/ATen.h>

#include <algorithm>
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
#include "safetensors/error.hpp"
#include "safetensors/migrate.hpp"
#include "safetensors/save.hpp"

namespace safetensors {

void detail::record_aliases(NamedTensors& tensors, std::map<std::string, std::string>& aliases,
                            Metadata& metadata) {
  for (auto it = aliases.begin(); it != aliases.end();) {
    if (!metadata.count(it->first)) {
      metadata.emplace(it->first, it->second);
      ++it;
      continue;
    }
    const auto& items = tensors.items();
    const auto kept = std::find_if(items.begin(), items.end(),
                                   [&](const NamedTensors::Item& item) { return item.name == it->second; });
    if (kept != items.end()) {
      const at::Tensor copy = kept->tensor.clone(at::MemoryFormat::Contiguous);
      if (kept->raw_dtype) {
        const Dtype dtype = *kept->raw_dtype;
        std::vector<std::uint64_t> shape = kept->raw_shape;
        tensors.add_raw(it->first, dtype, std::move(shape), copy);  // may move `items`
      } else {
        tensors.add(it->first, copy);
      }
    }
    it = aliases.erase(it);
  }
}

namespace {

// One file written over the index or a shard of the set being read would break
// that set; a lone file may be replaced, as it is read from its mapping.
void refuse_to_overwrite(const std::string& in, const std::string& out,
                         const std::vector<std::string>& set_files) {
  for (const std::string& file : set_files) {
    std::error_code ec;
    if (std::filesystem::equivalent(out, file, ec))
      throw Error(ErrorCode::InvalidArgument, out, "",
                  "is a file of the sharded set being converted (" + detail::escape_control(in) +
                      "): writing it would break that set");
  }
}

}  // namespace

ConvertReport convert_checkpoint(const std::string& in, const std::string& out, const ConvertOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  // Holds the raw dtypes; the tensors hold the input's mappings until written.
  detail::SafetensorsInput input;
  Checkpoint ckpt = detail::read_checkpoint(in,
                                            CheckpointOptions()
                                                .key(options.key())
                                                .backend(options.backend())
                                                .non_tensors_as_json(options.keep_non_tensors()),
                                            &input);
  if (!options.max_shard_size()) refuse_to_overwrite(in, out, input.set_files);

  ConvertReport summary;
  const std::set<std::string> copies(ckpt.copied_views.begin(), ckpt.copied_views.end());
  NamedTensors tensors;
  for (const auto& item : ckpt.tensors) {
    if (ckpt.aliases.count(item.key())) continue;
    at::Tensor t = copies.count(item.key()) ? item.value().clone(at::MemoryFormat::Contiguous) : item.value();
    if (auto r = input.raw.find(item.key()); r != input.raw.end()) {
      tensors.add_raw(item.key(), r->second.dtype, r->second.shape, t);
    } else {
      tensors.add(item.key(), t);
    }
  }
  // The values to keep are selected and renamed with the tensors: one
  // selection, one namespace for collisions.
  const bool keep = ckpt.format != CheckpointFormat::TorchArchive;  // module attributes are reported
  std::vector<std::string> value_names;
  std::vector<std::optional<std::string>> renamed_value(ckpt.non_tensors.size());
  for (NonTensorEntry& entry : ckpt.non_tensors) {
    if (!keep) entry.json.reset();
    if (entry.json && !entry.name.empty()) value_names.push_back(entry.name);
  }
  const TensorTransform& transform = options.transform();
  if (!transform.identity())
    tensors = transform_tensors(tensors, transform, &ckpt.aliases, &summary.transform, &value_names);
  for (std::size_t i = 0, v = 0; i < ckpt.non_tensors.size(); ++i)
    if (ckpt.non_tensors[i].json && !ckpt.non_tensors[i].name.empty()) renamed_value[i] = value_names[v++];

  // A safetensors input's metadata, the caller's over it; a pickle's output
  // says it holds torch tensors.
  const bool safetensors_input =
      ckpt.format == CheckpointFormat::Safetensors || ckpt.format == CheckpointFormat::SafetensorsSet;
  std::optional<Metadata> metadata = std::move(ckpt.metadata);
  if (!options.metadata().empty() || !ckpt.aliases.empty() || !safetensors_input) {
    if (!metadata) metadata.emplace();
    for (const auto& [key, value] : options.metadata()) (*metadata)[key] = value;
  }
  if (!safetensors_input) metadata->emplace("format", "pt");
  for (MetadataConflict& conflict : ckpt.metadata_conflicts)
    if (!options.metadata().count(conflict.key)) summary.metadata_conflicts.push_back(std::move(conflict));
  if (metadata) detail::record_aliases(tensors, ckpt.aliases, *metadata);

  // Then the non-tensor values with a JSON form, selected and renamed as
  // tensors are, under names no key above has; a value that is a tensor's name
  // would read back as an alias of it.
  std::set<std::string> written;
  for (const NamedTensors::Item& item : tensors.items()) written.insert(item.name);
  for (std::size_t i = 0; i < ckpt.non_tensors.size(); ++i) {
    NonTensorEntry& entry = ckpt.non_tensors[i];
    if (renamed_value[i] && renamed_value[i]->empty()) continue;  // left out (TransformReport::excluded)
    if (!renamed_value[i] && !entry.name.empty() && !transform.selects(entry.name)) {
      summary.transform.excluded.push_back(std::move(entry.name));
      continue;
    }
    if (entry.json) {
      std::string name = renamed_value[i] ? std::move(*renamed_value[i]) : entry.name;
      const char* refusal = name.empty()                        ? "the checkpoint itself is no metadata entry"
                            : !detail::is_valid_utf8(name)       ? "its name is not valid UTF-8"
                            : written.count(*entry.json)         ? "its text is a tensor's name (it would read as an alias)"
                                                                 : nullptr;
      if (!refusal && metadata->try_emplace(name, std::move(*entry.json)).second) {
        summary.metadata_keys.push_back(std::move(name));
        continue;
      }
      entry.description.append(", not kept: ").append(refusal ? refusal : "its name is a metadata key already");
      entry.json.reset();
    }
    summary.non_tensors.push_back(std::move(entry));
  }
  for (const NamedTensors::Item& item : tensors.items()) summary.bytes += item.tensor.nbytes();
  if (options.max_shard_size()) {
    std::error_code ec;
    std::filesystem::create_directories(out, ec);  // save_sharded reports a folder it cannot use
  }
  summary.files =
      detail::save_one_or_sharded(tensors, out, std::move(metadata), options.max_shard_size(), options);

  summary.format = ckpt.format;
  summary.parameters = ckpt.parameters;
  summary.buffers = ckpt.buffers;
  summary.module_bookkeeping = std::move(ckpt.module_bookkeeping);
  summary.tensors = tensors.size();
  summary.aliases = std::move(ckpt.aliases);
  summary.copied_views = std::move(ckpt.copied_views);
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace safetensors
