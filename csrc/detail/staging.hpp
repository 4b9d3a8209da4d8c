#pragma once
// The copy pipeline that moves file bytes to a device: a ring of host staging
// buffers, filled by reads while the device copies earlier buffers out of
// them. Torch-free: the device side is an interface (LibTorch's CUDA copies in
// the library, CPU stand-ins in tests), so the ordering logic is exercised
// without a GPU. Internal; its size is the public StagingOptions.
//
//   read chunk 0 -> slot 0, copy slot 0 out (async)
//   read chunk 1 -> slot 1, copy slot 1 out (async)    <- read overlaps copy 0
//   ...
//   wait slot 0's copies, read chunk K -> slot 0, ...   <- a slot is reused only
//                                                         after its copies end
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "safetensors/staging.hpp"

namespace safetensors::detail {

/// One file range and where it goes: `target` is the caller's index of a
/// destination buffer, which receives the range's bytes at offset 0.
struct StagedTransfer {
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::size_t target = 0;
};

/// The device side of the pipeline.
class StagingDevice {
 public:
  virtual ~StagingDevice() = default;
  /// Host memory of slot `slot` (`chunk_bytes` long), pinned where the
  /// device's copies need it to be asynchronous.
  virtual void* buffer(std::size_t slot) = 0;
  /// Starts copying `size` bytes at `from` in slot `slot` to offset
  /// `target_offset` of destination `target`. May return before the copy ends.
  virtual void copy_async(std::size_t slot, std::size_t from, std::size_t target,
                          std::uint64_t target_offset, std::size_t size) = 0;
  /// Marks the end of the copies started from `slot` since its last wait.
  virtual void fence(std::size_t slot) = 0;
  /// Returns once every copy out of `slot` before its last fence has ended.
  /// Called on every used slot before stage_transfers returns or throws.
  virtual void wait(std::size_t slot) = 0;
};

/// The largest gap between two transfers that one read spans.
inline constexpr std::uint64_t kStagingMaxGap = 64 * 1024;

/// Reads [offset, offset + size) of the file into `dst`.
using StagingRead = std::function<void(std::uint64_t offset, void* dst, std::size_t size)>;

/// Moves every transfer's bytes to its destination through `device`'s ring.
/// Transfers are read in file order; ranges at most kStagingMaxGap bytes apart
/// share a read (one call instead of many for small tensors) and no read is
/// larger than a chunk. Returns after the last
/// copy ended. When a read or a copy throws, the copies already started are
/// waited for (a device never reads a buffer the caller may free) and the
/// exception propagates. Overlapping transfers, or a chunk of 0 bytes or no
/// slots, are an Error(InvalidArgument).
void stage_transfers(std::vector<StagedTransfer> transfers, const StagingRead& read,
                     StagingDevice& device, const StagingOptions& options = {});

}  // namespace safetensors::detail
