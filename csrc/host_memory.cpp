// Why eager loads map their own memory: a load into owned tensors writes
// every byte of fresh memory, and on Linux the kernel faults that memory in
// and zeroes it a 4 KiB page at a time; for a 500 MB model those 120,000
// faults cost more than copying the bytes. Memory advised with MADV_HUGEPAGE
// (transparent huge pages, which most distributions enable on request) takes
// one fault per 2 MiB. glibc's malloc cannot be asked for that per
// allocation, so large tensors get a mapping of their own, aligned so that
// whole huge pages fit in it.

#include "host_memory.hpp"

#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/TensorImpl.h>

#include <memory>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace safetensors::detail {

namespace {

at::Tensor allocator_empty(const std::vector<std::int64_t>& shape, c10::ScalarType dtype) {
  return at::empty(shape, at::TensorOptions().dtype(dtype));
}

#if defined(__linux__)
struct Region {
  void* base;
  std::size_t length;
};

void unmap(void* context) {
  std::unique_ptr<Region> region(static_cast<Region*>(context));
  ::munmap(region->base, region->length);
}

// `length` bytes (a multiple of the page size) starting on a huge-page
// boundary: an over-sized mapping with its ends cut off. nullptr on failure.
void* map_aligned(std::size_t length) {
  if (length > SIZE_MAX - kHugePageBytes) return nullptr;
  const std::size_t mapped = length + kHugePageBytes;
  void* p = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  const auto begin = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t aligned = (begin + kHugePageBytes - 1) & ~std::uintptr_t{kHugePageBytes - 1};
  const std::uintptr_t end = begin + mapped;
  if (aligned > begin) ::munmap(p, aligned - begin);
  if (end > aligned + length) ::munmap(reinterpret_cast<void*>(aligned + length), end - (aligned + length));
  return reinterpret_cast<void*>(aligned);
}
#endif

}  // namespace

at::Tensor empty_cpu(const std::vector<std::int64_t>& shape, c10::ScalarType dtype, bool huge_pages) {
#if defined(__linux__)
  if (!huge_pages) return allocator_empty(shape, dtype);
  // Shapes come from validated headers, whose byte sizes fit in size_t.
  std::size_t nbytes = c10::elementSize(dtype);
  for (std::int64_t d : shape) nbytes *= static_cast<std::size_t>(d);
  if (nbytes < kHugePageBytes) return allocator_empty(shape, dtype);
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  if (nbytes > SIZE_MAX - page) return allocator_empty(shape, dtype);
  const std::size_t length = (nbytes + page - 1) / page * page;
  auto region = std::make_unique<Region>(Region{map_aligned(length), length});
  void* p = region->base;
  // Out of address space or memory: LibTorch's allocator tries, and reports.
  if (p == nullptr) return allocator_empty(shape, dtype);
  // Advice only: refused where the kernel has no transparent huge pages.
  ::madvise(p, length, MADV_HUGEPAGE);
  c10::DataPtr data(p, region.get(), &unmap, c10::Device(c10::kCPU));
  region.release();  // the DataPtr owns it now
  // Resizable like at::empty's storage: a resize_ allocates through the CPU
  // allocator and unmaps this region.
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), c10::GetCPUAllocator(),
                       /*resizable=*/true);
  at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(
      std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU), c10::scalarTypeToTypeMeta(dtype));
  t.unsafeGetTensorImpl()->set_sizes_contiguous(shape);
  return t;
#else
  (void)huge_pages;
  return allocator_empty(shape, dtype);
#endif
}

}  // namespace safetensors::detail
