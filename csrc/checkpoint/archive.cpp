// torch's zip archives, of either kind: where their entries lie, and what
// tells a TorchScript archive (torch::save from C++, torch.jit.save from
// Python) from a torch.save file, whose containers are alike.

#include <algorithm>
#include <cctype>
#include <optional>
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

namespace {

// A line's list of quoted names, `["weight", "bias", ]` as TorchScript prints
// it (the trailing comma optional), from `at`; nullopt for anything else, and
// for a list whose names would cost more than `room` (kDeclarationCost each,
// plus its bytes), so that the set built never outgrows what the caller allows.
std::optional<std::set<std::string>> quoted_names(std::string_view line, std::size_t at, std::uint64_t room) {
  std::set<std::string> names;
  std::uint64_t cost = 0;
  auto skip = [&] {
    while (at < line.size() && line[at] == ' ') ++at;
  };
  if (at >= line.size() || line[at++] != '[') return std::nullopt;
  for (skip(); at < line.size() && line[at] != ']'; skip()) {
    if (line[at++] != '"') return std::nullopt;
    const std::size_t end = line.find('"', at);
    if (end == std::string_view::npos) return std::nullopt;
    const std::string_view name = line.substr(at, end - at);
    cost += kDeclarationCost + name.size();
    if (cost > room || name.find('\\') != std::string_view::npos || !names.emplace(name).second)
      return std::nullopt;
    at = end + 1;
    skip();
    if (at < line.size() && line[at] == ',') ++at;
    else if (at >= line.size() || line[at] != ']') return std::nullopt;
  }
  if (at >= line.size()) return std::nullopt;
  for (++at; at < line.size(); ++at)
    if (line[at] != ' ' && line[at] != '\r') return std::nullopt;
  return names;
}

// The module classes one code entry defines: `class NAME(Module):` at the
// start of a line, its `__parameters__` and `__buffers__` lines among those of
// its body. False when a module class lacks either, or declares one twice.
bool parse_declarations(std::string_view text, const std::string& qualifier, ModuleDeclarations& out,
                        std::uint64_t& room) {
  constexpr std::string_view kClass = "class ", kModule = "(Module):";
  constexpr std::string_view kParameters = "  __parameters__ = ", kBuffers = "  __buffers__ = ";
  bool ok = true, broken = false;
  std::optional<std::string> current;
  std::optional<std::set<std::string>> parameters, buffers;
  std::set<std::string> twice;  // a class defined twice is neither definition
  auto finish = [&] {
    if (!current) return;
    if (out.classes.count(*current)) twice.insert(*current);
    std::uint64_t cost = kDeclarationCost + current->size();
    for (const auto* list : {&parameters, &buffers})
      if (*list)
        for (const std::string& name : **list) cost += kDeclarationCost + name.size();
    if (broken || !parameters || !buffers || twice.count(*current) || cost > room) {
      ok = false;
      out.classes.erase(*current);
    } else {
      room -= cost;
      out.classes.emplace(*current, ModuleDeclaration{std::move(*parameters), std::move(*buffers)});
    }
    current.reset();
  };
  while (!text.empty()) {
    const std::size_t eol = std::min(text.find('\n'), text.size());
    const std::string_view line = text.substr(0, eol);
    text.remove_prefix(std::min(eol + 1, text.size()));
    if (line.empty() || line[0] != ' ') {  // the end of a class body
      finish();
      const std::size_t paren = line.find('(');
      if (line.substr(0, kClass.size()) != kClass || paren == std::string_view::npos ||
          line.substr(paren) != kModule)
        continue;  // not a module class
      const std::string_view name = line.substr(kClass.size(), paren - kClass.size());
      current = qualifier + "." + std::string(name);
      broken = name.empty() || !std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
      });
      parameters.reset();
      buffers.reset();
      continue;
    }
    if (!current) continue;
    const bool is_parameters = line.substr(0, kParameters.size()) == kParameters;
    if (!is_parameters && line.substr(0, kBuffers.size()) != kBuffers) continue;
    std::optional<std::set<std::string>>& list = is_parameters ? parameters : buffers;
    broken = broken || list.has_value();  // declared twice
    list = quoted_names(line, is_parameters ? kParameters.size() : kBuffers.size(), room);
    broken = broken || !list;
  }
  finish();
  return ok;
}

}  // namespace

ModuleDeclarations read_module_declarations(const ZipArchive& zip, const std::string& prefix) {
  const std::string code = prefix + "code/";
  constexpr std::string_view kPy = ".py";
  ModuleDeclarations out;
  out.complete = true;
  const std::uint64_t file_size = zip.source()->size();
  std::uint64_t room =
      std::min(kMaxCodeTotal, kCodeBytesFloor + std::min(file_size, kMaxCodeTotal) * kCodeBytesPerFileByte);
  for (const ZipEntry& e : zip.entries()) {
    if (e.name.compare(0, code.size(), code) != 0 || e.name.size() < code.size() + kPy.size() ||
        e.name.compare(e.name.size() - kPy.size(), kPy.size(), kPy) != 0)
      continue;
    // code/__torch__/a/b.py defines the classes of __torch__.a.b.
    std::string qualifier = e.name.substr(code.size(), e.name.size() - code.size() - kPy.size());
    std::replace(qualifier.begin(), qualifier.end(), '/', '.');
    // Charged before it is read, whether or not it inflates: what it declares
    // (the memory made for it) and what is read of it at first (the work done
    // before a lying stream stops), so that many small entries declaring much
    // cost what they would if they held it.
    const std::uint64_t cost = e.size + (e.stored ? 0 : std::min<std::uint64_t>(e.compressed_size, 64 << 10));
    if (e.size > kMaxCodeEntry || cost > room) {
      out.complete = false;
      continue;
    }
    room -= cost;
    const std::optional<std::string> text = e.stored ? std::optional<std::string>(zip.read(e)) : zip.inflate(e, e.size);
    if (!text) {
      out.complete = false;
      continue;
    }
    if (!parse_declarations(*text, qualifier, out, room)) out.complete = false;
  }
  return out;
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
