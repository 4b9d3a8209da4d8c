// `diff A B [--key-a K] [--key-b K] [--json]`: compares two checkpoints of any
// supported format (sharded sets included) tensor by tensor, so that a
// conversion can be shown to lose nothing.

#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "progress.hpp"
#include "safetensors/error.hpp"
#include "safetensors/migrate.hpp"

namespace safetensors::cli {
namespace {

void print_json(const std::string& a, const std::string& b, const DiffReport& report) {
  nlohmann::ordered_json different = nlohmann::ordered_json::array();
  for (const TensorDifference& d : report.different) different.push_back({{"name", d.name}, {"detail", d.detail}});
  emit_json({{"a", a},
             {"b", b},
             {"ok", true},
             {"equal", report.equal()},
             {"identical", report.identical},
             {"different", std::move(different)},
             {"only_in_a", report.only_in_a},
             {"only_in_b", report.only_in_b}});
}

}  // namespace

int diff(const std::string& a, const std::string& b, const std::vector<std::string>& key_a,
         const std::vector<std::string>& key_b, Backend backend, bool json) {
  DiffReport report;
  std::string reading = a;
  try {
    // A set's tensors are views of its shards.
    const Checkpoint ca = read_checkpoint(a, CheckpointOptions().key(key_a).backend(backend));
    reading = b;
    const Checkpoint cb = read_checkpoint(b, CheckpointOptions().key(key_b).backend(backend));
    ProgressLine progress("compared");  // ended before the result is printed
    report = diff_checkpoints(ca, cb, progress.callback());
  } catch (...) {
    std::cerr << error_line(reading) << '\n';
    if (json) emit_json(json_failure({{"a", a}, {"b", b}, {"file", error_file(reading)}}));
    return kExitTrouble;
  }
  if (json) {
    print_json(a, b, report);
  } else {
    for (const std::string& name : report.only_in_a) std::cout << "only in A: " << printable(name) << '\n';
    for (const std::string& name : report.only_in_b) std::cout << "only in B: " << printable(name) << '\n';
    for (const TensorDifference& d : report.different)
      std::cout << "differs: " << printable(d.name) << ": " << printable(d.detail) << '\n';
    std::cout << (report.equal() ? "equal: " : "different: ") << report.identical << " identical, "
              << report.different.size() << " different, " << report.only_in_a.size() << " only in A, "
              << report.only_in_b.size() << " only in B (A: " << printable(a) << ", B: " << printable(b) << ")\n";
  }
  return report.equal() ? kExitOk : kExitDifferent;
}

}  // namespace safetensors::cli
