#pragma once
// Loading to a device through the staging ring (detail/staging.hpp): pinned host
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

/// While alive, CPU loads take the path of GPU loads (the staging ring).
class StageCpuLoads {
 public:
  StageCpuLoads() { stage_cpu_loads_for_tests(true); }
  ~StageCpuLoads() { stage_cpu_loads_for_tests(false); }
  StageCpuLoads(const StageCpuLoads&) = delete;
  StageCpuLoads& operator=(const StageCpuLoads&) = delete;
};

/// Fills every upload's tensor from `source`: one ring per device, reads on
/// LibTorch's intra-op threads, copies on the device's current stream. The
/// copies have ended when it returns. CPU destinations are allowed (a
/// synchronous stand-in for the device, used by tests).
void upload(const Source& source, const std::vector<Upload>& uploads,
            const StagingOptions& options = {});

/// File bytes [offset, offset + n) to `dst`.
struct Read {
  std::uint64_t offset = 0;
  void* dst = nullptr;
  std::size_t n = 0;
};

/// Every read, on LibTorch's intra-op threads: the reads' bytes, taken end to
/// end, are cut into one equal share per thread, whatever the sizes of the
/// reads (a load's tensors range from bytes to hundreds of MB). Into fresh
/// memory most of the time goes to page faults, which then run in parallel
/// too. Below 1 MiB in all, or with one thread, the reads run in order on
/// the calling thread. Destinations must not overlap.
void read_parallel(const Source& source, const std::vector<Read>& reads);

/// Whether read_parallel can use more than one thread in this build: with
/// LibTorch on OpenMP, only when this library was compiled with OpenMP.
bool reads_can_run_in_parallel();

}  // namespace safetensors::detail
