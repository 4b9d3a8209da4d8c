// Fuzz target: JSON as Python reads and writes it (csrc/detail/json_nonfinite.hpp),
// the reader of an optimizer's param groups. Any text either parses or throws
// nlohmann's exception; a text that parses is written back and must parse to
// a document written the same way again (NaN and the infinities included).

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "detail/json_nonfinite.hpp"

namespace sd = safetensors::detail;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (sd::json_depth(text) > sd::kMaxJsonDepth) return 0;  // refused before parsing, as its callers do
  nlohmann::ordered_json value;
  try {
    value = sd::parse_python_json(text);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  std::string written;
  try {
    written = sd::dump_python_json(value);
  } catch (const nlohmann::json::exception&) {
    return 0;  // a string that is not UTF-8, refused as dump() refuses it
  }
  if (sd::json_depth(written) > sd::json_depth(text)) {
    std::fprintf(stderr, "fuzz_json: written text nests deeper than the input\n");
    std::abort();
  }
  const std::string again = sd::dump_python_json(sd::parse_python_json(written));
  if (again != written) {
    std::fprintf(stderr, "fuzz_json: not a fixed point:\n%s\n%s\n", written.c_str(), again.c_str());
    std::abort();
  }
  return 0;
}
