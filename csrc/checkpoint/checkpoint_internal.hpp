#pragma once
// What the readers of csrc/checkpoint share. Each format's reader turns a file
// into a Checkpoint (safetensors/migrate.hpp); read_checkpoint picks the
// reader by detect. Internal.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "checkpoint/zip.hpp"
#include "pickle/value.hpp"
#include "safetensors/error.hpp"
#include "safetensors/header.hpp"
#include "safetensors/migrate.hpp"
#include "safetensors/source.hpp"

namespace safetensors::detail {

// ---------------------------------------------------------------------------
// Format detection (detect.cpp)

struct Detected {
  CheckpointFormat format = CheckpointFormat::Unknown;
  std::optional<Error> safetensors_refusal;  ///< Unknown: why the safetensors parser refused it
};

/// The file's format, asking the safetensors parser itself first, so that it
/// is detected exactly when the parser accepts it.
Detected detect(const std::shared_ptr<Source>& source);

/// Whether `path` is a folder: a sharded set's (ShardedOpen's rule).
bool is_folder(const std::string& path);
/// Whether `path` names an index as ShardedOpen takes it: its name ends in
/// ".json". Only a file that no format's content matches is read as one.
bool names_an_index(const std::string& path);

/// Refusals of the header-length check: the file does not claim to be a
/// safetensors file. One that passes it does, and is told why the parser
/// refuses the rest.
bool refused_by_length(const Error& e);

// ---------------------------------------------------------------------------
// torch's zip archives, either kind (archive.cpp)

/// The archive folder: the part before "/data.pkl" of the one top-level
/// data.pkl (any name: torch uses the file's stem). Throws InvalidCheckpoint
/// when there is none, or more than one.
std::string archive_prefix(const ZipArchive& zip);

/// Whether `data`, the archive's data.pkl, pickles a TorchScript object.
bool is_torchscript(const ZipArchive& zip, const ZipEntry& data);

/// What a TorchScript archive's code/ declares of one module class: the
/// attributes that are its parameters and its buffers (`__parameters__ = [...]`,
/// `__buffers__ = [...]` of its class definition).
struct ModuleDeclaration {
  std::set<std::string> parameters, buffers;
};

/// The module classes of a TorchScript archive by qualified name
/// ("__torch__.torch.nn.modules.linear.Linear"), as its code/ declares them.
struct ModuleDeclarations {
  std::map<std::string, ModuleDeclaration, std::less<>> classes;
  /// Whether every code entry was read and every module class in them parsed:
  /// then a TorchScript class that is not here is not a module.
  bool complete = false;
};

/// Most bytes of code/ read from one entry, and from all: the declarations
/// are a few lines of each class; an archive whose code passes these is read
/// without them. The text read and the declarations kept (charged
/// kDeclarationCost per class and per name, plus its bytes) also stay within
/// kCodeBytesFloor plus kCodeBytesPerFileByte per byte of the file: deflate
/// would let a small file claim the whole of kMaxCodeTotal.
inline constexpr std::uint64_t kMaxCodeEntry = 16 << 20;
inline constexpr std::uint64_t kMaxCodeTotal = 64 << 20;
inline constexpr std::uint64_t kCodeBytesFloor = 1 << 20;
inline constexpr std::uint64_t kCodeBytesPerFileByte = 4;
inline constexpr std::uint64_t kDeclarationCost = 128;

/// Reads the module declarations of the archive whose folder is `prefix` from
/// the text of its code/ entries, as data: nothing in them is compiled or run.
/// An entry that cannot be inflated within the bounds above, or a module class
/// whose declarations do not parse, is left out (and `complete` is false).
ModuleDeclarations read_module_declarations(const ZipArchive& zip, const std::string& prefix);

/// Reports the tensor constants of a TorchScript archive's code (its
/// constants.pkl, `constants`) as one non-tensor entry of `out`; they are not read.
void report_torchscript_constants(const ZipArchive& zip, const ZipEntry& constants, Checkpoint& out);

// ---------------------------------------------------------------------------
// Readers of each pickle format (torch_zip.cpp, legacy.cpp)

/// A torch.save zip file or a TorchScript archive (`format`) into `out`.
void read_torch_zip(const std::shared_ptr<Source>& source, CheckpointFormat format,
                    const CheckpointOptions& options, Checkpoint& out);

/// Where the magic number's pickle of a legacy torch.save file ends, or 0 when
/// the file does not start with one.
std::size_t legacy_magic_end(const Source& source);

/// A legacy (pre-1.6) torch.save file into `out`.
void read_torch_legacy(const std::shared_ptr<Source>& source, const CheckpointOptions& options, Checkpoint& out);

// ---------------------------------------------------------------------------
// From a pickle's values to named tensors (flatten.cpp)

/// Where a storage's bytes lie in the file.
struct Span {
  std::uint64_t offset;
  std::uint64_t size;
};
/// The bytes of the storage of that key, or nullopt when the file has none.
using LocateStorage = std::function<std::optional<Span>(const std::string& key)>;

/// Adds to `out` the tensors and other entries (with their JSON text when
/// options.non_tensors_as_json) of the value at options.key (a path of dict
/// keys, positions and attribute names) of `root`, a pickle of `pickle_size`
/// bytes whose storages `locate` finds in `source`. What it makes is bounded
/// by the pickle's and the file's sizes (migrate.hpp).
/// With `modules` (a TorchScript archive's declarations), a module whose class
/// they declare contributes its parameters and buffers (Python's state_dict);
/// its other attributes are reported, its bookkeeping counted (see
/// Checkpoint::module_bookkeeping).
void flatten(const std::shared_ptr<Source>& source, LocateStorage locate, std::uint64_t pickle_size,
             const pickle::Value& root, const CheckpointOptions& options, Checkpoint& out,
             const ModuleDeclarations* modules = nullptr);

// ---------------------------------------------------------------------------
// Any format (read.cpp)

/// What read_checkpoint knows of a safetensors input beyond its Checkpoint.
struct SafetensorsInput {
  /// The tensors whose dtypes this LibTorch lacks, read as raw bytes.
  std::map<std::string, TensorInfo> raw;
  /// A set's index and shards, as opened; empty for one file.
  std::vector<std::string> set_files;
};

/// read_checkpoint, filling `input` (when not null) for a safetensors input.
Checkpoint read_checkpoint(const std::string& path, const CheckpointOptions& options, SafetensorsInput* input);

// Records each alias (name -> kept name, both as written) as a metadata entry
// of its name; an alias whose name is a metadata key already (the caller's, or
// "format") becomes a contiguous copy of its kept tensor in `tensors` instead,
// and leaves `aliases`.
void record_aliases(NamedTensors& tensors, std::map<std::string, std::string>& aliases, Metadata& metadata);

}  // namespace safetensors::detail
