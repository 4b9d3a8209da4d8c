#pragma once
// Text of the format layer: UTF-8 validation, and JSON string literals as the
// reference writer escapes them. Torch-free. Internal.

#include <string>
#include <string_view>

namespace safetensors::detail {

/// True when `s` is well-formed UTF-8 (no overlong forms, surrogates or code
/// points above U+10FFFF).
bool is_valid_utf8(std::string_view s) noexcept;

/// Appends `s` as a JSON string literal, escaped the way the reference writer
/// does (only `"`, `\` and control characters).
void append_json_string(std::string& out, std::string_view s);

}  // namespace safetensors::detail
