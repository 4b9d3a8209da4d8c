#pragma once
// Owned CPU memory for eager loads. Internal.
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace safetensors::detail {

/// Tensors of at least this many bytes get huge-page memory.
constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

/// An uninitialised contiguous CPU tensor of `shape` and `dtype`. With
/// `huge_pages` and at least kHugePageBytes, on Linux, its
/// memory is an anonymous mapping of its own that starts on a 2 MiB boundary
/// and is advised to use transparent huge pages, so fresh memory is faulted
/// in and zeroed 2 MiB at a time instead of 4 KiB; its storage stays
/// resizable (through LibTorch's CPU allocator). Otherwise, or when the
/// mapping fails, at::empty.
at::Tensor empty_cpu(const std::vector<std::int64_t>& shape, c10::ScalarType dtype, bool huge_pages);

}  // namespace safetensors::detail
