#pragma once
// The one exception type of the library. Every failure (bad file, bad argument,
// I/O error) is a safetensors::Error carrying the rule that was broken.
// Torch-free.

#include <stdexcept>
#include <string>
#include <string_view>

namespace safetensors {

/// The rule that was broken. The format rules carry the names the reference
/// implementation uses for them, so an error reads the same in both.
enum class ErrorCode {
  // --- the file format (reading) ---
  HeaderTooSmall,                ///< fewer than 8 bytes: no header length
  HeaderTooLarge,                ///< header length above kMaxHeaderSize
  InvalidHeaderLength,           ///< header runs past the end of the file
  InvalidHeader,                 ///< header is not UTF-8 (or starts with a BOM)
  InvalidHeaderDeserialization,  ///< header is not the JSON object the spec describes
  DuplicateKey,                  ///< a tensor name (or metadata key, or field) twice
  InvalidOffset,                 ///< data_offsets leave a gap, overlap or are reversed
  ValidationOverflow,            ///< shape product or byte size overflows 64 bits
  MisalignedSlice,               ///< bit size not a multiple of 8
  TensorInvalidInfo,             ///< byte range does not match dtype and shape
  MetadataIncompleteBuffer,      ///< data buffer not covered exactly (truncated or trailing bytes)
  ReservedName,                  ///< a tensor named "__metadata__"
  LimitExceeded,                 ///< a documented limit of this library (rank, ...)
  /// A torch.save/torch::save checkpoint is malformed (zip container, pickle
  /// stream, archive layout) or uses a construct the weights-only reader refuses.
  InvalidCheckpoint,
  // --- mapping to torch ---
  UnsupportedDtype,  ///< the LibTorch in use has no such dtype (see the message)
  // --- API use ---
  TensorNotFound,   ///< no tensor of that name
  InvalidSlice,     ///< an index or slice outside the tensor
  InvalidArgument,  ///< a tensor or option that cannot be saved or used
  StateDictMismatch,  ///< a module and a checkpoint disagree (strict load_state_dict)
  InvalidIndex,       ///< a sharded checkpoint's index or its set of shards is inconsistent
  // --- the operating system ---
  Io,           ///< open/read/write/rename/... failed (errno in the message)
  FileChanged,  ///< the file shrank or changed while it was being read
};

/// The code's name, e.g. "InvalidOffset".
const char* to_string(ErrorCode code) noexcept;

namespace detail {
/// `text` as Error's message shows it: control characters (C0, DEL, C1), the
/// line and paragraph separators, invalid UTF-8 and the format characters that
/// reorder or hide text (bidi controls, zero-width characters, BOM) escaped as
/// `\xNN` / `\uNNNN`, and a backslash doubled, so that two texts that differ
/// never read alike. The result is valid UTF-8.
///
/// `Escaped::Pieces` is for text made of pieces that were escaped already
/// joined by newlines (LoadReport::describe): newlines and backslashes stay as
/// they are, anything else is escaped.
enum class Escaped { None, Pieces };
std::string escape_control(std::string_view text, Escaped already = Escaped::None);
}  // namespace detail

class Error : public std::runtime_error {
 public:
  /// `file` and `tensor` may be empty. The message (what()) reads
  /// "FILE: tensor 'NAME': DETAIL [Code]", with every control character
  /// (C0, DEL, C1) and every byte that is not part of valid UTF-8 escaped as
  /// `\xNN` or `\u00NN`: names come from untrusted files and must not reach a
  /// terminal or a log as escape sequences. Newlines are escaped too, except
  /// between the lines of a StateDictMismatch (one problem per line, each name
  /// in it escaped). file(), tensor() and detail() return the text unescaped.
  Error(ErrorCode code, const std::string& file, const std::string& tensor,
        const std::string& detail);

  ErrorCode code() const noexcept { return code_; }
  /// The file the error is about ("" for in-memory buffers).
  const std::string& file() const noexcept { return file_; }
  /// The tensor the error is about ("" when none).
  const std::string& tensor() const noexcept { return tensor_; }
  /// The message without file, tensor and code.
  const std::string& detail() const noexcept { return detail_; }

 private:
  ErrorCode code_;
  std::string file_;
  std::string tensor_;
  std::string detail_;
};

}  // namespace safetensors
