#pragma once
// Reading safetensors files into at::Tensors.
//
//   auto tensors = safetensors::load_file("model.safetensors");        // zero-copy
//   auto gpu = safetensors::load_file("model.safetensors",
//                                     safetensors::LoadOptions().device(torch::kCUDA));
//   safetensors::SafeOpen f("model.safetensors");                       // lazy
//   torch::Tensor w = f.get_tensor("wte.weight");
//   torch::Tensor rows = f.get_slice("wte.weight")({Slice(0, 128)});     // reads 128 rows

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/TensorIndexing.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/arg.h>
#include <torch/ordered_dict.h>

#include "safetensors/error.hpp"
#include "safetensors/header.hpp"
#include "safetensors/source.hpp"
#include "safetensors/staging.hpp"

namespace safetensors {

/// Tensors by name, in file order.
using TensorDict = torch::OrderedDict<std::string, at::Tensor>;

/// Options for every read, in LibTorch's chainable style:
/// `LoadOptions().device(torch::kCUDA).dtype(torch::kHalf)`.
struct LoadOptions {
  /// Where the tensors go. CPU tensors are views of the mapping (zero-copy)
  /// unless `copy` is set or the backend is Pread; other devices get a copy.
  /// CUDA tensors are filled through a ring of pinned staging buffers (see
  /// `staging`), reads of the file overlapped with asynchronous host-to-device
  /// copies on the device's current stream; the copies have ended when the
  /// load returns.
  TORCH_ARG(c10::Device, device) = c10::Device(c10::kCPU);
  /// Converts floating-point tensors (not complex ones) to this dtype after loading;
  /// integer and bool tensors keep theirs. Unset: every tensor keeps the file's dtype.
  TORCH_ARG(std::optional<c10::ScalarType>, dtype) = std::nullopt;
  /// How files are read (SafeOpen, load_file). Unset: Mmap, or Pread when
  /// `copy` is set, which reads as fast and maps no file pages into the
  /// process, so an eager load adds only the tensors to its resident memory.
  TORCH_ARG(std::optional<Backend>, backend) = std::nullopt;
  /// CPU tensors own their memory instead of viewing the mapping.
  TORCH_ARG(bool, copy) = false;
  /// Owned CPU tensors (copy mode, the Pread backend, slices) of 2 MiB or
  /// more get memory of their own, mapped on a 2 MiB boundary and advised to
  /// use transparent huge pages (Linux MADV_HUGEPAGE): fresh memory is then
  /// faulted in and zeroed 2 MiB at a time instead of 4 KiB, which is most of
  /// an eager load's cost once the process has freed such memory before (GPT-2
  /// small: 90 instead of 150 ms). Off by default: the first huge pages a
  /// process touches can cost more than they save. In virtual machines that
  /// hand freed memory back to the host (free page reporting) the host must
  /// fault those pages in again (250-1200 ms instead of 150 ms for that load),
  /// and where `transparent_hugepage/defrag` is `madvise`, the kernel may
  /// compact memory first. Their storage stays resizable. Off: LibTorch's
  /// CPU allocator (at::empty).
  TORCH_ARG(bool, huge_pages) = false;
  /// The pinned ring of loads to a GPU: `slots` buffers of `chunk_bytes`
  /// (default 4 x 16 MiB, kept afterwards by LibTorch's pinned-memory cache).
  /// Larger chunks mean fewer copies; more slots, more copies in flight.
  TORCH_ARG(StagingOptions, staging) = {};
  /// A tensor whose dtype the LibTorch in use lacks (F8 on 1.13, F6 anywhere)
  /// is an UnsupportedDtype error by default. With this set it is returned as
  /// its raw little-endian bytes: a uint8 tensor of shape `shape + [bits/8]`
  /// (without the extra dimension for 8-bit dtypes; sub-byte dtypes pack the
  /// last dimension: `[..., last*bits/8]`). SafeOpen::info() still tells the dtype.
  TORCH_ARG(bool, unsupported_as_bytes) = false;
};

class TensorSlice;

/// A lazily read file: opening reads and validates the header only; tensors are
/// made on request. Copies share one open file; tensors keep it alive, so they
/// outlive every handle. Safe to use from several threads at once.
class SafeOpen {
 public:
  explicit SafeOpen(const std::string& path, LoadOptions options = {});
  /// Over an already opened source (a file, or copy_buffer()).
  explicit SafeOpen(std::shared_ptr<Source> source, LoadOptions options = {});

  // The accessors that return references point into state the handle shares
  // with its copies, slices and tensors. Called on a temporary handle they
  // return copies instead, so that `const TensorInfo& i = SafeOpen(p).info("x");`
  // binds to a value that lives as long as `i` rather than dangling.

