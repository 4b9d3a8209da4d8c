#pragma once
// safetensors-torch: the safetensors format as LibTorch's checkpoint format.
//
// Every public header but one. Tensor-parallel checkpoints on torch.distributed
// are opt-in: include "safetensors/distributed.hpp" for them, which pulls in
// c10d's headers (and make_communicator where LibTorch has them). The
// AOTInductor functions (aoti.hpp) are declared where the library has them.

#include "safetensors/aoti.hpp"  // empty unless SAFETENSORS_TORCH_HAS_AOTI
#include "safetensors/dtype.hpp"
#include "safetensors/error.hpp"
#include "safetensors/header.hpp"
#include "safetensors/jit_module.hpp"
#include "safetensors/load.hpp"
#include "safetensors/migrate.hpp"
#include "safetensors/module.hpp"
#include "safetensors/optimizer.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "safetensors/source.hpp"
#include "safetensors/staging.hpp"
#include "safetensors/tensor_parallel.hpp"
#include "safetensors/torch_dtype.hpp"
#include "safetensors/training.hpp"
#include "safetensors/transform.hpp"
#include "safetensors/version.hpp"
#include "safetensors/writer.hpp"
