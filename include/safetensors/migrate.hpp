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
// Python pickles are interpreted by a restricted reader that knows only what a
// checkpoint holds (dicts, OrderedDicts, lists, tuples, strings, numbers,
// booleans, None and tensors); any other Python object is refused with an error
// naming it. C++ torch::save archives are the user's own files and are read
// with LibTorch's reader.

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

namespace safetensors {

enum class CheckpointFormat {
  Safetensors,     ///< a safetensors file
  TorchZip,        ///< Python torch.save (1.6 and later): a zip with data.pkl
  TorchLegacy,     ///< Python torch.save before 1.6, or _use_new_zipfile_serialization=False
  TorchArchive,    ///< C++ torch::save / torch::serialize::OutputArchive
  Unknown,
};

/// "safetensors", "torch.save (zip)", ...
const char* to_string(CheckpointFormat format) noexcept;

/// The format of a file, decided by its content, never its name. Throws Error(Io).
CheckpointFormat detect_format(const std::string& path);

/// Deepest nesting of containers read from a pickle; deeper is LimitExceeded.
inline constexpr std::size_t kMaxCheckpointDepth = 256;

struct CheckpointOptions {
  /// The path of the sub-dict to read, e.g. {"model"} for
  /// `{"model": state_dict, "optimizer": ..., "epoch": 3}`. Empty: the whole
  /// checkpoint, nested names joined with dots ("model.fc.weight").
  TORCH_ARG(std::vector<std::string>, key) = {};
};

/// An entry that is not a tensor (an epoch number, optimizer hyperparameters),
/// reported so that nothing is dropped silently.
struct NonTensorEntry {
  std::string name;
  std::string description;  ///< "int 3", "dict of 2", ...
};

struct Checkpoint {
  CheckpointFormat format = CheckpointFormat::Unknown;
  /// Every tensor by its (dotted) name, in the checkpoint's order. Tensors of a
  /// torch.save file view its memory-mapped storages (no copy).
  torch::OrderedDict<std::string, at::Tensor> tensors;
  /// Names whose tensor is the same view of the same storage as an earlier one:
  /// `name -> kept name`. Saving keeps one copy and records these in the
  /// metadata, as safetensors' save_model does for tied weights.
  std::map<std::string, std::string> aliases;
  /// Tensors that overlap a different view of the same storage: they cannot
  /// share bytes in a safetensors file, so each is saved as its own copy.
  std::vector<std::string> copied_views;
  std::vector<NonTensorEntry> non_tensors;
};

/// Reads any supported checkpoint (see CheckpointFormat), legacy torch.save
/// files included. Throws Error: TensorNotFound for a `key` that is not there,
/// InvalidCheckpoint for a malformed archive or legacy storage table, an
/// unrecognised or big-endian file, or a refused pickle (naming the opcode or global),
/// TensorInvalidInfo for a tensor outside its storage, LimitExceeded,
/// UnsupportedDtype.
Checkpoint read_checkpoint(const std::string& path, const CheckpointOptions& options = {});

struct ConvertOptions {
  TORCH_ARG(std::vector<std::string>, key) = {};
  /// Extra metadata; "format": "pt" and the alias entries are always written.
  TORCH_ARG(Metadata, metadata) = {};
  /// When set, `out` is a folder that receives a sharded checkpoint
  /// (save_sharded) with at most this many tensor bytes per shard.
  TORCH_ARG(std::optional<std::uint64_t>, max_shard_size) = std::nullopt;
  TORCH_ARG(bool, fsync) = true;
  /// Called after each tensor is written, in file order, with the tensor
  /// bytes written so far and the total (over every shard): `done` grows and
  /// the last call has `done == total`, after which the file (or the shards
  /// and the index) are flushed and renamed into place. Not called when there
  /// are no tensors.
  TORCH_ARG(std::function<void(std::uint64_t done, std::uint64_t total)>, progress) = nullptr;
};

struct ConvertSummary {
  CheckpointFormat format = CheckpointFormat::Unknown;
  std::size_t tensors = 0;  ///< tensors written
  std::uint64_t bytes = 0;  ///< tensor bytes written
  std::map<std::string, std::string> aliases;
  std::vector<std::string> copied_views;
  std::vector<NonTensorEntry> non_tensors;
  std::vector<std::string> files;  ///< the files written (several when sharded)
  double seconds = 0;
};

/// Reads `in` (any supported format) and writes its tensors to `out` as one
/// safetensors file, crash-safely (or as shards, see max_shard_size). A tensor
/// that is the same view as an earlier one is written once, its name recorded
/// in the metadata; a safetensors input keeps its dtypes, even those this
/// LibTorch lacks.
ConvertSummary convert_checkpoint(const std::string& in, const std::string& out,
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

/// Compares two checkpoints of any supported formats tensor by tensor: names,
/// dtypes, shapes and bytes (bitwise: a lossless conversion keeps NaN payloads).
/// Names a safetensors file records as aliases count as present.
DiffReport diff_checkpoints(const std::string& a, const std::string& b,
                            const CheckpointOptions& options_a = {},
                            const CheckpointOptions& options_b = {});

}  // namespace safetensors