  /// The file's path ("" for buffers).
  const std::string& path() const& noexcept;
  std::string path() const&& { return static_cast<const SafeOpen&>(*this).path(); }
  const LoadOptions& options() const& noexcept;
  LoadOptions options() const&& { return static_cast<const SafeOpen&>(*this).options(); }
  const Header& header() const& noexcept;
  Header header() const&& { return static_cast<const SafeOpen&>(*this).header(); }
  /// Tensor names in file (data offset) order.
  std::vector<std::string> keys() const;
  std::size_t size() const noexcept;
  bool contains(const std::string& name) const;
  /// Dtype, shape and byte range. Throws TensorNotFound.
  const TensorInfo& info(const std::string& name) const&;
  TensorInfo info(const std::string& name) const&& {
    return static_cast<const SafeOpen&>(*this).info(name);
  }
  /// The `__metadata__` object (empty when absent).
  const Metadata& metadata() const& noexcept;
  Metadata metadata() const&& { return static_cast<const SafeOpen&>(*this).metadata(); }

  /// One tensor. Throws TensorNotFound, UnsupportedDtype.
  at::Tensor get_tensor(const std::string& name) const;
  /// Reads one tensor into `dst`, which must have its shape (no broadcasting:
  /// InvalidArgument otherwise). A contiguous CPU `dst` of the tensor's dtype
  /// is filled straight from the file, without a second buffer (in parallel
  /// chunks when large); a CUDA `dst` through pinned staging buffers (see
  /// LoadOptions::device), converted on the GPU when its dtype differs; any
  /// other `dst` (another layout or device, a CPU dtype conversion) gets
  /// `dst.copy_(get_tensor(name))`. A `dst` that requires grad (a parameter,
  /// or a tensor computed from one) is written only with grad mode off (torch::NoGradGuard, as load_state_dict
  /// reads): with it on, InvalidArgument and nothing written, whatever the
  /// path. The write is never recorded by autograd. An I/O error part way
  /// through leaves `dst` partly written.
  void read_into(const std::string& name, const at::Tensor& dst) const;
  /// Several read_into at once: every destination is checked before anything
  /// is written, and GPU destinations share one pass through pinned staging
  /// buffers (reads of the file overlapped with host-to-device copies; a
  /// dtype that differs is converted on the GPU), so many small tensors cost
  /// a few large copies. Destinations that share memory are written one after
  /// another in the order given, as separate calls would, whatever their paths.
  void read_into(const std::vector<std::pair<std::string, at::Tensor>>& targets) const;
  /// A handle that reads parts of one tensor.
  TensorSlice get_slice(const std::string& name) const;
  /// Every tensor, in file order.
  TensorDict tensors() const;

  struct State;  // shared by copies, slices and tensors

 private:
  std::shared_ptr<const State> state_;
};

/// Part of one tensor, read without reading the rest: indices as in
/// `at::Tensor::index`, i.e. integers (negative counts from the end),
/// `Slice(start, stop, step)` (clamped like Python slices, step > 0),
/// `Ellipsis` and `None`. Missing trailing dimensions are taken whole.
/// Integers out of range are InvalidSlice errors.
class TensorSlice {
 public:
  /// Points into state the slice shares with its file; a copy on a temporary slice.
  const TensorInfo& info() const& noexcept { return *info_; }
  TensorInfo info() const&& { return *info_; }
  Dtype dtype() const noexcept { return info_->dtype; }
  std::vector<std::int64_t> shape() const;

  /// `slice({Slice(0, 2), 1})`: the selected elements as a new tensor.
  at::Tensor operator()(at::ArrayRef<at::indexing::TensorIndex> indices) const;
  at::Tensor operator()(std::initializer_list<at::indexing::TensorIndex> indices) const {
    return (*this)(at::ArrayRef<at::indexing::TensorIndex>(indices));
  }
  /// The whole tensor (a copy; see SafeOpen::get_tensor for a view).
  at::Tensor all() const { return (*this)(at::ArrayRef<at::indexing::TensorIndex>{}); }

 private:
  friend class SafeOpen;
  TensorSlice(std::shared_ptr<const SafeOpen::State> state, const TensorInfo* info)
      : state_(std::move(state)), info_(info) {}
  std::shared_ptr<const SafeOpen::State> state_;
  const TensorInfo* info_;
};

/// Loads every tensor of a file, in file order.
TensorDict load_file(const std::string& path, const LoadOptions& options = {});

/// Loads every tensor of an in-memory file. The tensors own copies of their
/// bytes, so `data` may be freed afterwards.
TensorDict load(const void* data, std::size_t size, const LoadOptions& options = {});

/// Reads a file's metadata only.
Metadata load_metadata(const std::string& path);

}  // namespace safetensors
