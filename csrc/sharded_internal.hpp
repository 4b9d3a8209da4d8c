#pragma once
// The pieces of a crash-safe sharded save, shared by save_sharded and the
// distributed save. Internal.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "safetensors/header.hpp"
#include "safetensors/save.hpp"
#include "detail/durable.hpp"

namespace safetensors::detail {

/// `model-0000{i+1}-of-0000{n}.safetensors`.
std::string shard_file_name(std::size_t i, std::size_t n);
/// The checkpoint a folder holds, as a loader would pick it.
struct Checkpoint {
  /// Its files: those its index lists, or model.safetensors. A save replaces
  /// them: it removes them once its own checkpoint is in place.
  std::set<std::string> files;
  /// The names no file may take before the switch to a new checkpoint, since a
  /// loader may read them as this one: `files`, and where the index is one this
  /// reader refuses (which another loader may still load), every visible
  /// *.safetensors file in the folder.
  std::set<std::string> occupied;
};
/// The folder's checkpoint now.
Checkpoint current_checkpoint(const std::string& folder);

/// remove_dead_writers_files over `folder`, whose files in use are those its
/// checkpoint occupies: removes dead writers' temporary files, the staged
/// shards of saves none of whose writers holds its lock any more (on any
/// host), and the files their locks record, except those the checkpoint
/// occupies and those a live writer's lock records.
void remove_dead_writers_shards(const std::string& folder);
/// Removes the files of `previous` that `kept` does not name. Best effort.
void remove_replaced_files(const std::string& folder, const std::set<std::string>& previous,
                           const std::vector<std::string>& kept);
/// The index's JSON text.
std::string index_json(const std::map<std::string, std::string>& weight_map, std::uint64_t total_size,
                       const std::string& set_id);

/// The name under which shard `shard` of save `set_id` is published before the
/// index switches to it: its own where the previous checkpoint does not occupy
/// it, else its staged name, so that the previous checkpoint stays whole until
/// the switch.
std::string published_name(const std::string& shard, const std::string& set_id, const Checkpoint& previous);

/// Shards written under staged names. The writer holds a WriterLock in the
/// folder from construction to destruction, which tells every later save
/// that the set's staged shards are not leftovers: keep this alive until the
/// index is written. Whatever was not published is removed when this goes
/// away, so a failed save leaves nothing behind.
class StagedShards {
 public:
  StagedShards(std::string folder, std::string set_id);
  ~StagedShards();
  StagedShards(const StagedShards&) = delete;
  StagedShards& operator=(const StagedShards&) = delete;

  /// Stages one shard; it takes the permissions of the file it replaces.
  void write(const NamedTensors& tensors, const std::string& name, const Metadata& metadata,
             const SaveOptions& options);
  /// Records in the lock the files this save may leave from now on (those of
  /// the previous checkpoint and every shard's final name), publishes every
  /// staged shard under published_name(), and flushes the folder. On failure
  /// nothing stays published.
  void commit(bool fsync, const Checkpoint& previous);

 private:
  std::string folder_;
  std::string set_id_;
  WriterLock lock_;  // before files_: it goes after them
  std::vector<std::pair<std::string, std::string>> files_;  // staged path, final name
  std::size_t published_ = 0;                                // files_ published
};

/// Makes a published set (`names`, the final shard names in order; `weight_map`
/// names them too) the folder's checkpoint: writes the index over the
/// published names (the switch), removes the files of `previous` and those at
/// the names of the set that it occupied, then gives
/// shards published under staged names their final names (hard links, the
/// index again, the staged names removed). At every moment the folder loads as
/// the previous checkpoint or the new one. Returns the shard names the index
/// lists: `names`, or the published ones where the filesystem has no hard
/// links. If the switch fails, the published shards are removed.
std::vector<std::string> commit_set(const std::string& folder, const std::vector<std::string>& names,
                                    const std::map<std::string, std::string>& weight_map, std::uint64_t total_size,
                                    const std::string& set_id, const Checkpoint& previous, bool fsync);

}  // namespace safetensors::detail
