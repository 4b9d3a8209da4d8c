#pragma once
// Overflow-checked size arithmetic shared by the reader and the writer.

#include <cstdint>
#include <vector>

namespace safetensors {

/// bits = product(shape) * bits_per_element; false on 64-bit overflow.
inline bool checked_numel_bits(const std::vector<std::uint64_t>& shape, unsigned bits_per_element,
                               std::uint64_t& bits) {
  std::uint64_t n = 1;
  for (std::uint64_t d : shape)
    if (__builtin_mul_overflow(n, d, &n)) return false;
  return !__builtin_mul_overflow(n, static_cast<std::uint64_t>(bits_per_element), &bits);
}

}  // namespace safetensors
