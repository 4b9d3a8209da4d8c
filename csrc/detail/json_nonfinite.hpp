#pragma once
// JSON as Python's json module reads and writes it: standard JSON plus the
// bare tokens NaN, Infinity and -Infinity, which json.dumps writes for
// non-finite floats (allow_nan, its default) and json.loads reads. nlohmann
// refuses them on input and writes null for them on output. Torch-free.
// Internal.

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace safetensors::detail {

/// The deepest nesting of JSON text read from a file that is built into a
/// document: nlohmann copies and writes documents recursively, so a deeper
/// one could overflow the stack. Python's json.loads gives up near the same
/// depth (its recursion limit, 1000).
inline constexpr std::size_t kMaxJsonDepth = 512;

/// The deepest nesting of arrays and objects in `text`, brackets inside
/// strings not counted; one pass, no allocation. Meant for a check before
/// parsing: for text that is not JSON the count means nothing.
std::size_t json_depth(std::string_view text);

/// Parses `text` as Python's json.loads does: NaN, Infinity and -Infinity in
/// the place of a value (after `[`, `,`, `:` or at the start, and followed by
/// whitespace, `,`, `]`, `}` or the end) become those doubles; the same
/// letters inside a string stay text, and anywhere else they are the syntax
/// error they are to Python. Everything else is nlohmann's parser's, which
/// throws its parse_error at the same byte positions as for `text`. One pass
/// over `text`; a text holding such tokens is copied once (the same size),
/// one without them is parsed as it is.
nlohmann::ordered_json parse_python_json(std::string_view text);

/// `value` as nlohmann's compact dump() writes it, except that NaN is written
/// `NaN` and infinities `Infinity` and `-Infinity` (as json.dumps does)
/// instead of null. Throws nlohmann's type_error for a string that is not
/// UTF-8, as dump() does; recurses as deep as `value` is, as dump() does.
std::string dump_python_json(const nlohmann::ordered_json& value);

}  // namespace safetensors::detail
