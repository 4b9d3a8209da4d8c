// `diff A B [--key-a K] [--key-b K]`: compares two checkpoints of any supported
// format tensor by tensor, so that a conversion can be shown to lose nothing.

#include <iostream>

#include "commands.hpp"
#include "safetensors/error.hpp"
#include "safetensors/migrate.hpp"

namespace safetensors::cli {

int diff(const std::string& a, const std::string& b, const std::vector<std::string>& key_a,
         const std::vector<std::string>& key_b, Backend backend) {
  DiffReport report;
  try {
    report = diff_checkpoints(a, b, CheckpointOptions().key(key_a).backend(backend),
                              CheckpointOptions().key(key_b).backend(backend));
  } catch (...) {
    std::cerr << error_line(a) << '\n';
    return kExitTrouble;
  }
  for (const std::string& name : report.only_in_a) std::cout << "only in A: " << printable(name) << '\n';
  for (const std::string& name : report.only_in_b) std::cout << "only in B: " << printable(name) << '\n';
  for (const TensorDifference& d : report.different)
    std::cout << "differs: " << printable(d.name) << ": " << printable(d.detail) << '\n';
  std::cout << (report.equal() ? "equal: " : "different: ") << report.identical << " identical, "
            << report.different.size() << " different, " << report.only_in_a.size() << " only in A, "
            << report.only_in_b.size() << " only in B\n";
  return report.equal() ? kExitOk : kExitDifferent;
}

}  // namespace safetensors::cli
