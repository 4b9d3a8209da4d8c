// Format detection: which of the formats read_checkpoint reads a file is in,
// as the safetensors parser, the zip directory or the first pickle's bytes
// tell.

#include <algorithm>
#include <filesystem>
#include <optional>
#include <string_view>
#include <system_error>

#include "checkpoint/checkpoint_internal.hpp"
#include "checkpoint/zip.hpp"
#include "safetensors/error.hpp"
#include "safetensors/header.hpp"
#include "safetensors/source.hpp"

namespace safetensors {
namespace detail {
namespace {

// Why the safetensors parser refuses the file, or nothing when it accepts it:
// detection asks the parser itself, so that it accepts exactly what the
// parser accepts.
std::optional<Error> safetensors_refusal(const Source& source) {
  try {
    unsigned char prefix[kHeaderPrefixSize] = {};
    source.read(0, prefix, static_cast<std::size_t>(std::min<std::uint64_t>(source.size(), sizeof prefix)));
    const std::uint64_t n = parse_header_length(prefix, source.size(), source.path());
    const std::uint64_t data_size = source.size() - kHeaderPrefixSize - n;
    if (source.data()) {
      const char* json = reinterpret_cast<const char*>(source.data()) + kHeaderPrefixSize;
      parse_header(std::string_view(json, n), data_size, source.path());
    } else {
      std::string json(static_cast<std::size_t>(n), '\0');
      source.read(kHeaderPrefixSize, json.data(), json.size());
      parse_header(json, data_size, source.path());
    }
    return std::nullopt;
  } catch (const Error& e) {
    if (e.code() == ErrorCode::Io || e.code() == ErrorCode::FileChanged) throw;
    return e;
  }
}

}  // namespace

bool is_folder(const std::string& path) {
  std::error_code ec;  // a path that cannot be inspected is no folder: opening it reports why
  return std::filesystem::is_directory(path, ec);
}

bool names_an_index(const std::string& path) {
  constexpr std::string_view kJson = ".json";
  return path.size() >= kJson.size() && path.compare(path.size() - kJson.size(), kJson.size(), kJson) == 0;
}

bool refused_by_length(const Error& e) {
  return e.code() == ErrorCode::HeaderTooSmall || e.code() == ErrorCode::HeaderTooLarge ||
         e.code() == ErrorCode::InvalidHeaderLength;
}

Detected detect(const std::shared_ptr<Source>& source) {
  Detected d;
  d.safetensors_refusal = safetensors_refusal(*source);
  if (!d.safetensors_refusal) {
    d.format = CheckpointFormat::Safetensors;
  } else if (looks_like_zip(*source)) {
    const ZipArchive zip(source);
    const ZipEntry* data = zip.find(archive_prefix(zip) + "data.pkl");
    d.format = is_torchscript(zip, *data) ? CheckpointFormat::TorchArchive : CheckpointFormat::TorchZip;
  } else if (legacy_magic_end(*source) != 0) {
    d.format = CheckpointFormat::TorchLegacy;
  }
  return d;
}

}  // namespace detail

const char* to_string(CheckpointFormat format) noexcept {
  switch (format) {
    case CheckpointFormat::Safetensors: return "safetensors";
    case CheckpointFormat::SafetensorsSet: return "sharded safetensors set";
    case CheckpointFormat::TorchZip: return "torch.save (zip)";
    case CheckpointFormat::TorchLegacy: return "torch.save (legacy)";
    case CheckpointFormat::TorchArchive: return "TorchScript archive";
    case CheckpointFormat::Unknown: return "unknown";
  }
  return "unknown";
}

CheckpointFormat detect_format(const std::string& path, Backend backend) {
  if (detail::is_folder(path)) return CheckpointFormat::SafetensorsSet;
  const CheckpointFormat format = detail::detect(open_file(path, backend)).format;
  return format == CheckpointFormat::Unknown && detail::names_an_index(path) ? CheckpointFormat::SafetensorsSet
                                                                               : format;
}

}  // namespace safetensors
