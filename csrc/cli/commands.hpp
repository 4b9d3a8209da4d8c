#pragma once
// The subcommands of the safetensors-torch tool and the helpers they share.
// Each command returns the process exit status.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "safetensors/header.hpp"
#include "safetensors/source.hpp"

namespace safetensors::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitInvalid = 1;  ///< an invalid file or a failed operation
inline constexpr int kExitUsage = 2;    ///< bad command line
/// `diff`: 0 equal, 1 different, 2 trouble (a file that cannot be read or
/// compared, of any kind), as diff(1).
inline constexpr int kExitDifferent = 1;
inline constexpr int kExitTrouble = 2;

/// Prints the tensors, metadata and totals of one file (a table, or JSON).
int inspect(const std::string& path, bool json);

/// Validates each file and loads every tensor; prints one line per file.
int verify(const std::vector<std::string>& paths);

/// How `convert` reads a checkpoint that is not a safetensors file.
struct ConvertArgs {
  std::vector<std::string> key;             ///< the sub-dict to convert ("model")
  std::optional<std::uint64_t> shard_size;  ///< write a sharded folder
  Backend backend = Backend::Mmap;          ///< how IN is read
};

/// Rewrites `in` (safetensors, torch.save or torch::save, detected by content)
/// as `out`, with `overrides` replacing or adding metadata keys.
int convert(const std::string& in, const std::string& out, const Metadata& overrides,
            const ConvertArgs& args = {});

/// Compares two checkpoints tensor by tensor: kExitOk when equal,
/// kExitDifferent when not, kExitTrouble when either cannot be compared.
int diff(const std::string& a, const std::string& b, const std::vector<std::string>& key_a,
         const std::vector<std::string>& key_b, Backend backend = Backend::Mmap);

/// `s` with control characters escaped as \xNN: names and paths come from
/// untrusted files and must not break the one-line-per-file output or reach
/// the terminal as escape sequences.
std::string printable(std::string_view s);
/// The message of the exception being handled (call it in a catch block),
/// escaped once.
std::string current_message();

/// "PATH: error: MESSAGE" for the exception being handled (call it inside a
/// catch block), on one line. PATH is the file a library error names, else
/// `fallback_path`. Library errors already begin with "PATH: "; that prefix is
/// not repeated.
std::string error_line(const std::string& fallback_path);

}  // namespace safetensors::cli
