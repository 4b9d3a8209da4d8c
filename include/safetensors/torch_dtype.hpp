#pragma once
// Mapping between safetensors dtypes and torch dtypes, decided at compile time
// from LibTorch's version macros so the same code builds on 1.13 and 2.x.

#include <optional>
#include <string>

#include <c10/core/ScalarType.h>

#include "safetensors/dtype.hpp"

namespace safetensors {

/// The torch dtype of a safetensors dtype in the LibTorch in use, if it has one.
/// F4 maps to float4_e2m1fn_x2 (two values per element: torch's last dimension
/// is half the header's).
std::optional<c10::ScalarType> to_torch_dtype(Dtype dtype) noexcept;

/// The safetensors dtype of a torch dtype, if the format has one.
std::optional<Dtype> from_torch_dtype(c10::ScalarType type) noexcept;

/// The first LibTorch version with a torch dtype for `dtype` ("2.1"), "" when
/// 1.13 has it, or "none" when no LibTorch has one (the F6 types).
std::string torch_version_with(Dtype dtype);

/// The LibTorch version this library was built against, e.g. "1.13.0".
std::string torch_version();

}  // namespace safetensors
