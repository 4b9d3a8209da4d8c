// Helpers shared by the subcommands: error lines and output escaping.

#include <sys/stat.h>

#include <c10/util/Exception.h>

#include <new>
#include <stdexcept>

#include "commands.hpp"
#include "safetensors/error.hpp"

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
  // The message names the file first, escaped as printable() does.
  const std::string prefix = printable(path) + ": ";
  if (message.compare(0, prefix.size(), prefix) == 0) message.erase(0, prefix.size());
  return prefix + "error: " + message;
}

}  // namespace safetensors::cli
