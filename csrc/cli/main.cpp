// safetensors-torch: inspect, verify, convert and compare safetensors files
// and sharded sets from the command line. Exit status: 0 success, 1 an invalid
// input or a failed operation, 2 a usage error or trouble (a missing file, an
// I/O error); `diff`: 0 equal, 1 different, 2 trouble.

#include <cctype>
#include <charconv>
#include <cstdint>
#include <iostream>
#include <optional>

#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "safetensors/torch_dtype.hpp"
#include "safetensors/version.hpp"

namespace {

namespace cli = safetensors::cli;

std::string version_text() {
  return "safetensors-torch " SAFETENSORS_TORCH_VERSION " (LibTorch " +
         safetensors::torch_version() + ")";
}

// CLI11 check for --metadata: empty when valid, else the complaint.
std::string check_key_value(const std::string& arg) {
  return arg.find('=') == std::string::npos ? "expected KEY=VALUE, got '" + arg + "'" : "";
}

// A --shard-size: a whole number of bytes, optionally with a unit: B, kB or
// KB (1000), MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024);
// from 1 byte to 2^64 - 1. nullopt for anything else.
std::optional<std::uint64_t> parse_size(const std::string& arg) {
  std::uint64_t value = 0;
  const char* const end = arg.data() + arg.size();
  const auto [digits_end, ec] = std::from_chars(arg.data(), end, value);
  if (ec != std::errc() || digits_end == arg.data()) return std::nullopt;
  std::string unit(digits_end, end);
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const std::pair<const char*, std::uint64_t> kUnits[] = {
      {"", 1},          {"b", 1},
      {"kb", 1000},     {"mb", 1000'000},        {"gb", 1000'000'000},    {"tb", 1000'000'000'000},
      {"kib", 1ull << 10}, {"mib", 1ull << 20}, {"gib", 1ull << 30}, {"tib", 1ull << 40}};
  for (const auto& [name, scale] : kUnits) {
    if (unit != name) continue;
    if (value == 0 || value > UINT64_MAX / scale) return std::nullopt;
    return value * scale;
  }
  return std::nullopt;
}

// CLI11 check for --shard-size: empty when valid, else the complaint.
std::string check_size(const std::string& arg) {
  return parse_size(arg) ? ""
                         : "expected a size from 1 byte to 2^64 - 1 bytes: a whole number, optionally with a unit "
                           "(B, kB, MB, GB, TB; KiB, MiB, GiB, TiB), got '" + arg + "'";
}

// KEY=VALUE arguments (already checked) as metadata; a later key wins.
safetensors::Metadata parse_metadata(const std::vector<std::string>& args) {
  safetensors::Metadata metadata;
  for (const std::string& arg : args) {
    const std::size_t eq = arg.find('=');
    metadata[arg.substr(0, eq)] = arg.substr(eq + 1);
  }
  return metadata;
}

// CLI11 check for --key: a backslash escapes a dot or a backslash only.
std::string check_key_path(const std::string& key) {
  for (std::size_t i = 0; i < key.size(); ++i)
    if (key[i] == '\\' && (++i == key.size() || (key[i] != '.' && key[i] != '\\')))
      return "in '" + key + "', a backslash must be followed by '.' or '\\'";
  return "";
}

// "model.encoder" -> {"model", "encoder"}; "model\.v2.encoder" -> {"model.v2",
// "encoder"} (a key that holds a dot); "" -> {}. Checked by check_key_path.
std::vector<std::string> split_key(const std::string& key) {
  std::vector<std::string> parts;
  if (key.empty()) return parts;
  parts.emplace_back();
  for (std::size_t i = 0; i < key.size(); ++i) {
    if (key[i] == '\\') {
      parts.back() += key[++i];
    } else if (key[i] == '.') {
      parts.emplace_back();
    } else {
      parts.back() += key[i];
    }
  }
  return parts;
}

safetensors::Backend backend_named(const std::string& name) {
  return name == "pread" ? safetensors::Backend::Pread : safetensors::Backend::Mmap;
}

// --help and --version succeed; every other parse error is a usage error. CLI11's
// own exit codes vary by error kind, so only its message is used.
// A usage error quotes the arguments, escaped as every other message.
int exit_for(const CLI::App& app, const CLI::ParseError& e) {
  const bool success = dynamic_cast<const CLI::CallForHelp*>(&e) ||
                       dynamic_cast<const CLI::CallForAllHelp*>(&e) ||
                       dynamic_cast<const CLI::CallForVersion*>(&e);
  if (success) return app.exit(e);
  std::cerr << cli::printable(e.what()) << "\nRun with --help for more information.\n";
  return cli::kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Inspect, verify, convert and compare safetensors files and sharded sets.", "safetensors-torch"};
  app.set_version_flag("--version", version_text());
  app.require_subcommand(1);
  app.footer(
      "A sharded set (its folder, or its model.safetensors.index.json) is accepted wherever a file is.\n"
      "Exit status: 0 success (diff: equal), 1 an invalid input (a set missing a shard included) or a failed\n"
      "operation (diff: different), 2 a usage error (a selection that leaves no tensor included) or trouble\n"
      "(a missing or unreadable file, an I/O error; diff: any input it cannot compare).\n"
      "Example: safetensors-torch convert ckpt.pt model.safetensors --key model --dtype bf16");

  safetensors::cli::InspectArgs inspect_args;
  std::string inspect_path;
  CLI::App* inspect = app.add_subcommand("inspect", "List the tensors, metadata and totals of a file or set");
  inspect->add_option("PATH", inspect_path, "A safetensors file, or a sharded set's folder or index")->required();
  inspect->add_flag("--json", inspect_args.json, "Print one JSON document instead of a table");
  inspect->add_option("--tensors", inspect_args.tensors,
                      "List only the tensors matching GLOB ('*' matches any run of characters, dots included; "
                      "repeatable)")
      ->type_name("GLOB");
  inspect->footer("Example: safetensors-torch inspect checkpoint/ --tensors '*.attn.*'");

  std::vector<std::string> verify_paths;
  bool verify_json = false;
  CLI::App* verify = app.add_subcommand("verify", "Validate files or sets and load every tensor");
  verify->add_option("PATH", verify_paths, "Safetensors files, or sharded sets' folders or indexes")->required();
  verify->add_flag("--json", verify_json, "Print one JSON document instead of a line per path");
  verify->footer("Example: safetensors-torch verify model.safetensors checkpoint/");

  std::string in, out;
  std::vector<std::string> metadata_args;
  CLI::App* convert = app.add_subcommand(
      "convert", "Write a safetensors file or set from a safetensors file or set, torch.save or torch::save file");
  convert->add_option("IN", in, "The checkpoint to read (its format is detected from its content)")->required();
  convert->add_option("OUT", out, "The file to write (a folder with --shard-size)")->required();
  convert->add_option("--metadata", metadata_args, "Set a metadata entry (repeatable)")
      ->type_name("KEY=VALUE")
      ->check(check_key_value);
  std::string convert_key;
  std::string shard_size;
  const std::string key_help = " (dotted path; write a dot inside a key as \\.)";
  convert->add_option("--key", convert_key, "Convert only this sub-dict of a checkpoint" + key_help)
      ->type_name("PATH")
      ->check(check_key_path);
  convert->add_option("--shard-size", shard_size,
                      "Write OUT as a folder of shards of at most SIZE bytes of tensors each "
                      "(e.g. 2GB, 500MiB, 100KB, 4096)")
      ->type_name("SIZE")
      ->check(check_size);
  std::string backend = "mmap";
  const std::string backend_help =
      "How inputs are read: mmap (zero-copy mapping) or pread (positional reads into memory, no mapping)";
  convert->add_option("--backend", backend, backend_help)->check(CLI::IsMember({"mmap", "pread"}));
  std::vector<std::string> include, exclude;
  std::string strip_prefix, add_prefix, dtype;
  convert->add_option("--include", include,
                      "Convert only the tensors matching GLOB (repeatable; one that matches nothing is warned of, "
                      "a selection that leaves no tensor refused)")
      ->type_name("GLOB");
  convert->add_option("--exclude", exclude, "Leave out the tensors matching GLOB (repeatable)")->type_name("GLOB");
  convert->add_option("--strip-prefix", strip_prefix, "Remove P from the names that begin with it")
      ->type_name("P");
  convert->add_option("--add-prefix", add_prefix, "Put P before every name (after --strip-prefix)")
      ->type_name("P");
  convert->add_option("--dtype", dtype, "Cast floating-point tensors to this dtype (others keep theirs)")
      ->check(CLI::IsMember({"f16", "bf16", "f32", "f64"}));
  bool no_values = false;
  convert->add_flag("--no-values", no_values,
                    "Write no non-tensor value of a torch.save or torch::save file (an epoch, optimizer "
                    "hyperparameters) as a metadata entry; each is listed as not converted");
  convert->footer("Example: safetensors-torch convert checkpoint/ merged.safetensors --strip-prefix module.");

  std::string diff_a, diff_b, key_a, key_b;
  bool diff_json = false;
  CLI::App* diff = app.add_subcommand(
      "diff", "Compare two checkpoints tensor by tensor (exit 0 equal, 1 different, 2 trouble)");
  diff->add_option("A", diff_a, "A checkpoint of any supported format, or a sharded set")->required();
  diff->add_option("B", diff_b, "A checkpoint of any supported format, or a sharded set")->required();
  diff->add_option("--key-a", key_a, "Compare only this sub-dict of A" + key_help)
      ->type_name("PATH")
      ->check(check_key_path);
  diff->add_option("--key-b", key_b, "Compare only this sub-dict of B" + key_help)
      ->type_name("PATH")
      ->check(check_key_path);
  diff->add_option("--backend", backend, backend_help)->check(CLI::IsMember({"mmap", "pread"}));
  diff->add_flag("--json", diff_json, "Print one JSON document instead of lines");
  diff->footer("Example: safetensors-torch diff ckpt.pt checkpoint/ --key-a model");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return exit_for(app, e);
  }

  try {
    if (*inspect) return cli::inspect(inspect_path, inspect_args);
    if (*verify) return cli::verify(verify_paths, verify_json);
    if (*diff)
      return cli::diff(diff_a, diff_b, split_key(key_a), split_key(key_b), backend_named(backend), diff_json);
    cli::ConvertArgs args{split_key(convert_key), std::nullopt, backend_named(backend), {}, !no_values};
    if (!shard_size.empty()) args.shard_size = parse_size(shard_size);
    args.transform.include(include).exclude(exclude).strip_prefix(strip_prefix).add_prefix(add_prefix);
    if (!dtype.empty()) {
      std::string upper;
      for (const char c : dtype) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      args.transform.dtype(safetensors::parse_dtype(upper));
    }
    return cli::convert(in, out, parse_metadata(metadata_args), args);
  } catch (...) {
    // The commands report their own failures; this is a last resort.
    std::cerr << "safetensors-torch: error: " << cli::current_message() << '\n';
    return cli::failure_status() == cli::kExitTrouble || *diff ? cli::kExitTrouble : cli::kExitInvalid;
  }
}
