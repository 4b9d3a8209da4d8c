// Fuzz target: the migration readers, bytes to tensors without executing
// anything. The input goes to the pickle interpreter as it is (several pickles
// back to back, as the legacy format stores them), then, as a file, through
// read_checkpoint with both backends: the zip reader, the pickle (torch.save's
// and TorchScript's), the storages and every tensor's view of them, each
// tensor read in full. Only safetensors::Error may come out. tools/fuzz.sh
// runs it with -rss_limit_mb and -malloc_limit_mb, so that an input whose
// reading takes memory out of proportion to its size is a finding too.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "pickle/unpickler.hpp"
#include "memfile.hpp"
#include "safetensors/error.hpp"
#include "safetensors/migrate.hpp"

namespace st = safetensors;

namespace {

volatile std::uint64_t sink;

// Reads every byte of every tensor: a view outside its storage would be an
// ASan report here.
void read_all(const st::Checkpoint& checkpoint) {
  std::uint64_t sum = 0;
  for (const auto& item : checkpoint.tensors) {
    const at::Tensor t = item.value().contiguous();
    const auto* p = static_cast<const std::uint8_t*>(t.data_ptr());
    for (std::size_t i = 0; i < t.nbytes(); ++i) sum += p[i];
  }
  sink = sum;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::size_t offset = 0;
  for (int i = 0; i < 4 && offset < size; ++i) {
    try {
      const st::pickle::Pickle p = st::pickle::unpickle(bytes, offset, "fuzz");
      if (p.root) sink = st::pickle::describe(*p.root).size();
    } catch (const st::Error&) {
      break;
    }
  }
  const MemFile file(data, size);
  for (const st::Backend backend : {st::Backend::Mmap, st::Backend::Pread}) {
    try {
      if (st::detect_format(file.path(), backend) == st::CheckpointFormat::Unknown) break;
      // The mmap pass also writes the JSON text of the non-tensor values, as convert does.
      read_all(st::read_checkpoint(
          file.path(), st::CheckpointOptions().backend(backend).non_tensors_as_json(backend == st::Backend::Mmap)));
    } catch (const st::Error&) {
    }
  }
  return 0;
}
