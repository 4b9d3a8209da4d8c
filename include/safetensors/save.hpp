#pragma once
// Writing at::Tensors as safetensors files, byte for byte as the reference
// writer does, crash-safely.
//
//   safetensors::save_file({{"w", w}, {"b", b}}, "model.safetensors",
//                          safetensors::Metadata{{"format", "pt"}});
//   std::vector<std::uint8_t> bytes = safetensors::save(state, std::nullopt);

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/ordered_dict.h>

#include "safetensors/dtype.hpp"
#include "safetensors/header.hpp"

namespace safetensors {

/// The tensors to save, from any of the usual containers. Order does not
/// matter: the file's order is the reference writer's.
class NamedTensors {
 public:
  struct Item {
    std::string name;
    at::Tensor tensor;
    /// Set for raw items (see add_raw): the dtype and shape the file declares.
    std::optional<Dtype> raw_dtype;
    std::vector<std::uint64_t> raw_shape;
  };

  NamedTensors() = default;
  NamedTensors(const torch::OrderedDict<std::string, at::Tensor>& tensors);
  NamedTensors(const std::map<std::string, at::Tensor>& tensors);
  NamedTensors(const std::unordered_map<std::string, at::Tensor>& tensors);
  NamedTensors(const std::vector<std::pair<std::string, at::Tensor>>& tensors);
  NamedTensors(std::initializer_list<std::pair<std::string, at::Tensor>> tensors);

  NamedTensors& add(std::string name, at::Tensor tensor);
  /// Adds a tensor given as its raw little-endian bytes (a uint8 tensor with
  /// exactly the bytes `dtype` and `shape` need), for dtypes the LibTorch in
  /// use lacks (F8 on 1.13, F4, F6). The inverse of LoadOptions::unsupported_as_bytes.
  NamedTensors& add_raw(std::string name, Dtype dtype, std::vector<std::uint64_t> shape,
                        at::Tensor bytes);

  const std::vector<Item>& items() const noexcept { return items_; }
  std::size_t size() const noexcept { return items_.size(); }

 private:
  std::vector<Item> items_;
};

/// Told the tensor bytes a save has written so far and its total.
using WriteProgress = std::function<void(std::uint64_t done, std::uint64_t total)>;

/// What every save takes (SaveOptions, ShardedSaveOptions, StateDictSaveOptions,
/// ConvertOptions, DistributedSaveOptions derive from it). Its setters return
/// the derived options, so that they chain with the derived ones in LibTorch's
/// style: `ShardedSaveOptions().fsync(false).max_shard_size(1 << 30)`.
template <class Options>
class WriteOptions {
 public:
  /// Flush the files and their folder to disk before returning. On by default.
  Options& fsync(bool on) {
    fsync_ = on;
    return static_cast<Options&>(*this);
  }
  bool fsync() const noexcept { return fsync_; }
  bool& fsync() noexcept { return fsync_; }

  /// Called after each tensor's bytes are written, in file order, with the
  /// tensor bytes written so far and the total (over every file of the save):
  /// `done` grows and the last call has `done == total`, after which the files
  /// are flushed and renamed into place. Not called when there are no tensors.
  /// An exception thrown from it aborts the save, leaving the previous files.
  Options& progress(WriteProgress callback) {
    progress_ = std::move(callback);
    return static_cast<Options&>(*this);
  }
  const WriteProgress& progress() const noexcept { return progress_; }
  WriteProgress& progress() noexcept { return progress_; }

 private:
  bool fsync_ = true;
  WriteProgress progress_ = nullptr;
};

/// Options of save_file.
struct SaveOptions : WriteOptions<SaveOptions> {};

/// The rules of every save (save_file, save_sharded, save_state_dict,
/// convert_checkpoint, the distributed saves), for each file it writes:
/// - The path is replaced, never written through: a symlink there (a Hugging
///   Face cache's snapshot entry pointing into blobs/, dangling or not) becomes
///   the new regular file and its target is left as it was. A path naming a
///   folder, or a link to one, is refused.
/// - A new file gets 0666 & ~umask (or the folder's default ACL); a file that
///   replaces another keeps that one's permission bits (through a symlink, its
///   target's), never setuid, setgid or sticky.
/// - The bytes go to an unnamed file, or a hidden temporary one, in the same
///   folder. A hidden temporary file is locked (an open-file-description lock)
///   by its writer for as long as it exists; a save removes only the temporary
///   files in its folder that it can lock, so it never removes one another
///   writer is still writing, whatever host or PID namespace that writer runs in.
/// - With fsync, a failure to flush the file or its folder is an Error(Io): the
///   data may not be durable.

/// Writes a safetensors file crash-safely: into a temporary file in the same
/// folder, flushed, then renamed over `path`. On any error the previous file is
/// untouched and nothing is left behind, except when only flushing the folder
/// after the rename fails (Io: the new file may not be durable). Symlinks and
/// permissions follow the rules of every save (above). Non-contiguous tensors and tensors on
/// other devices are copied one at a time while writing. Refuses undefined,
/// sparse and quantized tensors, tensors that share memory, the name
/// "__metadata__", and headers over kMaxHeaderSize (Error InvalidArgument /
/// ReservedName / HeaderTooLarge).
void save_file(const NamedTensors& tensors, const std::string& path,
               const std::optional<Metadata>& metadata = std::nullopt,
               const SaveOptions& options = {});

/// The same file as bytes.
std::vector<std::uint8_t> save(const NamedTensors& tensors,
                               const std::optional<Metadata>& metadata = std::nullopt);

}  // namespace safetensors
