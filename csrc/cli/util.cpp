// Helpers shared by the subcommands: error lines, exit statuses, output
// escaping, and what tells a sharded set.

#include <c10/util/Exception.h>

#include <filesystem>
#include <iostream>
#include <new>
#include <stdexcept>

#include "commands.hpp"
#include "safetensors/error.hpp"
#include "safetensors/load.hpp"

namespace safetensors::cli {

std::string printable(std::string_view s) { return detail::escape_control(s); }

// The message of the exception being handled, escaped once: a library error's
// is already. c10::Error's what() carries a multi-line backtrace that means
// nothing to a user of the tool.
std::string current_message() {
  try {
    throw;
  } catch (const Error& e) {
    return e.what();
  } catch (const std::bad_alloc&) {
    return "out of memory";
  } catch (const c10::Error& e) {
    return printable(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return printable(e.what());
  } catch (...) {
    return "unknown error";
  }
}

std::string error_file(const std::string& fallback_path) {
  // A library error names the file it is about (the output of a conversion,
  // say); other exceptions are about the command's input.
  try {
    throw;
  } catch (const Error& e) {
    if (!e.file().empty()) return e.file();
  } catch (...) {
  }
  return fallback_path;
}

std::string error_line(const std::string& fallback_path) {
  std::string message = current_message();
  const std::string path = error_file(fallback_path);
  // The message names the file first, escaped as printable() does.
  const std::string prefix = printable(path) + ": ";
  if (message.compare(0, prefix.size(), prefix) == 0) message.erase(0, prefix.size());
  return prefix + "error: " + message;
}

int failure_status() {
  try {
    throw;
  } catch (const EmptySelection&) {
    return kExitUsage;  // the patterns, not the input, are wrong
  } catch (const Error& e) {
    return e.code() == ErrorCode::Io || e.code() == ErrorCode::FileChanged ? kExitTrouble : kExitInvalid;
  } catch (const std::bad_alloc&) {
    return kExitTrouble;
  } catch (...) {
    return kExitInvalid;
  }
}

std::string error_code_name() {
  try {
    throw;
  } catch (const Error& e) {
    return to_string(e.code());
  } catch (...) {
    return "";
  }
}

nlohmann::ordered_json json_failure(nlohmann::ordered_json head) {
  head["ok"] = false;
  head["error"] = current_message();
  head["code"] = error_code_name();
  return head;
}

void emit_json(const nlohmann::ordered_json& doc) {
  std::cout << doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
}

bool is_set_path(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return true;
  constexpr std::string_view kJson = ".json";
  return path.size() >= kJson.size() && path.compare(path.size() - kJson.size(), kJson.size(), kJson) == 0;
}

std::map<std::string, std::string> metadata_aliases(const ShardedOpen& set) {
  std::map<std::string, std::string> aliases;
  for (const SafeOpen& shard : set.shards())
    for (const auto& [removed, kept] : shard.metadata())
      if (removed != "format" && removed != kShardSetKey && !set.contains(removed) && set.contains(kept))
        aliases.emplace(removed, kept);
  return aliases;
}

}  // namespace safetensors::cli
