#pragma once
// Sharded checkpoints, in the Hugging Face Hub convention: shards
// `model-00001-of-00003.safetensors`, ... and `model.safetensors.index.json`
//   {"metadata": {"total_size": BYTES}, "weight_map": {"tensor.name": "model-00001-of-00003.safetensors"}}
// A checkpoint small enough for one shard is a plain `model.safetensors`.
//
//   safetensors::save_sharded(tensors, "checkpoint/", std::nullopt,
//                             safetensors::ShardedSaveOptions().max_shard_size(2'000'000'000));
//   safetensors::ShardedOpen ckpt("checkpoint/");
//   torch::Tensor w = ckpt.get_tensor("lm_head.weight");

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <torch/arg.h>

#include "safetensors/header.hpp"
#include "safetensors/load.hpp"
#include "safetensors/save.hpp"

namespace safetensors {

/// File names of the convention.
inline constexpr std::string_view kIndexFileName = "model.safetensors.index.json";
inline constexpr std::string_view kSingleFileName = "model.safetensors";
/// The metadata key, in the index and in every shard, naming the save a shard
/// belongs to: a loader refuses a set mixed from two saves.
inline constexpr std::string_view kShardSetKey = "shard_set";
/// The largest index read: as a header, 100 MB (an index of a million
/// tensors is about 60 MB).
inline constexpr std::uint64_t kMaxIndexSize = 100'000'000;
/// The default maximum shard size: 5 GB, decimal, as the Hub's tools use.
inline constexpr std::uint64_t kDefaultMaxShardSize = 5'000'000'000;

/// A parsed `model.safetensors.index.json`.
struct ShardIndex {
  /// `metadata.total_size`, when present.
  std::optional<std::uint64_t> total_size;
  /// The other entries of `metadata`; values that are not strings as their JSON text.
  Metadata metadata;
  /// Tensor name -> shard file name, relative to the index's folder.
  std::map<std::string, std::string> weight_map;

  /// The distinct shard files, sorted.
  std::vector<std::string> shard_files() const;
};

/// Parses an index. Refuses (InvalidIndex) JSON of another shape, and shard
/// names that are absolute, have a drive, a `..` component, a backslash, or do
/// not end in ".safetensors". `file` names the index in errors.
ShardIndex parse_index(std::string_view json, const std::string& file = "");
/// Reads and parses an index file. Refuses (InvalidIndex) a file that is not
/// a regular file (a FIFO, a device: never read or waited on) or is larger
/// than kMaxIndexSize.
ShardIndex read_index(const std::string& path);

/// A sharded checkpoint opened lazily, with SafeOpen's interface: every shard the
/// index lists is opened once (headers only); tensors are read on request.
/// Refuses (InvalidIndex) a set where a listed tensor is in another shard, or
/// in none, a shard holds a tensor the index does not list for it, or shards
/// come from different saves (kShardSetKey). Copies share the open shards.
class ShardedOpen {
 public:
  /// `path`: an index file, a `.safetensors` file (one shard), or a folder
  /// holding `model.safetensors.index.json` or else `model.safetensors`.
  explicit ShardedOpen(const std::string& path, LoadOptions options = {});
  /// A single, already opened file.
  explicit ShardedOpen(SafeOpen file);

  /// The index file's path, or the single file's.
  const std::string& path() const& noexcept { return path_; }
  std::string path() const&& { return path_; }
  /// The index, or nullptr for a single file.
  const ShardIndex* index() const& noexcept { return index_ ? &*index_ : nullptr; }
  const ShardIndex* index() const&& = delete;  // would point into a temporary
  /// The shards, in the order of ShardIndex::shard_files().
  const std::vector<SafeOpen>& shards() const& noexcept { return shards_; }
  // A copy would not help: `shards()[0].info(x)` would still point into it.
  const std::vector<SafeOpen>& shards() const&& = delete;
  /// Tensor names: shard by shard, each in file order.
  std::vector<std::string> keys() const;
  std::size_t size() const noexcept { return shard_of_.size(); }
  bool contains(const std::string& name) const { return shard_of_.count(name) != 0; }
  /// The index's metadata (total_size included, as text), or the single file's.
  const Metadata& metadata() const& noexcept { return metadata_; }
  Metadata metadata() const&& { return metadata_; }
  /// The shard holding a tensor. Throws TensorNotFound.
  const SafeOpen& shard_of(const std::string& name) const&;
  SafeOpen shard_of(const std::string& name) const&& {  // a copy shares the open file
    return static_cast<const ShardedOpen&>(*this).shard_of(name);
  }

