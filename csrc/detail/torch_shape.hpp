#pragma once
// The sizes a tensor of the file has in torch. Internal.

#include <cstdint>
#include <string>
#include <vector>

#include "safetensors/header.hpp"

namespace safetensors::detail {

/// The file's dimensions as torch sizes (int64). A dimension above int64's
/// range (which a header may declare beside a zero one) is LimitExceeded,
/// naming `file` and the tensor.
std::vector<std::int64_t> torch_dims(const TensorInfo& info, const std::string& file);

/// The shape a tensor of the file has in torch: torch_dims, with the last
/// dimension of a packed sub-byte dtype (F4 as float4_e2m1fn_x2) divided by the
/// values each element holds.
std::vector<std::int64_t> torch_shape(const TensorInfo& info, const std::string& file);

}  // namespace safetensors::detail
