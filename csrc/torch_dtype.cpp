#include "safetensors/torch_dtype.hpp"

#include <torch/version.h>

// Dtypes newer than LibTorch 1.13 exist from these versions on.
#define SAFETENSORS_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||              \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace safetensors {

std::optional<c10::ScalarType> to_torch_dtype(Dtype dtype) noexcept {
  using c10::ScalarType;
  switch (dtype) {
    case Dtype::BOOL: return ScalarType::Bool;
    case Dtype::U8: return ScalarType::Byte;
    case Dtype::I8: return ScalarType::Char;
    case Dtype::I16: return ScalarType::Short;
    case Dtype::I32: return ScalarType::Int;
    case Dtype::I64: return ScalarType::Long;
    case Dtype::F16: return ScalarType::Half;
    case Dtype::BF16: return ScalarType::BFloat16;
    case Dtype::F32: return ScalarType::Float;
    case Dtype::F64: return ScalarType::Double;
    case Dtype::C64: return ScalarType::ComplexFloat;
#if SAFETENSORS_TORCH_AT_LEAST(2, 1)
    case Dtype::F8_E5M2: return ScalarType::Float8_e5m2;
    case Dtype::F8_E4M3: return ScalarType::Float8_e4m3fn;
#endif
#if SAFETENSORS_TORCH_AT_LEAST(2, 2)
    case Dtype::F8_E4M3FNUZ: return ScalarType::Float8_e4m3fnuz;
    case Dtype::F8_E5M2FNUZ: return ScalarType::Float8_e5m2fnuz;
#endif
#if SAFETENSORS_TORCH_AT_LEAST(2, 3)
    case Dtype::U16: return ScalarType::UInt16;
    case Dtype::U32: return ScalarType::UInt32;
    case Dtype::U64: return ScalarType::UInt64;
#endif
#if SAFETENSORS_TORCH_AT_LEAST(2, 7)
    case Dtype::F8_E8M0: return ScalarType::Float8_e8m0fnu;
#endif
#if SAFETENSORS_TORCH_AT_LEAST(2, 8)
    case Dtype::F4: return ScalarType::Float4_e2m1fn_x2;
#endif
    default: return std::nullopt;
  }
}

std::optional<Dtype> from_torch_dtype(c10::ScalarType type) noexcept {
  for (Dtype d : kAllDtypes) {
    auto t = to_torch_dtype(d);
    if (t && *t == type) return d;
  }
  return std::nullopt;
}

std::string torch_version_with(Dtype dtype) {
  switch (dtype) {
    case Dtype::F8_E5M2:
    case Dtype::F8_E4M3: return "2.1";
    case Dtype::F8_E4M3FNUZ:
    case Dtype::F8_E5M2FNUZ: return "2.2";
    case Dtype::U16:
    case Dtype::U32:
    case Dtype::U64: return "2.3";
    case Dtype::F8_E8M0: return "2.7";
    case Dtype::F4: return "2.8";
    case Dtype::F6_E2M3:
    case Dtype::F6_E3M2: return "none";
    default: return "";
  }
}

std::string torch_version() { return TORCH_VERSION; }

}  // namespace safetensors
