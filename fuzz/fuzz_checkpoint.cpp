// Fuzz target: the migration readers, bytes to tensors without executing
// anything. The input goes to the pickle interpreter as it is (several pickles
// back to back, as the legacy format stores them), then, as a file, through
// read_checkpoint when it is a Python torch.save file: the zip reader, the
// pickle, the storages and every tensor's view of them, each tensor read in
// full. Only safetensors::Error may come out; C++ torch::save archives go to
// LibTorch's own reader, which is not ours to fuzz.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "../csrc/pickle/unpickler.hpp"
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
  try {
    const st::CheckpointFormat format = st::detect_format(file.path());
    if (format == st::CheckpointFormat::TorchZip || format == st::CheckpointFormat::TorchLegacy)
      read_all(st::read_checkpoint(file.path()));
  } catch (const st::Error&) {
  }
  return 0;
}
