// `verify PATH... [--json]`: full validation of each file or sharded set (its
// index and every shard), then every tensor read through the torch path.

#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "progress.hpp"
#include "safetensors/load.hpp"

namespace safetensors::cli {
namespace {

struct Verified {
  std::size_t shards = 0;  ///< 0 for a single file
  std::size_t tensors = 0;
  std::uint64_t bytes = 0;
};

// Loads every tensor of one file or set; throws on the first problem. Pread,
// not mmap: a file truncated while it is read then fails with an error
// instead of a SIGBUS. Raw bytes for dtypes the LibTorch in use lacks, so that
// such files (F8 on 1.13) still verify. A set's index is checked against its
// shards by ShardedOpen: every listed tensor in its shard, no shard holding
// others, every shard from one save.
Verified verify_one(const std::string& path) {
  const LoadOptions options = LoadOptions().backend(Backend::Pread).unsupported_as_bytes(true);
  const ShardedOpen set = is_set_path(path) ? ShardedOpen(path, options) : ShardedOpen(SafeOpen(path, options));
  Verified v;
  if (set.index()) v.shards = set.shards().size();
  std::uint64_t total = 0, done = 0;
  for (const SafeOpen& shard : set.shards()) total += shard.header().data_size();
  ProgressLine progress("verified");  // ended before the file's line is printed
  for (const SafeOpen& shard : set.shards()) {
    for (const TensorInfo& info : shard.header().tensors()) {
      (void)shard.get_tensor(info.name);
      progress.update(done += info.end - info.begin, total);
    }
    v.tensors += shard.size();
    v.bytes += shard.header().data_size();
  }
  return v;
}

std::string summary(const Verified& v) {
  return (v.shards ? std::to_string(v.shards) + " shards, " : "") + std::to_string(v.tensors) + " tensors, " +
         std::to_string(v.bytes) + " bytes";
}

}  // namespace

int verify(const std::vector<std::string>& paths, bool json) {
  int status = kExitOk;
  nlohmann::ordered_json files = nlohmann::ordered_json::array();
  for (const std::string& path : paths) {
    try {
      const Verified v = verify_one(path);
      if (json) {
        files.push_back({{"file", path}, {"ok", true}, {"shards", v.shards}, {"tensors", v.tensors},
                         {"bytes", v.bytes}});
      } else {
        std::cout << printable(path) << ": ok (" << summary(v) << ")\n";
      }
    } catch (...) {
      status = std::max(status, failure_status());
      if (json) {
        files.push_back(json_failure({{"file", path}}));
      } else {
        std::cout << error_line(path) << '\n';
      }
    }
  }
  if (json) {
    emit_json({{"ok", status == kExitOk}, {"files", std::move(files)}});
  }
  return status;
}

}  // namespace safetensors::cli
