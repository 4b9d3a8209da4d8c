#pragma once
// The memory a tensor's elements span, to tell which tensors share memory.
// Internal.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

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

}  // namespace safetensors::detail
