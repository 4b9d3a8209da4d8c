# Writes OUTPUT, a C++ file that compiles every ```cpp block of INPUT (the
# README), each in a scope of its own inside one function whose parameters
# are the names the snippets use without declaring them. `#include` lines are
# hoisted to the top. Run at build time: cmake -DINPUT=... -DOUTPUT=... -P this.
file(READ "${INPUT}" text)
# CMake lists split at semicolons: carry them through as a placeholder.
string(REPLACE ";" "@SEMICOLON@" text "${text}")
# AOTInductor's loader exists on LibTorch 2.x only: a snippet using it sits
# under `#if SAFETENSORS_TORCH_HAS_AOTI`, and its header is included here.
set(includes "#include <iostream>\n#include <torch/torch.h>\n#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>\n#ifdef SAFETENSORS_TORCH_HAS_AOTI\n#include <torch/csrc/inductor/aoti_package/model_package_loader.h>\n#endif\n")
set(body "")
string(REGEX MATCHALL "```cpp\n[^`]*```" blocks "${text}")
foreach(block IN LISTS blocks)
  string(REGEX REPLACE "^```cpp\n" "" block "${block}")
  string(REGEX REPLACE "```$" "" block "${block}")
  string(REGEX MATCHALL "#include [^\n]*\n" block_includes "${block}")
  foreach(line IN LISTS block_includes)
    string(REPLACE "@SEMICOLON@" ";" line "${line}")
    string(APPEND includes "${line}")
  endforeach()
  string(REGEX REPLACE "#include [^\n]*\n" "" block "${block}")
  string(REPLACE "@SEMICOLON@" ";" block "${block}")
  string(REPLACE "namespace st = safetensors;\n" "" block "${block}")
  string(APPEND body "  {\n${block}  }\n")
endforeach()
file(WRITE "${OUTPUT}.tmp" "// Generated from ${INPUT}: every C++ snippet, compiled, never run.
${includes}
namespace st = safetensors;

void readme_snippets(std::shared_ptr<torch::nn::Module> model, torch::Tensor w, torch::Tensor b,
                     std::vector<std::uint8_t> buffer,
                     c10::intrusive_ptr<c10d::ProcessGroup> process_group, int rank,
                     int world_size, torch::optim::Optimizer& optimizer, std::int64_t step,
                     std::int64_t epoch) {
${body}}

int main() { return 0; }
")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
