// Loading to a device through pinned staging buffers: see upload.hpp.

#include "upload.hpp"

#include <ATen/Parallel.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "detail/staging.hpp"

namespace safetensors::detail {

namespace {

// The device side of the ring over LibTorch: one pinned buffer cut into slots,
// `copy_` with non_blocking from it, one event per slot recorded on the
// device's current stream. A CPU device (tests) copies synchronously.
class TorchStagingDevice final : public StagingDevice {
 public:
  TorchStagingDevice(c10::Device device, const std::vector<Upload>& uploads, const StagingOptions& options)
      : device_(device), uploads_(uploads), chunk_(options.chunk_bytes) {
    auto host = at::TensorOptions().dtype(at::kByte);
    if (device.is_cuda()) host = host.pinned_memory(true);
    ring_ = at::empty({static_cast<std::int64_t>(options.chunk_bytes * options.slots)}, host);
    if (!device.is_cpu()) {
      events_.reserve(options.slots);
      for (std::size_t i = 0; i < options.slots; ++i) events_.emplace_back(device.type());
    }
  }

  void* buffer(std::size_t slot) override { return ring_.data_ptr<std::uint8_t>() + slot * chunk_; }

  void copy_async(std::size_t slot, std::size_t from, std::size_t target, std::uint64_t target_offset,
                  std::size_t size) override {
    const at::Tensor& dst = uploads_[target].dst;
    const auto n = static_cast<std::int64_t>(size);
    at::Tensor to = at::from_blob(static_cast<char*>(dst.data_ptr()) + target_offset, {n},
                                  at::TensorOptions().dtype(at::kByte).device(dst.device()));
    to.copy_(ring_.narrow(0, static_cast<std::int64_t>(slot * chunk_ + from), n), /*non_blocking=*/true);
  }

  void fence(std::size_t slot) override {
    if (events_.empty()) return;
    c10::impl::VirtualGuardImpl impl(device_.type());
    events_[slot].record(impl.getStream(device_));
  }

  void wait(std::size_t slot) override {
    if (events_.empty() || !events_[slot].was_marked_for_recording()) return;
    // c10::Event has no blocking wait on LibTorch 1.13; the copies of one
    // slot take about a millisecond, so polling costs little.
    while (!events_[slot].query()) std::this_thread::yield();
  }

 private:
  c10::Device device_;
  const std::vector<Upload>& uploads_;
  std::size_t chunk_;
  at::Tensor ring_;
  std::vector<c10::Event> events_;
};

}  // namespace

namespace {
std::atomic<bool> stage_cpu_loads{false};
}  // namespace

bool stages_to(const c10::Device& device) {
  return device.is_cuda() || (device.is_cpu() && stage_cpu_loads.load(std::memory_order_relaxed));
}

void stage_cpu_loads_for_tests(bool on) { stage_cpu_loads = on; }

void read_parallel(const Source& source, const std::vector<Read>& reads) {
  std::size_t total = 0;
  for (const Read& r : reads) total += r.n;
  const auto threads = static_cast<std::size_t>(std::max(1, at::get_num_threads()));
  if (threads == 1 || total < (std::size_t{1} << 20)) {
    for (const Read& r : reads)
      if (r.n) source.read(r.offset, r.dst, r.n);
    return;
  }
  // Share k is the bytes [k * total / threads, (k + 1) * total / threads) of
  // the reads laid end to end; `starts` holds where each read begins there.
  std::vector<std::size_t> starts(reads.size());
  std::size_t at = 0;
  for (std::size_t i = 0; i < reads.size(); ++i) {
    starts[i] = at;
    at += reads[i].n;
  }
  at::parallel_for(0, static_cast<std::int64_t>(threads), 1, [&](std::int64_t begin, std::int64_t end) {
    for (auto k = static_cast<std::size_t>(begin); k < static_cast<std::size_t>(end); ++k) {
      const std::size_t from = total / threads * k + std::min(k, total % threads);
      const std::size_t to = from + total / threads + (k < total % threads ? 1 : 0);
      auto i = static_cast<std::size_t>(std::upper_bound(starts.begin(), starts.end(), from) - starts.begin()) - 1;
      for (std::size_t pos = from; pos < to; ++i) {
        const Read& r = reads[i];
        const std::size_t skip = pos - starts[i];
        const std::size_t n = std::min(r.n - skip, to - pos);
        if (n) source.read(r.offset + skip, static_cast<char*>(r.dst) + skip, n);
        pos += n;
      }
    }
  });
}

bool reads_can_run_in_parallel() {
#if AT_PARALLEL_OPENMP
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
#else
  return true;  // LibTorch's own thread pool, called out of line
#endif
}

void upload(const Source& source, const std::vector<Upload>& uploads, const StagingOptions& options) {
  // One ring per device, in the order the devices first appear.
  std::vector<std::pair<c10::Device, std::vector<Upload>>> by_device;
  for (const Upload& u : uploads) {
    TORCH_INTERNAL_ASSERT(u.dst.is_contiguous(), "staged uploads go to contiguous tensors");
    if (u.dst.nbytes() == 0) continue;
    auto it = std::find_if(by_device.begin(), by_device.end(),
                           [&](const auto& group) { return group.first == u.dst.device(); });
    if (it == by_device.end()) it = by_device.insert(by_device.end(), {u.dst.device(), {}});
    it->second.push_back(u);
  }
  // Each read of a chunk is spread over the intra-op threads: one core's
  // copy from the page cache is slower than a PCIe link.
  const StagingRead read = [&](std::uint64_t offset, void* dst, std::size_t n) {
    read_parallel(source, {Read{offset, dst, n}});
  };
  for (const auto& [device, group] : by_device) {
    std::vector<StagedTransfer> transfers;
    transfers.reserve(group.size());
    for (std::size_t i = 0; i < group.size(); ++i)
      transfers.push_back(StagedTransfer{group[i].offset, group[i].dst.nbytes(), i});
    TorchStagingDevice staging(device, group, options);
    stage_transfers(std::move(transfers), read, staging, options);
  }
}

}  // namespace safetensors::detail
