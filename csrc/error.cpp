#include "safetensors/error.hpp"

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

namespace {
std::string compose(ErrorCode code, const std::string& file, const std::string& tensor,
                    const std::string& detail) {
  std::string out;
  out.reserve(file.size() + tensor.size() + detail.size() + 48);
  if (!file.empty()) out += file + ": ";
  if (!tensor.empty()) out += "tensor '" + tensor + "': ";
  out += detail;
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
