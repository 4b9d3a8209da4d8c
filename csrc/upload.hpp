#pragma once
// Loading to a device through the staging ring (staging.hpp): pinned host
// buffers filled from the file while the device copies earlier ones, with
// LibTorch's asynchronous copies and events. Internal.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "safetensors/source.hpp"
#include "safetensors/staging.hpp"

namespace safetensors::detail {

/// File bytes [offset, offset + dst.nbytes()) into `dst`, a contiguous tensor.
struct Upload {
  std::uint64_t offset = 0;
  at::Tensor dst;
};

/// Whether loads to `device` go through the ring: CUDA, whose copies from
/// pinned memory are asynchronous. Other devices take a plain copy.
bool stages_to(const c10::Device& device);

/// Tests only: while set, CPU loads take the staging path too (a synchronous
/// stand-in for the GPU), so every load path that leads there runs without one.
void stage_cpu_loads_for_tests(bool on);

/// Fills every upload's tensor from `source`: one ring per device, reads on
/// LibTorch's intra-op threads, copies on the device's current stream. The
/// copies have ended when it returns. CPU destinations are allowed (a
/// synchronous stand-in for the device, used by tests).
void upload(const Source& source, const std::vector<Upload>& uploads,
            const StagingOptions& options = {});

/// Reads [offset, offset + n) into dst, large reads split in `piece`-byte
/// parts on LibTorch's intra-op threads.
void read_parallel(const Source& source, std::uint64_t offset, void* dst, std::size_t n,
                   std::size_t piece = std::size_t{8} << 20);

}  // namespace safetensors::detail
