// Plans a file with the torch-free writer, parses it back, parses a file that
// safetensors::torch wrote, and refuses a broken header, through the headers of
// the core alone.
#include <safetensors/dtype.hpp>
#include <safetensors/error.hpp>
#include <safetensors/header.hpp>
#include <safetensors/source.hpp>
#include <safetensors/tensor_parallel.hpp>
#include <safetensors/version.hpp>
#include <safetensors/writer.hpp>

#if defined(C10_MACROS_MACROS_H_) || defined(TORCH_ARG)
#error "a header of the torch-free core included LibTorch"
#endif

#include <cstdio>
#include <string>

namespace st = safetensors;

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const st::WritePlan plan = st::plan_write({{"w", st::Dtype::F32, {3, 4}}}, st::Metadata{{"format", "pt"}});
  const std::string file = plan.header + std::string(plan.data_size, '\0');
  const st::Header planned = st::parse_header(file.data(), file.size(), "planned");
  if (planned.tensors().size() != 1 || planned.tensors()[0].nbytes() != 48) return 1;

  // What the torch consumer saved: w, F32 [3, 4], and the metadata format=pt.
  const auto source = st::open_file(argv[1], st::Backend::Mmap);
  const st::Header saved = st::parse_header(source->data(), source->size(), source->path());
  const st::TensorInfo* w = saved.find("w");
  if (!w || w->dtype != st::Dtype::F32 || w->shape != std::vector<std::uint64_t>{3, 4} ||
      saved.metadata().at("format") != "pt")
    return 1;

  try {
    st::parse_header(file.data(), 7, "short");
    return 1;
  } catch (const st::Error& e) {
    if (e.code() != st::ErrorCode::HeaderTooSmall) return 1;
  }
  std::printf("format consumer ok (safetensors-torch %s)\n", SAFETENSORS_TORCH_VERSION);
  return 0;
}
