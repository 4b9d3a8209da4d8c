#pragma once
// The size of the ring of host buffers that loads to a GPU stage through
// (LoadOptions::staging): reads of the file fill one buffer while the device
// copies earlier ones out. Torch-free.
#include <cstddef>

namespace safetensors {

/// Size of the ring: `slots` buffers of `chunk_bytes` each.
struct StagingOptions {
  std::size_t chunk_bytes = std::size_t{16} << 20;
  std::size_t slots = 4;
};

}  // namespace safetensors
