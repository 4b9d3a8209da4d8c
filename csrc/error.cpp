#include "safetensors/error.hpp"

#include <cstdio>

#include "detail/text.hpp"

namespace safetensors {

const char* to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::HeaderTooSmall: return "HeaderTooSmall";
    case ErrorCode::HeaderTooLarge: return "HeaderTooLarge";
    case ErrorCode::InvalidHeaderLength: return "InvalidHeaderLength";
    case ErrorCode::InvalidHeader: return "InvalidHeader";
    case ErrorCode::InvalidHeaderDeserialization: return "InvalidHeaderDeserialization";
    case ErrorCode::DuplicateKey: return "DuplicateKey";
    case ErrorCode::InvalidOffset: return "InvalidOffset";
    case ErrorCode::ValidationOverflow: return "ValidationOverflow";
    case ErrorCode::MisalignedSlice: return "MisalignedSlice";
    case ErrorCode::TensorInvalidInfo: return "TensorInvalidInfo";
    case ErrorCode::MetadataIncompleteBuffer: return "MetadataIncompleteBuffer";
    case ErrorCode::ReservedName: return "ReservedName";
    case ErrorCode::LimitExceeded: return "LimitExceeded";
    case ErrorCode::InvalidCheckpoint: return "InvalidCheckpoint";
    case ErrorCode::UnsupportedDtype: return "UnsupportedDtype";
    case ErrorCode::TensorNotFound: return "TensorNotFound";
    case ErrorCode::InvalidSlice: return "InvalidSlice";
    case ErrorCode::InvalidArgument: return "InvalidArgument";
    case ErrorCode::StateDictMismatch: return "StateDictMismatch";
    case ErrorCode::InvalidIndex: return "InvalidIndex";
    case ErrorCode::Io: return "Io";
    case ErrorCode::FileChanged: return "FileChanged";
  }
  return "Unknown";
}

namespace detail {

std::string escape_control(std::string_view text, bool keep_newlines) {
  std::string out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  auto escape_byte = [&](unsigned char byte) {
    char escaped[5];
    std::snprintf(escaped, sizeof escaped, "\\x%02x", byte);
    out += escaped;
  };
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      if ((c < 0x20 && !(keep_newlines && c == '\n')) || c == 0x7f) {
        escape_byte(c);
      } else {
        out += static_cast<char>(c);
      }
      ++i;
      continue;
    }
    // One UTF-8 sequence, or the single byte that starts an invalid one.
    const std::size_t len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    const bool valid = len != 0 && i + len <= n && detail::is_valid_utf8(text.substr(i, len));
    if (!valid) {
      escape_byte(c);
      ++i;
    } else if (len == 2 && c == 0xC2 && p[i + 1] < 0xA0) {
      char escaped[7];  // C1 control, U+0080..U+009F (0x9b is a terminal's CSI)
      std::snprintf(escaped, sizeof escaped, "\\u%04x", p[i + 1]);
      out += escaped;
      i += 2;
    } else {
      out.append(text.data() + i, len);
      i += len;
    }
  }
  return out;
}

}  // namespace detail

namespace {
std::string compose(ErrorCode code, const std::string& file, const std::string& tensor,
                    const std::string& detail) {
  std::string out;
  out.reserve(file.size() + tensor.size() + detail.size() + 48);
  if (!file.empty()) out += detail::escape_control(file) + ": ";
  if (!tensor.empty()) out += "tensor '" + detail::escape_control(tensor) + "': ";
  // Only a strict load's list of problems spans lines; it escapes the names it
  // lists itself (LoadReport::describe), so no newline comes from a file.
  out += detail::escape_control(detail, /*keep_newlines=*/code == ErrorCode::StateDictMismatch);
  out += " [";
  out += to_string(code);
  out += ']';
  return out;
}
}  // namespace

Error::Error(ErrorCode code, const std::string& file, const std::string& tensor,
             const std::string& detail)
    : std::runtime_error(compose(code, file, tensor, detail)),
      code_(code),
      file_(file),
      tensor_(tensor),
      detail_(detail) {}

}  // namespace safetensors
