// Helpers shared by the subcommands: error lines and output escaping.

#include <sys/stat.h>

#include <c10/util/Exception.h>

#include <cstdio>
#include <new>
#include <stdexcept>

#include "commands.hpp"
#include "safetensors/error.hpp"

namespace safetensors::cli {

std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) {
      char escaped[5];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", byte);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out;
}

namespace {

// The message of the exception being handled. c10::Error's what() carries a
// multi-line backtrace that means nothing to a user of the tool.
std::string current_message() {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return "out of memory";
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

}  // namespace

std::string error_line(const std::string& fallback_path) {
  std::string message = current_message();
  // A library error names the file it is about (the output of a conversion,
  // say); other exceptions are about the command's input.
  std::string path = fallback_path;
  try {
    throw;
  } catch (const Error& e) {
    if (!e.file().empty()) path = e.file();
  } catch (...) {
  }
  const std::string prefix = path + ": ";
  if (message.compare(0, prefix.size(), prefix) == 0) message.erase(0, prefix.size());
  return printable(path) + ": error: " + printable(message);
}

}  // namespace safetensors::cli
