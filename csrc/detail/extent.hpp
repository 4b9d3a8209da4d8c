#pragma once
// The memory a tensor's elements span, to tell which tensors share memory.
// Internal.
//
// Two measures, for two questions. extent_of places a tensor in the address
// space of its device: tensors are filled in place there (a module's
// parameters, load destinations), so any two that share an address conflict,
// whatever storages they belong to. storage_extent places it within its
// storage: what is saved is a storage's bytes seen through views, and views
// share bytes only within one storage.
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace safetensors::detail {

/// Bytes [begin, end) on one device (`device` tells devices apart).
struct Extent {
  int device;
  std::uintptr_t begin, end;
};

/// The bytes from a strided tensor's first element to the end of its last:
/// nullopt when it has no memory to speak of (another layout, no storage or
/// data, no elements).
inline std::optional<Extent> extent_of(const at::Tensor& t) {
  if (!t.defined() || t.layout() != c10::kStrided || !t.has_storage() || t.numel() == 0) return std::nullopt;
  // The storage's address, never data_ptr(): in LibTorch 2.x that would
  // materialise a lazily cloned (copy-on-write) storage.
  const auto base = reinterpret_cast<std::uintptr_t>(static_cast<const void*>(t.storage().data()));
  if (base == 0) return std::nullopt;
  const auto begin = base + static_cast<std::uintptr_t>(t.storage_offset() * t.element_size());
  std::uintptr_t last = 0;  // the last element's offset, in elements (strides are never negative)
  for (std::int64_t d = 0; d < t.dim(); ++d) last += static_cast<std::uintptr_t>((t.size(d) - 1) * t.stride(d));
  const int device = static_cast<int>(t.device().type()) * 65536 + t.device().index() + 1;
  return Extent{device, begin, begin + (last + 1) * static_cast<std::uintptr_t>(t.element_size())};
}

/// Bytes [begin, end) of one storage (its StorageImpl), those of the tensor
/// that the caller numbers `index`.
struct StorageExtent {
  const void* storage;
  std::uint64_t begin, end;
  std::size_t index;
};

/// The bytes of its storage from a strided tensor's first element to the end
/// of its last. The tensor has a storage and elements.
inline StorageExtent storage_extent(const at::Tensor& t, std::size_t index) {
  std::uint64_t span = 1;  // the last element's offset plus one, in elements (strides are never negative)
  for (std::int64_t d = 0; d < t.dim(); ++d)
    span += static_cast<std::uint64_t>(t.size(d) - 1) * static_cast<std::uint64_t>(t.stride(d));
  const std::uint64_t size = t.element_size();
  const std::uint64_t begin = static_cast<std::uint64_t>(t.storage_offset()) * size;
  return {t.storage().unsafeGetStorageImpl(), begin, begin + span * size, index};
}

/// Sorts `extents` by storage, then by first byte, and calls
/// `group(first, last)` for each run [first, last) of two or more extents of
/// one storage in which each extent after the first begins before an earlier
/// one ends: the extents that overlap another, each with all it overlaps, in
/// that order. Extents that overlap none are in no run.
template <class Group>
void for_each_overlapping(std::vector<StorageExtent>& extents, Group&& group) {
  std::sort(extents.begin(), extents.end(), [](const StorageExtent& a, const StorageExtent& b) {
    return std::tie(a.storage, a.begin) < std::tie(b.storage, b.begin);
  });
  std::size_t first = 0;
  std::uint64_t group_end = 0;
  for (std::size_t i = 0; i <= extents.size(); ++i) {
    const bool joins = i > 0 && i < extents.size() && extents[i].storage == extents[i - 1].storage &&
                       extents[i].begin < group_end;
    if (!joins) {
      if (i - first >= 2) group(extents.data() + first, extents.data() + i);
      first = i;
      group_end = 0;
    }
    if (i < extents.size()) group_end = std::max(group_end, extents[i].end);
  }
}

}  // namespace safetensors::detail
