#pragma once
// Checks of the tensors to save, shared by save_file, deduplicate_shared and
// the distributed save, and the choice between one file and a sharded set
// that every save with a max_shard_size option makes. Internal.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "safetensors/writer.hpp"

namespace safetensors::detail {

/// Checks one item (defined, dense, a dtype the format has, raw bytes that fit
/// their declared dtype and shape) and gives its dtype and file shape. Throws
/// InvalidArgument naming `file` and the tensor.
EntrySpec describe_entry(const NamedTensors::Item& item, const std::string& file);

/// The items whose bytes overlap in one storage, in groups of two or more,
/// each in byte order. Items without data (undefined, meta, empty) are in none.
std::vector<std::vector<const NamedTensors::Item*>> overlapping_groups(const NamedTensors& tensors);

/// save_file into `path`, a temporary name, of a file that is to replace
/// `replaces` later: it takes that file's permissions (AtomicFile::Options).
void save_file_replacing(const NamedTensors& tensors, const std::string& path, const std::string& replaces,
                         const std::optional<Metadata>& metadata, const SaveOptions& options);

/// Saves `tensors` as one file at `path`, or as a sharded set in the folder
/// `path` when `max_shard_size` is given, with the fsync and progress of
/// `options`. Returns the files written: `path`, or those save_sharded returns.
template <class Options>
std::vector<std::string> save_one_or_sharded(const NamedTensors& tensors, const std::string& path,
                                             const std::optional<Metadata>& meta,
                                             const std::optional<std::uint64_t>& max_shard_size,
                                             const WriteOptions<Options>& options) {
  if (max_shard_size)
    return save_sharded(tensors, path, meta,
                        ShardedSaveOptions().max_shard_size(*max_shard_size).fsync(options.fsync()).progress(
                            options.progress()));
  save_file(tensors, path, meta, SaveOptions().fsync(options.fsync()).progress(options.progress()));
  return {path};
}

}  // namespace safetensors::detail
