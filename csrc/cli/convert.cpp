// `convert IN OUT [--metadata KEY=VALUE]... [--key K] [--shard-size BYTES]`:
// reads a safetensors file, a Python torch.save file or a C++ torch::save
// archive (told apart by content) and writes its tensors as safetensors,
// keeping every tensor's dtype.

#include <cstdio>
#include <iostream>
#include <optional>

#include "commands.hpp"
#include "safetensors/load.hpp"
#include "safetensors/migrate.hpp"
#include "safetensors/save.hpp"
#include "safetensors/torch_dtype.hpp"

namespace safetensors::cli {
namespace {

// IN's metadata with the overrides applied; none at all when IN has none and
// nothing is given, so that OUT has no __metadata__ either.
std::optional<Metadata> merged_metadata(const Header& header, const Metadata& overrides) {
  if (!header.has_metadata() && overrides.empty()) return std::nullopt;
  Metadata merged = header.metadata();
  for (const auto& [key, value] : overrides) merged[key] = value;
  return merged;
}

// Every tensor of the file. One whose dtype the LibTorch in use lacks arrives
// as raw bytes and goes back as raw bytes with its file dtype, so that OUT does
// not degrade it to U8.
NamedTensors read_tensors(const SafeOpen& file) {
  NamedTensors tensors;
  for (const TensorInfo& info : file.header().tensors()) {
    at::Tensor t = file.get_tensor(info.name);
    if (to_torch_dtype(info.dtype)) {
      tensors.add(info.name, std::move(t));
    } else {
      tensors.add_raw(info.name, info.dtype, info.shape, std::move(t));
    }
  }
  return tensors;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names) out += (out.empty() ? "" : ", ") + printable(name);
  return out;
}

// What a migration did beyond writing tensors: nothing is dropped silently.
void print_summary(const std::string& in, const std::string& out, const ConvertSummary& s) {
  std::cout << "converted " << printable(in) << " (" << to_string(s.format) << ") -> " << printable(out)
            << ": " << s.tensors << " tensors, " << s.bytes << " bytes";
  if (s.files.size() > 1) std::cout << " in " << s.files.size() << " shards";
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%.2f", s.seconds);
  std::cout << ", " << seconds << " s\n";
  if (!s.aliases.empty()) {
    std::vector<std::string> pairs;
    for (const auto& [removed, kept] : s.aliases) pairs.push_back(removed + " -> " + kept);
    std::cout << "  shared tensors written once (recorded in the metadata): " << joined(pairs) << '\n';
  }
  if (!s.copied_views.empty())
    std::cout << "  overlapping views of one storage, written as separate copies: " << joined(s.copied_views)
              << '\n';
  if (!s.non_tensors.empty()) {
    std::vector<std::string> entries;
    for (const NonTensorEntry& e : s.non_tensors) entries.push_back(e.name + " (" + e.description + ")");
    std::cout << "  not tensors, not converted: " << joined(entries) << '\n';
  }
}

// A torch.save file or torch::save archive, or a safetensors file read with
// migration options.
int migrate(const std::string& in, const std::string& out, const Metadata& overrides, const ConvertArgs& args) {
  const ConvertSummary summary = convert_checkpoint(
      in, out, ConvertOptions().key(args.key).metadata(overrides).max_shard_size(args.shard_size));
  print_summary(in, out, summary);
  return kExitOk;
}

}  // namespace

int convert(const std::string& in, const std::string& out, const Metadata& overrides, const ConvertArgs& args) {
  try {
    if (!args.key.empty() || args.shard_size || detect_format(in) != CheckpointFormat::Safetensors)
      return migrate(in, out, overrides, args);
    // Pread: the tensors own their memory, so OUT may even replace IN.
    SafeOpen file(in, LoadOptions().backend(Backend::Pread).unsupported_as_bytes(true));
    NamedTensors tensors = read_tensors(file);
    save_file(tensors, out, merged_metadata(file.header(), overrides));
    std::cout << "converted " << printable(in) << " -> " << printable(out) << ": "
              << tensors.size() << " tensors, " << file.header().data_size() << " bytes\n";
    return kExitOk;
  } catch (const Error& e) {
    // A write failure names OUT; everything else is about IN.
    std::cerr << error_line(e.file().empty() ? in : e.file()) << '\n';
    return kExitInvalid;
  } catch (...) {
    std::cerr << error_line(in) << '\n';
    return kExitInvalid;
  }
}

}  // namespace safetensors::cli
