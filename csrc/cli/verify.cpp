// `verify FILE...`: full validation, then every tensor read through the torch
// path, one line per file.

#include <iostream>

#include "commands.hpp"
#include "safetensors/load.hpp"

namespace safetensors::cli {
namespace {

// Loads every tensor of one file and returns "N tensors, B bytes"; throws on
// the first problem. Pread, not mmap: a file truncated while it is read then
// fails with an error instead of a SIGBUS. Raw bytes for dtypes the LibTorch
// in use lacks, so that such files (F8 on 1.13) still verify.
std::string verify_file(const std::string& path) {
  SafeOpen file(path, LoadOptions().backend(Backend::Pread).unsupported_as_bytes(true));
  for (const TensorInfo& info : file.header().tensors()) (void)file.get_tensor(info.name);
  return std::to_string(file.size()) + " tensors, " + std::to_string(file.header().data_size()) +
         " bytes";
}

}  // namespace

int verify(const std::vector<std::string>& paths) {
  int status = kExitOk;
  for (const std::string& path : paths) {
    try {
      const std::string summary = verify_file(path);
      std::cout << printable(path) << ": ok (" << summary << ")\n";
    } catch (...) {
      std::cout << error_line(path) << '\n';
      status = kExitInvalid;
    }
  }
  return status;
}

}  // namespace safetensors::cli
