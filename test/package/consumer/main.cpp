// Saves and loads one tensor through the public umbrella header; the opt-in
// distributed header compiles beside it.
#include <safetensors/distributed.hpp>
#include <safetensors/safetensors.hpp>

#include <ATen/ATen.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  at::Tensor w = at::arange(12, at::kFloat).reshape({3, 4});
  safetensors::save_file({{"w", w}}, argv[1], safetensors::Metadata{{"format", "pt"}});
  safetensors::SafeOpen f(argv[1]);
  if (!at::equal(f.get_tensor("w"), w) || f.metadata().at("format") != "pt") return 1;
  std::printf("consumer ok (safetensors-torch %s)\n", SAFETENSORS_TORCH_VERSION);
  return 0;
}
