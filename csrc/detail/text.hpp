#pragma once
// Text of the format layer: UTF-8 validation, JSON string literals as the
// reference writer escapes them, shapes as messages show them. Torch-free.
// Internal.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace safetensors::detail {

/// True when `s` is well-formed UTF-8 (no overlong forms, surrogates or code
/// points above U+10FFFF).
bool is_valid_utf8(std::string_view s) noexcept;

/// Appends `s` as a JSON string literal, escaped the way the reference writer
/// does (only `"`, `\` and control characters).
void append_json_string(std::string& out, std::string_view s);

/// A shape as messages and listings show it: "[2, 3]", "[]" for a scalar.
std::string shape_text(const std::vector<std::int64_t>& shape);
std::string shape_text(const std::vector<std::uint64_t>& shape);

}  // namespace safetensors::detail
