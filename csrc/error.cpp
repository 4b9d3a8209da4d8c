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

namespace {
// Code points that reorder, hide or break the text around them.
bool is_format_character(char32_t cp) {
  return cp == 0x00AD || cp == 0x061C || cp == 0x180E || (cp >= 0x200B && cp <= 0x200F) ||
         (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2060 && cp <= 0x2069) || cp == 0xFEFF;
}

char32_t code_point(const unsigned char* p, std::size_t len) {
  if (len == 2) return (char32_t(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
  if (len == 3) return (char32_t(p[0] & 0x0F) << 12) | (char32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  return (char32_t(p[0] & 0x07) << 18) | (char32_t(p[1] & 0x3F) << 12) | (char32_t(p[2] & 0x3F) << 6) |
         (p[3] & 0x3F);
}
}  // namespace

std::string escape_control(std::string_view text, Escaped already) {
  const bool pieces = already == Escaped::Pieces;
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
      if ((c < 0x20 && !(pieces && c == '\n')) || c == 0x7f) {
        escape_byte(c);
      } else if (c == '\\' && !pieces) {
        out += "\\\\";
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
    } else if (const char32_t cp = code_point(p + i, len);
               (cp >= 0x80 && cp < 0xA0) || is_format_character(cp)) {
      char escaped[12];  // C1 controls (0x9b is a terminal's CSI), format characters
      std::snprintf(escaped, sizeof escaped, "\\u%04x", static_cast<unsigned>(cp));
      out += escaped;
      i += len;
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
  // lists itself (LoadReport::describe), so no newline comes from a file, and
  // its backslashes are escapes already.
  out += detail::escape_control(detail, code == ErrorCode::StateDictMismatch ? detail::Escaped::Pieces
                                                                           : detail::Escaped::None);
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
