#pragma once
// An AOTInductor package's weights from safetensors: the constants a package
// compiled by torch._inductor.aoti_compile_and_package holds, replaced by the
// tensors of a file matched by their original names (`fc1.weight`).
//
//   torch::inductor::AOTIModelPackageLoader package("model.pt2");
//   safetensors::load_constants(package, "model.safetensors");
//   auto out = package.run({x});
//
// Declared only where the library was built with AOTInductor's package loader
// (LibTorch 2.6 and later have torch/csrc/inductor/aoti_package/
// model_package_loader.h; 1.13 does not): its CMake target then defines
// SAFETENSORS_TORCH_HAS_AOTI for its users, and this header is empty
// otherwise. The umbrella header includes it in that case.

#ifdef SAFETENSORS_TORCH_HAS_AOTI

#include <string>

#include "safetensors/load.hpp"
#include "safetensors/module.hpp"

namespace torch::inductor {
class AOTIModelPackageLoader;
}  // namespace torch::inductor

namespace safetensors {

class ShardedOpen;

/// Fills the constants of an AOTInductor package from a safetensors file, a
/// sharded checkpoint's index, or the folder holding either, as
/// load_state_dict fills a module: the package's constants are matched by the
/// names the model had (its state dict's names), after the renaming of
/// `options`; shapes must equal the package's, dtypes too unless
/// `convert_dtype` (floating point only). Tensor-parallel parts and ZeroCopy
/// (CPU constants become views of the mapping) work as for modules.
///
/// Only what the package kept as constants can be filled. AOTInductor folds
/// some of a model's tensors into its generated code (LibTorch 2.6: every 1-D
/// tensor of at most 8 elements and every 0-d one, unless compiled with
/// `torch._inductor.config.always_keep_tensor_constants` or
/// `aot_inductor.use_runtime_constant_folding`): a file tensor with such a
/// name is reported as unexpected, and strict loads refuse it. Constants the
/// package computes from others (runtime constant folding) are not filled:
/// they are computed again from the new ones.
///
/// The whole set is written into the package's inactive constant buffer and
/// swapped in once complete, so that run() calls, which go on during the
/// load, see the old weights until the swap and the new ones after, never a
/// mix; a load that fails (a missing or mismatched tensor, an I/O error)
/// leaves the active weights as they were. Since the buffer replaces the
/// active one whole, every constant must be filled: a missing or mismatched
/// one is an error even when not strict (StateDictMismatch), with one
/// exception below. Constants on a GPU are read through the pinned staging
/// ring (LoadOptions::staging), then copied into the package's buffer.
///
/// LibTorch 2.6's CPU runtime cannot refill a buffer that already holds
/// constants: the first load of a CPU package takes the inactive buffer and
/// swaps, and later loads write the active constants that it installed in
/// place, after reading and checking every tensor (a failed load still
/// changes nothing). During that copy, run() calls in flight may see part of
/// the new weights: serialise them with the load. Such a load may also leave
/// constants missing or mismatched when not strict (they keep their values).
/// The package's constants must then be changed only through these functions.
/// One load at a time per package: concurrent loads into one package race.
///
/// Throws StateDictMismatch when strict and anything is off, and InvalidArgument
/// when the package's constant table cannot be read (a package not made by
/// LibTorch 2.6's generator).
LoadReport load_constants(torch::inductor::AOTIModelPackageLoader& package, const std::string& path,
                          const StateDictLoadOptions& options = {});
LoadReport load_constants(torch::inductor::AOTIModelPackageLoader& package, const SafeOpen& file,
                          const StateDictLoadOptions& options = {});
LoadReport load_constants(torch::inductor::AOTIModelPackageLoader& package, const ShardedOpen& checkpoint,
                          const StateDictLoadOptions& options = {});

}  // namespace safetensors

#endif  // SAFETENSORS_TORCH_HAS_AOTI
