// Zip archives: Python torch.save (1.6 and later) and TorchScript archives
// (torch::save from C++, torch.jit.save). Both store their storages as
// `<prefix>/data/<key>` and their object as `<prefix>/data.pkl`; a TorchScript
// archive's object is a module, read as data: its code is never compiled.

#include <optional>
#include <string>

#include "checkpoint/checkpoint_internal.hpp"
#include "checkpoint/zip.hpp"
#include "pickle/unpickler.hpp"
#include "safetensors/error.hpp"

namespace safetensors::detail {

void read_torch_zip(const std::shared_ptr<Source>& source, CheckpointFormat format,
                    const CheckpointOptions& options, Checkpoint& out) {
  const ZipArchive zip(source);
  const std::string prefix = archive_prefix(zip);
  if (const ZipEntry* order = zip.find(prefix + "byteorder"); order && zip.read(*order) != "little")
    throw Error(ErrorCode::InvalidCheckpoint, source->path(), "",
                "a big-endian checkpoint; re-save it on a little-endian machine");
  const std::string data = zip.read(*zip.find(prefix + "data.pkl"));
  const pickle::Pickle p = pickle::unpickle(data, source->path());
  const LocateStorage locate = [&](const std::string& key) -> std::optional<Span> {
    const ZipEntry* entry = zip.find(prefix + "data/" + key);
    if (!entry) return std::nullopt;
    return Span{entry->offset, entry->size};
  };
  // A TorchScript archive's code/ tells its modules' parameters and buffers
  // from their other attributes; it is read as text, never compiled.
  std::optional<ModuleDeclarations> modules;
  if (format == CheckpointFormat::TorchArchive) modules = read_module_declarations(zip, prefix);
  flatten(source, locate, data.size(), *p.root, options, out, modules ? &*modules : nullptr);

  // The tensors TorchScript code uses as constants are not the module's state;
  // they are reported, not read.
  const ZipEntry* constants = zip.find(prefix + "constants.pkl");
  if (format == CheckpointFormat::TorchArchive && constants && options.key().empty())
    report_torchscript_constants(zip, *constants, out);
}

}  // namespace safetensors::detail
