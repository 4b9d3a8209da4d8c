// `convert IN OUT [--metadata KEY=VALUE]...`: reads a file into tensors and
// writes it again with save_file, keeping every tensor's dtype.

#include <iostream>
#include <optional>

#include "commands.hpp"
#include "safetensors/load.hpp"
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

}  // namespace

int convert(const std::string& in, const std::string& out, const Metadata& overrides) {
  try {
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