  /// Points into a shard's state; a copy on a temporary ShardedOpen (see SafeOpen).
  const TensorInfo& info(const std::string& name) const& { return shard_of(name).info(name); }
  TensorInfo info(const std::string& name) const&& { return shard_of(name).info(name); }
  at::Tensor get_tensor(const std::string& name) const { return shard_of(name).get_tensor(name); }
  TensorSlice get_slice(const std::string& name) const { return shard_of(name).get_slice(name); }
  /// Every tensor, in keys() order.
  TensorDict tensors() const;

 private:
  void open_index(const std::string& index_path, const LoadOptions& options);
  void add_shard(SafeOpen shard);
  std::string path_;
  std::optional<ShardIndex> index_;
  std::vector<SafeOpen> shards_;
  std::unordered_map<std::string, std::size_t> shard_of_;
  Metadata metadata_;
};

/// Options of save_sharded: fsync and progress (counted over every shard), and
/// the size of the shards.
struct ShardedSaveOptions : WriteOptions<ShardedSaveOptions> {
  /// Bytes of tensor data per shard at most, except that a larger tensor gets
  /// a shard of its own.
  TORCH_ARG(std::uint64_t, max_shard_size) = kDefaultMaxShardSize;
};

/// Saves a checkpoint into `folder` (which must exist), packing tensors greedily
/// in the given order. Several shards are written with an index; one shard is
/// `model.safetensors` (and a stale index of an earlier save is removed).
/// Every shard's metadata is `metadata` plus `{"format": "pt"}` unless it sets
/// "format". Refuses tensors that share memory (deduplicate_shared them).
///
/// Crash-safety: the previous checkpoint loads, untouched, until the new index
/// is renamed into place, and the new one from then on; a process killed at any
/// moment leaves one or the other, never a mix. The shards are first written
/// under hidden staged names, so a failure while writing (a tensor that cannot
/// be saved, a full disk) leaves the folder as it was. A shard whose name no
/// file of the previous checkpoint has is renamed to it; one that would replace
/// a file the previous index lists (the same names, as when a Hugging Face
/// checkpoint, whose index has no kShardSetKey, is saved over) stays under its
/// staged name. The index, naming the shards as they are, is written last;
/// then the previous checkpoint's files are removed and the staged shards take
/// their own names (hard links, the index once more, the staged names
/// removed). On a filesystem without hard links they keep their staged names,
/// which the index lists, until a later save. Every shard and the index also
/// record the save's kShardSetKey, and ShardedOpen refuses a set mixed by other
/// means. Each shard and the index follow the rules of every save (save.hpp)
/// for symlinks and permissions. Returns the names of the files the index lists, then the index.
///
/// Cleanup: each writer holds a lock in the folder for the whole save, which
/// records the files it may leave should it die (the previous checkpoint's,
/// the shards it moves into place). Of saves none of whose writers holds its
/// lock any more (on any host or PID namespace), the staged shards and the
/// recorded files are removed first, except those the folder's checkpoint
/// uses; those of a running save are kept. Once the new checkpoint is in
/// place, the files of the one it replaced that it does not reuse are removed:
/// the shards the previous index listed, or a `model.safetensors` that a new
/// set replaces when there was no index (one next to an index was not the
/// checkpoint and stays). No other file is touched, and a previous index that
/// cannot be read removes nothing. These removals are best effort: the save
/// has succeeded when they run.
std::vector<std::string> save_sharded(const NamedTensors& tensors, const std::string& folder,
                                      const std::optional<Metadata>& metadata = std::nullopt,
                                      const ShardedSaveOptions& options = {});

}  // namespace safetensors
