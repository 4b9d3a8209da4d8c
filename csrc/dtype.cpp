#include "safetensors/dtype.hpp"

namespace safetensors {
namespace {

struct DtypeRow {
  Dtype dtype;
  std::string_view name;
  unsigned bits;
};

// The one dtype table; indexed by the enum's value.
constexpr DtypeRow kTable[kDtypeCount] = {
    {Dtype::BOOL, "BOOL", 8},         {Dtype::F4, "F4", 4},
    {Dtype::F6_E2M3, "F6_E2M3", 6},   {Dtype::F6_E3M2, "F6_E3M2", 6},
    {Dtype::U8, "U8", 8},             {Dtype::I8, "I8", 8},
    {Dtype::F8_E5M2, "F8_E5M2", 8},   {Dtype::F8_E4M3, "F8_E4M3", 8},
    {Dtype::F8_E8M0, "F8_E8M0", 8},   {Dtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {Dtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8}, {Dtype::I16, "I16", 16},
    {Dtype::U16, "U16", 16},          {Dtype::F16, "F16", 16},
    {Dtype::BF16, "BF16", 16},        {Dtype::I32, "I32", 32},
    {Dtype::U32, "U32", 32},          {Dtype::F32, "F32", 32},
    {Dtype::C64, "C64", 64},          {Dtype::F64, "F64", 64},
    {Dtype::I64, "I64", 64},          {Dtype::U64, "U64", 64},
};

constexpr bool table_matches_enum() {
  for (std::size_t i = 0; i < kDtypeCount; ++i)
    if (static_cast<std::size_t>(kTable[i].dtype) != i) return false;
  return true;
}
static_assert(table_matches_enum(), "kTable must follow the Dtype enum");

}  // namespace

const std::array<Dtype, kDtypeCount> kAllDtypes = [] {
  std::array<Dtype, kDtypeCount> all{};
  for (std::size_t i = 0; i < kDtypeCount; ++i) all[i] = kTable[i].dtype;
  return all;
}();

std::string_view dtype_name(Dtype dtype) noexcept {
  return kTable[static_cast<std::size_t>(dtype)].name;
}

unsigned dtype_bits(Dtype dtype) noexcept {
  return kTable[static_cast<std::size_t>(dtype)].bits;
}

std::optional<Dtype> parse_dtype(std::string_view name) noexcept {
  for (const DtypeRow& row : kTable)
    if (row.name == name) return row.dtype;
  return std::nullopt;
}

}  // namespace safetensors
