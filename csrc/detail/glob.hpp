#pragma once
// Name patterns, as plans and tensor selections match tensor names: `*` any
// run of characters (dots included), `?` one character, `[...]` a set.
// Torch-free. Internal.

#include <fnmatch.h>

#include <string>

namespace safetensors::detail {

/// True when `s` holds a pattern character (`*`, `?`, `[`): a rule that is
/// not a pattern matches its exact name only.
inline bool is_glob(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

/// True when `name` matches `pattern`. A name never matches past a NUL byte it
/// holds: such a name matches only patterns that stop there.
inline bool glob_matches(const std::string& pattern, const std::string& name) {
  return ::fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

}  // namespace safetensors::detail
