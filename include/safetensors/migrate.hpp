#pragma once
// Reading the checkpoints users migrate from, and converting them to
// safetensors, without executing anything.
//
//   // A Python torch.save file (.pt, .pth, pytorch_model.bin), read weights-only:
//   safetensors::Checkpoint ckpt = safetensors::read_checkpoint("model.pt");
//   torch::Tensor w = ckpt.tensors["fc.weight"];
//
//   // The state dict inside a training checkpoint, written as safetensors:
//   safetensors::convert_checkpoint("ckpt.pt", "model.safetensors",
//                                   safetensors::ConvertOptions().key({"model"}));
//
// Pickles are interpreted by a restricted reader that knows only what a
// checkpoint holds (dicts, OrderedDicts, lists, tuples, strings, numbers,
// booleans, None and tensors); any other Python object is refused with an error
// naming it. TorchScript archives (C++ torch::save, Python torch.jit.save) are
// read with the same reader: their modules are records of their attributes,
// their code is never compiled or run.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/ordered_dict.h>

#include "safetensors/header.hpp"
#include "safetensors/save.hpp"
#include "safetensors/source.hpp"
#include "safetensors/transform.hpp"

namespace safetensors {

enum class CheckpointFormat {
  Safetensors,     ///< a safetensors file
  /// A sharded safetensors set, read through ShardedOpen: its folder (holding
  /// model.safetensors.index.json, or a lone model.safetensors) or its index file
  SafetensorsSet,
  TorchZip,        ///< Python torch.save (1.6 and later): a zip with data.pkl
  TorchLegacy,     ///< Python torch.save before 1.6, or _use_new_zipfile_serialization=False
  /// A TorchScript archive: C++ torch::save / torch::serialize::OutputArchive,
  /// Python torch.jit.save (a zip whose data.pkl pickles a `__torch__` module)
  TorchArchive,
  Unknown,
};

/// "safetensors", "torch.save (zip)", "TorchScript archive", ...
const char* to_string(CheckpointFormat format) noexcept;

/// The format of a file, decided by its content, never its name: Safetensors
/// exactly when the safetensors parser accepts it. A folder, and a file of no
/// format whose name ends in ".json" (an index, as ShardedOpen takes it), are
/// SafetensorsSet; neither is read further here. Throws Error(Io), and
/// InvalidCheckpoint for a zip archive that is not a valid torch checkpoint.
CheckpointFormat detect_format(const std::string& path, Backend backend = Backend::Mmap);

/// Deepest nesting of containers read from a pickle; deeper is LimitExceeded.
inline constexpr std::size_t kMaxCheckpointDepth = 256;
/// Work that turning a pickle into names may do: the bytes of every dotted name
/// it builds and of every entry it makes, at most this many per byte of the
/// pickle plus kFlattenBytesFloor (torch.save checkpoints need 1 to 5,
/// TorchScript modules up to 11, most of it for their `training` flags). It
/// keeps a name repeated through the pickle's memo from multiplying into
/// memory; beyond it, LimitExceeded.
inline constexpr std::uint64_t kFlattenBytesPerPickleByte = 8;
inline constexpr std::uint64_t kFlattenBytesFloor = 16 << 20;
/// The JSON text kept for non-tensor values (CheckpointOptions::
/// non_tensors_as_json): at most this much per entry, and in all, within what
/// is left of the budget above. An entry beyond them keeps no text and is
/// reported instead; the read goes on.
inline constexpr std::uint64_t kMaxJsonEntry = 16 << 20;
inline constexpr std::uint64_t kMaxJsonTotal = 64 << 20;
/// The tensors of a checkpoint, written out (every name, numel times element
/// size), may hold at most this many times the file's bytes, plus
/// kViewBytesFloor: a view of stride 0 (`expand`) or many overlapping views
/// would otherwise make a small file write or compare terabytes. Beyond it,
/// LimitExceeded naming the tensor.
inline constexpr std::uint64_t kMaxViewExpansion = 8;
inline constexpr std::uint64_t kViewBytesFloor = 1 << 20;

struct CheckpointOptions {
  /// The path of the sub-dict to read, e.g. {"model"} for
  /// `{"model": state_dict, "optimizer": ..., "epoch": 3}`, or of a submodule
  /// of a TorchScript archive. Empty: the whole checkpoint, nested names
  /// joined with dots ("model.fc.weight").
  TORCH_ARG(std::vector<std::string>, key) = {};
  /// How the file is read. Mmap: tensors view the private mapping (zero-copy).
  /// Pread: positional reads, no mapping; the tensors own copies of their
  /// bytes, and only the storages the selected tensors use are read.
  TORCH_ARG(Backend, backend) = Backend::Mmap;
  /// Also give every non-tensor entry its JSON text (NonTensorEntry::json),
  /// charged to the same bound as the names (kFlattenBytesPerPickleByte).
  TORCH_ARG(bool, non_tensors_as_json) = false;
};

/// An entry that is not a tensor (an epoch number, optimizer hyperparameters),
/// reported so that nothing is dropped silently: the largest subtree of the
/// checkpoint that holds no tensor, named by where it sits ("epoch",
/// "optimizer.param_groups").
struct NonTensorEntry {
  std::string name;
  std::string description;  ///< "int 3", "dict of 2", ...
  /// With CheckpointOptions::non_tensors_as_json: the value as Python's
  /// json.dumps writes it (ints; floats as their shortest round-trip text,
  /// Infinity, -Infinity and NaN; true, false, null; strings; lists and tuples
  /// as arrays; dicts whose keys are all str or int as objects, int keys as
  /// their decimal text). nullopt for a value that has none: bytes, a
  /// TorchScript object, a torch.device, a dict with other keys, ...
  std::optional<std::string> json;
};

/// A metadata key whose value differs between the files of a sharded set.
struct MetadataConflict {
  struct Value {
    std::string value;
    /// The files that give it, by their names in the set's folder, in the
    /// order read: the shards (ShardIndex::shard_files()), then the index.
    std::vector<std::string> files;
  };
  std::string key;
  std::vector<Value> values;  ///< each distinct value once; the first is the one kept
};

struct Checkpoint {
  CheckpointFormat format = CheckpointFormat::Unknown;
  /// Every tensor by its (dotted) name, in the checkpoint's order. Tensors of a
  /// torch.save file view its memory-mapped storages (no copy) with the Mmap
  /// backend. A tensor the pickle refers to twice is one tensor under both names.
  /// For a TorchScript archive: every tensor attribute of its modules (their
  /// parameters and buffers: the names of the module's state_dict); an object
  /// with its own __getstate__ is named by the positions of the state it saved.
  torch::OrderedDict<std::string, at::Tensor> tensors;
  /// Names whose tensor is the same view of the same storage as an earlier one:
  /// `name -> kept name`. Saving keeps one copy and records these in the
  /// metadata, as safetensors' save_model does for tied weights. The names a
  /// safetensors file's metadata records so are here only, not in `tensors`.
  std::map<std::string, std::string> aliases;
  /// Tensors that overlap a different view of the same storage: they cannot
  /// share bytes in a safetensors file, so each is saved as its own copy.
  std::vector<std::string> copied_views;
  /// Of a TorchScript archive: its user attributes (an int, a list, a tensor
  /// that is neither a parameter nor a buffer); of other formats, every value
  /// that is not a tensor.
  std::vector<NonTensorEntry> non_tensors;
  /// A safetensors input's own metadata: its `__metadata__`; for a set, every
  /// shard's, then the index's `metadata` (non-string values as their JSON
  /// text), without the entries recorded in `aliases`, kShardSetKey and the
  /// index's total_size. nullopt for a pickle and for a file without
  /// `__metadata__` (a set: when no file of it has any).
  std::optional<Metadata> metadata;
  /// The keys on which the files of a set disagree; `metadata` (or `aliases`)
  /// holds the first file's value, as a reader of a set's first shard sees it.
  std::vector<MetadataConflict> metadata_conflicts;
  /// Of a TorchScript archive whose code/ declares its modules' parameters and
  /// buffers: how many names of `tensors` are each (tied ones counted per
  /// name). nullopt for other formats, and when a module's declarations are
  /// missing or unreadable, or it saved its own __getstate__: its tensors are
  /// then all its tensor attributes, and the split unknown.
  std::optional<std::size_t> parameters, buffers;
  /// One kind of a TorchScript module's bookkeeping: not state, not converted.
  struct Bookkeeping {
    std::string what;       ///< "training", "_is_full_backward_hook", "parameters set to None", ...
    std::size_t count = 0;  ///< how many: of modules with it, or of parameters set to None
  };
  /// A TorchScript archive's module bookkeeping, in the order first met: the
  /// flags every Python module has (`training`, `_is_full_backward_hook`),
  /// parameters and buffers set to None (Linear(bias=False)), modules that
  /// hold no tensor (an activation), modules whose own __getstate__ saved their
  /// state (its tensors named by position).
  std::vector<Bookkeeping> module_bookkeeping;
};

/// Reads any supported checkpoint (see CheckpointFormat), legacy torch.save
/// files and sharded sets included: `path` is a file, or a set's folder or
/// index (the paths ShardedOpen takes). A set's tensors view its shards'
/// mappings with the Mmap backend, which stay mapped while the tensors live.
/// Throws Error: InvalidArgument for a `key` of a safetensors file or set,
/// ShardedOpen's errors for a set, TensorNotFound for a `key` that is not there,
/// InvalidCheckpoint for a malformed archive or legacy storage table, an
/// unrecognised or big-endian file, or a refused pickle (naming the opcode or global),
/// TensorInvalidInfo for a tensor outside its storage, LimitExceeded (depth,
/// the memory bounds of the pickle and of its names, kMaxViewExpansion),
/// UnsupportedDtype; for a file whose first 8 bytes are a plausible safetensors
/// header length, the safetensors parser's own error.
Checkpoint read_checkpoint(const std::string& path, const CheckpointOptions& options = {});

/// Options of convert_checkpoint: fsync and progress (over every shard when
/// sharded), and how `in` is read and `out` written.
struct ConvertOptions : WriteOptions<ConvertOptions> {
  TORCH_ARG(std::vector<std::string>, key) = {};
  /// How `in` is read (see CheckpointOptions::backend).
  TORCH_ARG(Backend, backend) = Backend::Mmap;
  /// Metadata entries written, replacing the input's own entries of the same
  /// keys. A safetensors input (file or set) keeps its metadata (Checkpoint::
  /// metadata) and adds nothing else but its aliases: a file without metadata
  /// is written without, as it was. A pickle's output has "format": "pt",
  /// unless this sets "format". The alias entries are always written.
  TORCH_ARG(Metadata, metadata) = {};
  /// Keep every non-tensor entry that has a JSON form (NonTensorEntry::json) as
  /// a metadata entry of its name: `"epoch": "3"`, `"param_groups": "[{...}]"`.
  /// Of torch.save files and safetensors inputs only: a TorchScript module's
  /// attributes are reported (ConvertReport::non_tensors), not kept.
  /// `transform` selects and renames them as it does tensors (its dtype does
  /// not apply); the metadata given, "format" and the alias entries take
  /// precedence: an entry whose name is one of their keys, or not valid UTF-8,
  /// is not kept. False: none is kept; each is reported in ConvertReport::non_tensors.
  TORCH_ARG(bool, keep_non_tensors) = true;
  /// When set, `out` is a folder that receives a sharded checkpoint
  /// (save_sharded) with at most this many tensor bytes per shard.
  TORCH_ARG(std::optional<std::uint64_t>, max_shard_size) = std::nullopt;
  /// The tensors selected, renamed and cast on their way (see TensorTransform);
  /// aliases follow their tensors' new names.
  TORCH_ARG(TensorTransform, transform) = {};
};

/// What convert_checkpoint wrote.
struct ConvertReport {
  CheckpointFormat format = CheckpointFormat::Unknown;
  std::size_t tensors = 0;  ///< tensors written
  std::uint64_t bytes = 0;  ///< tensor bytes written
  std::map<std::string, std::string> aliases;
  std::vector<std::string> copied_views;
  /// The non-tensor entries that were not kept as metadata (see keep_non_tensors).
  std::vector<NonTensorEntry> non_tensors;
  /// What a TorchScript archive's modules held (Checkpoint::parameters, buffers
  /// and module_bookkeeping), as read.
  std::optional<std::size_t> parameters, buffers;
  std::vector<Checkpoint::Bookkeeping> module_bookkeeping;
  /// The metadata keys the kept non-tensor entries were written as (their
  /// names after the transform), in the checkpoint's order.
  std::vector<std::string> metadata_keys;
  /// The metadata keys on which the files of a set disagree
  /// (Checkpoint::metadata_conflicts), but those ConvertOptions::metadata sets:
  /// the first file's value is written.
  std::vector<MetadataConflict> metadata_conflicts;
  std::vector<std::string> files;  ///< the files written (several when sharded)
  /// What ConvertOptions::transform changed; `excluded` and `renamed` count the
  /// non-tensor entries too.
  TransformReport transform;
  double seconds = 0;
};
/// The name of release 0.1, kept for one release.
using ConvertSummary [[deprecated("use ConvertReport")]] = ConvertReport;

/// Reads `in` (any supported format, a sharded set included: see
/// read_checkpoint) and writes its tensors to `out` as one safetensors file,
/// crash-safely (or as shards, see max_shard_size). The input's files stay
/// mapped until the output is written, so that `out` may replace a lone input
/// file; one file written over the index or a shard of the set read would
/// break that set, and is refused (InvalidArgument) before anything is
/// written. A tensor
/// that is the same view as an earlier one is written once, its name recorded
/// in the metadata; a safetensors input keeps its dtypes, even those this
/// LibTorch lacks. Non-tensor values (an epoch, an optimizer's param_groups)
/// become metadata entries of JSON text (see keep_non_tensors), so that
/// `key({"optimizer"})` of a Python training checkpoint writes a file
/// load_optimizer reads.
ConvertReport convert_checkpoint(const std::string& in, const std::string& out,
                                 const ConvertOptions& options = {});

/// How one tensor differs between two checkpoints.
struct TensorDifference {
  std::string name;
  std::string detail;  ///< "dtype F32 vs F16", "shape [2, 3] vs [3, 2]", "max abs difference 0.5"
};

struct DiffReport {
  std::vector<std::string> only_in_a;
  std::vector<std::string> only_in_b;
  std::vector<TensorDifference> different;
  std::size_t identical = 0;  ///< same dtype, shape and bytes
  bool equal() const noexcept { return only_in_a.empty() && only_in_b.empty() && different.empty(); }
};

/// Compares two checkpoints of any supported formats (sharded sets included)
/// tensor by tensor: names,
/// dtypes, shapes and bytes (bitwise: a lossless conversion keeps NaN payloads).
/// Names a safetensors file records as aliases count as present.
DiffReport diff_checkpoints(const std::string& a, const std::string& b,
                            const CheckpointOptions& options_a = {},
                            const CheckpointOptions& options_b = {});
/// Called as a diff goes: the bytes compared so far, of all it compares (each
/// pair of views once, of one dtype and shape); last with done == total.
using DiffProgress = std::function<void(std::uint64_t done, std::uint64_t total)>;

/// Compares two checkpoints already read, as above: a checkpoint read from a
/// sharded set compares with one read from a single file.
DiffReport diff_checkpoints(const Checkpoint& a, const Checkpoint& b, const DiffProgress& progress = {});

}  // namespace safetensors
