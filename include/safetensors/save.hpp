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

struct SaveOptions {
  /// Flush the file and its folder to disk before returning (save_file).
  TORCH_ARG(bool, fsync) = true;
  /// Called after each tensor's bytes are written, in file order, with the
  /// tensor bytes written so far and the total: `done` grows and the last call
  /// has `done == total` (then the file is flushed and renamed into place).
  /// An exception thrown from it aborts the save, leaving no file.
  TORCH_ARG(std::function<void(std::uint64_t done, std::uint64_t total)>, progress) = nullptr;
};

/// Writes a safetensors file crash-safely: into a temporary file in the same
/// folder, flushed, then renamed over `path`. On any error the previous file is
/// untouched and nothing is left behind, except when only flushing the folder
/// after the rename fails (Io: the new file may not be durable). A symlink at
/// `path` is replaced, its target left as it was; permissions follow
/// AtomicFile's rule (a replaced file's bits, never setuid, setgid or sticky;
/// 0666 & ~umask for a new one). Non-contiguous tensors and tensors on
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
