// torch's zip archives, of either kind: where their entries lie, and what
// tells a TorchScript archive (torch::save from C++, torch.jit.save from
// Python) from a torch.save file, whose containers are alike.

#include <algorithm>
#include <string_view>

#include "checkpoint/checkpoint_internal.hpp"
#include "checkpoint/zip.hpp"
#include "pickle/unpickler.hpp"
#include "safetensors/error.hpp"

namespace safetensors::detail {

std::string archive_prefix(const ZipArchive& zip) {
  std::string prefix;
  for (const ZipEntry& e : zip.entries()) {
    const std::size_t slash = e.name.find('/');
    if (slash == std::string::npos || e.name.compare(slash, std::string::npos, "/data.pkl") != 0) continue;
    if (!prefix.empty())
      throw Error(ErrorCode::InvalidCheckpoint, zip.source()->path(), "",
                  "the archive holds more than one data.pkl");
    prefix = e.name.substr(0, slash + 1);
  }
  if (prefix.empty())
    throw Error(ErrorCode::InvalidCheckpoint, zip.source()->path(), "",
                "a zip archive without data.pkl is not a torch checkpoint");
  return prefix;
}

// A TorchScript archive (torch::save from C++, torch.jit.save from Python)
// pickles a TorchScript object: its data.pkl begins with PROTO, an optional
// FRAME, then GLOBAL of a `__torch__` class. A torch.save pickle never does,
// whatever other entries (code/, constants.pkl) its zip holds.
bool is_torchscript(const ZipArchive& zip, const ZipEntry& data) {
  constexpr std::string_view kClass = "c__torch__";
  unsigned char head[2 + 9 + kClass.size() + 1] = {};
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(data.size, sizeof head));
  zip.source()->read(data.offset, head, n);
  const std::string_view bytes(reinterpret_cast<const char*>(head), n);
  std::size_t at = 2;
  if (n < at || head[0] != 0x80) return false;
  if (n > at && head[at] == 0x95) at += 9;
  if (at > n || bytes.substr(at, kClass.size()) != kClass) return false;
  const char next = at + kClass.size() < n ? bytes[at + kClass.size()] : '\0';
  return next == '.' || next == '\n';
}

void report_torchscript_constants(const ZipArchive& zip, const ZipEntry& constants, Checkpoint& out) {
  const pickle::Pickle c = pickle::unpickle(zip.read(constants), zip.source()->path());
  const auto count = std::count_if(c.arena.begin(), c.arena.end(),
                                   [](const pickle::Value& v) { return v.kind == pickle::Value::Kind::Tensor; });
  if (count > 0)
    out.non_tensors.push_back(
        {"CONSTANTS", std::to_string(count) + " tensor constants of the TorchScript code (constants.pkl)", std::nullopt});
}

}  // namespace safetensors::detail
