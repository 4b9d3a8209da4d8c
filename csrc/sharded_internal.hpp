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

namespace safetensors::detail {

/// `model-0000{i+1}-of-0000{n}.safetensors`.
std::string shard_file_name(std::size_t i, std::size_t n);
/// A random id naming one save (kShardSetKey).
std::string new_set_id();
/// Renames are durable only once the folder itself is flushed.
void fsync_folder(const std::string& folder);
/// Removes the staged shards of writers that no longer run (on this host).
void remove_dead_writers_shards(const std::string& folder);
/// The files of the checkpoint the folder holds now, as a loader would pick it.
std::set<std::string> current_checkpoint_files(const std::string& folder);
/// Removes the files of `previous` that `kept` does not name. Best effort.
void remove_replaced_files(const std::string& folder, const std::set<std::string>& previous,
                           const std::vector<std::string>& kept);
/// The index's JSON text.
std::string index_json(const std::map<std::string, std::string>& weight_map, std::uint64_t total_size,
                       const std::string& set_id);

/// Shards written under temporary names; whatever was not moved into place is
/// removed when this goes away, so a failed save leaves nothing behind.
class StagedShards {
 public:
  StagedShards(std::string folder, std::string set_id)
      : folder_(std::move(folder)), set_id_(std::move(set_id)) {}
  ~StagedShards();
  StagedShards(const StagedShards&) = delete;
  StagedShards& operator=(const StagedShards&) = delete;

  void write(const NamedTensors& tensors, const std::string& name, const Metadata& metadata,
             const SaveOptions& options);
  /// Moves every shard to its final name.
  void commit(bool fsync);

 private:
  std::string folder_;
  std::string set_id_;
  std::vector<std::pair<std::string, std::string>> files_;  // staged path, final name
  std::size_t committed_ = 0;                                // files_ moved into place
};

}  // namespace safetensors::detail
