#pragma once
// The subcommands of the safetensors-torch tool and the helpers they share.
// Each command returns the process exit status.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "safetensors/header.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "safetensors/source.hpp"
#include "safetensors/transform.hpp"

namespace safetensors::cli {

/// Exit status of every command: 0 success (`diff`: equal), 1 an invalid input
/// or a failed operation (`diff`: different), 2 a usage error or trouble (a
/// file missing or unreadable, an I/O error; `diff`: any input it cannot compare).
inline constexpr int kExitOk = 0;
inline constexpr int kExitInvalid = 1;
inline constexpr int kExitDifferent = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitTrouble = 2;

/// How `inspect` lists.
struct InspectArgs {
  bool json = false;
  std::vector<std::string> tensors;  ///< patterns; empty: every tensor
};

/// Prints the tensors, metadata and totals of a file or a sharded set.
int inspect(const std::string& path, const InspectArgs& args);

/// Validates each file or set and loads every tensor; prints one line per
/// argument, or one JSON document.
int verify(const std::vector<std::string>& paths, bool json);

/// How `convert` reads and rewrites a checkpoint.
struct ConvertArgs {
  std::vector<std::string> key;             ///< the sub-dict to convert ("model")
  std::optional<std::uint64_t> shard_size;  ///< write a sharded folder
  Backend backend = Backend::Mmap;          ///< how IN is read
  TensorTransform transform;                ///< selection, renaming, dtype
  bool keep_values = true;                  ///< non-tensor values as metadata entries
};

/// Rewrites `in` (a safetensors file or set, torch.save or torch::save,
/// detected by content) as `out`, with `overrides` replacing or adding metadata keys.
int convert(const std::string& in, const std::string& out, const Metadata& overrides,
            const ConvertArgs& args = {});

/// Compares two checkpoints tensor by tensor: kExitOk when equal,
/// kExitDifferent when not, kExitTrouble when either cannot be compared.
int diff(const std::string& a, const std::string& b, const std::vector<std::string>& key_a,
         const std::vector<std::string>& key_b, Backend backend = Backend::Mmap, bool json = false);

/// `s` with control characters escaped as \xNN: names and paths come from
/// untrusted files and must not break the one-line-per-file output or reach
/// the terminal as escape sequences.
std::string printable(std::string_view s);
/// The message of the exception being handled (call it in a catch block),
/// escaped once.
std::string current_message();

/// The file a library error names (call it inside a catch block), else
/// `fallback_path`.
std::string error_file(const std::string& fallback_path);

/// "PATH: error: MESSAGE" for the exception being handled (call it inside a
/// catch block), on one line. PATH is the file a library error names, else
/// `fallback_path`. Library errors already begin with "PATH: "; that prefix is
/// not repeated.
std::string error_line(const std::string& fallback_path);

/// The exit status for the exception being handled (call it inside a catch
/// block): kExitTrouble for an I/O error (a file missing, unreadable, changed
/// while read) or exhausted memory, kExitUsage for a selection that leaves
/// nothing (EmptySelection), kExitInvalid for anything else (a set missing a
/// shard its index lists included).
int failure_status();

/// The ErrorCode's name of the exception being handled, or "" when it is not
/// a library error (call it inside a catch block).
std::string error_code_name();

/// The failure being handled (call it inside a catch block) as `--json` shows
/// it: `head`'s members, then "ok": false, "error" (current_message) and
/// "code" (error_code_name).
nlohmann::ordered_json json_failure(nlohmann::ordered_json head);

/// Prints `doc` on one line of stdout; bytes that are not UTF-8 (a path's) are
/// replaced.
void emit_json(const nlohmann::ordered_json& doc);

/// True when `path` names a sharded set: a folder, or an index file (a name
/// ending in ".json"). Anything else is read as one file.
bool is_set_path(const std::string& path);

/// Alias entries of a file's metadata: keys that are not tensors whose value
/// is one, except "format" and kShardSetKey.
std::map<std::string, std::string> metadata_aliases(const ShardedOpen& set);

}  // namespace safetensors::cli
