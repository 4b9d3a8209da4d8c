// Reading a checkpoint of any format into named tensors: the reader of its
// format, then the views that share storage (aliases to record, overlapping
// views to copy), whatever the format.

#include <ATen/ATen.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <utility>

#include "checkpoint/checkpoint_internal.hpp"
#include "detail/extent.hpp"
#include "safetensors/error.hpp"
#include "safetensors/load.hpp"
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

// Safetensors inputs: dtypes this LibTorch lacks arrive as raw bytes; their
// real dtypes are returned so that a conversion keeps them. Names that a
// state-dict saver removed as tied weights (metadata `removed -> kept`) come
// back as aliases of the kept tensor, not as tensors of their own: a header of
// millions of short entries would otherwise make a tensor and its places for each.
std::map<std::string, TensorInfo> read_safetensors(std::shared_ptr<Source> source, Checkpoint& out) {
  SafeOpen file(std::move(source), LoadOptions().unsupported_as_bytes(true));
  std::map<std::string, TensorInfo> raw;
  for (const TensorInfo& info : file.header().tensors()) {
    out.tensors.insert(info.name, file.get_tensor(info.name));
    if (!to_torch_dtype(info.dtype)) raw.emplace(info.name, info);
  }
  for (const auto& [removed, kept] : file.metadata())
    if (removed != "format" && !out.tensors.contains(removed) && file.contains(kept))
      out.aliases.emplace_hint(out.aliases.end(), removed, kept);
  return raw;
}

}  // namespace

Checkpoint read_checkpoint(const std::string& path, const CheckpointOptions& options,
                           std::map<std::string, TensorInfo>* raw) {
  const std::shared_ptr<Source> source = open_file(path, options.backend());
  Checkpoint ckpt;
  Detected detected = detect(source);
  ckpt.format = detected.format;
  switch (ckpt.format) {
    case CheckpointFormat::TorchZip:
    case CheckpointFormat::TorchArchive: read_torch_zip(source, ckpt.format, options, ckpt); break;
    case CheckpointFormat::Safetensors: {
      if (!options.key().empty())
        throw Error(ErrorCode::InvalidArgument, path, "", "a safetensors file has no nested keys to select");
      auto found = read_safetensors(source, ckpt);
      if (raw) *raw = std::move(found);
      break;
    }
    case CheckpointFormat::TorchLegacy: read_torch_legacy(source, options, ckpt); break;
    case CheckpointFormat::Unknown:
      // A file whose first 8 bytes are a plausible header length is told why
      // the safetensors parser refuses it.
      if (!refused_by_length(*detected.safetensors_refusal)) throw *detected.safetensors_refusal;
      throw Error(ErrorCode::InvalidCheckpoint, path, "",
                  "not a safetensors file, torch.save file or TorchScript archive");
  }
  find_shared(ckpt);
  return ckpt;
}

}  // namespace detail

Checkpoint read_checkpoint(const std::string& path, const CheckpointOptions& options) {
  return detail::read_checkpoint(path, options, nullptr);
}

}  // namespace safetensors
