#pragma once
// The dtypes of the safetensors format. Torch-free; the mapping to torch
// dtypes lives in torch_dtype.hpp.

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace safetensors {

/// Declared in the reference implementation's order: the writer sorts by it
/// (descending), so the order is part of the byte-exact output.
enum class Dtype : std::uint8_t {
  BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ,
  F8_E5M2FNUZ, I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64,
};

inline constexpr std::size_t kDtypeCount = 22;

/// Every dtype, in declaration order.
extern const std::array<Dtype, kDtypeCount> kAllDtypes;

/// The name used in the JSON header, e.g. "BF16".
std::string_view dtype_name(Dtype dtype) noexcept;

/// Bits per element: 4 for F4, 6 for the F6 types, 8..64 for the rest.
unsigned dtype_bits(Dtype dtype) noexcept;

/// The dtype with that header name (exact, case-sensitive), if any.
std::optional<Dtype> parse_dtype(std::string_view name) noexcept;

}  // namespace safetensors
