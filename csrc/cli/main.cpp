// safetensors-torch: inspect, verify and convert safetensors files from the
// command line. Exit status: 0 success, 1 an invalid file or failed operation,
// 2 a usage error; `diff`: 0 equal, 1 different, 2 trouble.

#include <charconv>
#include <cstdint>
#include <iostream>

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

// CLI11 check for --shard-size: a whole number of bytes from 1 to 2^64 - 1.
std::string check_positive_bytes(const std::string& arg) {
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), value);
  if (ec != std::errc() || end != arg.data() + arg.size() || value == 0)
    return "expected a whole number of bytes from 1 to 18446744073709551615, got '" + arg + "'";
  return "";
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
  CLI::App app{"Inspect, verify and convert safetensors files.", "safetensors-torch"};
  app.set_version_flag("--version", version_text());
  app.require_subcommand(1);

  std::string inspect_path;
  bool json = false;
  CLI::App* inspect = app.add_subcommand("inspect", "List a file's tensors, metadata and totals");
  inspect->add_option("FILE", inspect_path, "A safetensors file")->required();
  inspect->add_flag("--json", json, "Print one JSON object instead of a table");

  std::vector<std::string> verify_paths;
  CLI::App* verify = app.add_subcommand("verify", "Validate files and load every tensor");
  verify->add_option("FILE", verify_paths, "Safetensors files")->required();

  std::string in, out;
  std::vector<std::string> metadata_args;
  CLI::App* convert = app.add_subcommand(
      "convert", "Write a safetensors file from a safetensors, torch.save or torch::save file");
  convert->add_option("IN", in, "The file to read (its format is detected from its content)")->required();
  convert->add_option("OUT", out, "The file to write")->required();
  convert->add_option("--metadata", metadata_args, "Set a metadata entry (repeatable)")
      ->type_name("KEY=VALUE")
      ->check(check_key_value);
  std::string convert_key;
  std::optional<std::uint64_t> shard_size;
  const std::string key_help = " (dotted path; write a dot inside a key as \\.)";
  convert->add_option("--key", convert_key, "Convert only this sub-dict of a checkpoint" + key_help)
      ->type_name("PATH")
      ->check(check_key_path);
  convert->add_option("--shard-size", shard_size, "Write OUT as a folder of shards of at most BYTES each")
      ->type_name("BYTES")
      ->check(check_positive_bytes);
  std::string backend = "mmap";
  const std::string backend_help =
      "How inputs are read: mmap (zero-copy mapping) or pread (positional reads into memory, no mapping)";
  convert->add_option("--backend", backend, backend_help)->check(CLI::IsMember({"mmap", "pread"}));

  std::string diff_a, diff_b, key_a, key_b;
  CLI::App* diff = app.add_subcommand(
      "diff", "Compare two checkpoints tensor by tensor (exit 0 equal, 1 different, 2 trouble)");
  diff->add_option("A", diff_a, "A checkpoint of any supported format")->required();
  diff->add_option("B", diff_b, "A checkpoint of any supported format")->required();
  diff->add_option("--key-a", key_a, "Compare only this sub-dict of A" + key_help)
      ->type_name("PATH")
      ->check(check_key_path);
  diff->add_option("--key-b", key_b, "Compare only this sub-dict of B" + key_help)
      ->type_name("PATH")
      ->check(check_key_path);
  diff->add_option("--backend", backend, backend_help)->check(CLI::IsMember({"mmap", "pread"}));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return exit_for(app, e);
  }

  try {
    if (*inspect) return cli::inspect(inspect_path, json);
    if (*verify) return cli::verify(verify_paths);
    if (*diff) return cli::diff(diff_a, diff_b, split_key(key_a), split_key(key_b), backend_named(backend));
    return cli::convert(in, out, parse_metadata(metadata_args),
                        {split_key(convert_key), shard_size, backend_named(backend)});
  } catch (const std::exception& e) {
    // The commands report their own failures; this is a last resort.
    std::cerr << "safetensors-torch: error: " << cli::current_message() << '\n';
    return *diff ? cli::kExitTrouble : cli::kExitInvalid;
  }
}
