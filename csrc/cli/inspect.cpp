// `inspect FILE [--json]`: what a file holds, read from its header alone, so
// it works for every dtype whether or not the LibTorch in use has it.

#include <algorithm>
#include <array>
#include <iostream>

#include <nlohmann/json.hpp>

#include "detail/text.hpp"
#include "commands.hpp"
#include "safetensors/load.hpp"

namespace safetensors::cli {
namespace {

void print_table(const Header& header) {
  using Row = std::array<std::string, 5>;
  std::vector<Row> rows{{"NAME", "DTYPE", "SHAPE", "BYTES", "RANGE"}};
  for (const TensorInfo& t : header.tensors()) {
    rows.push_back({printable(t.name), std::string(dtype_name(t.dtype)), detail::shape_text(t.shape),
                    std::to_string(t.nbytes()),
                    "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + ")"});
  }
  std::array<std::size_t, 5> width{};
  for (const Row& row : rows)
    for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  for (const Row& row : rows) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      const std::string pad(width[c] - row[c].size(), ' ');
      const bool last = c + 1 == row.size();
      if (c == 3) {
        line += pad + row[c];  // byte counts read best right-aligned
      } else {
        line += row[c] + (last ? "" : pad);
      }
      if (!last) line += "  ";
    }
    std::cout << line << '\n';
  }

  std::cout << "\nmetadata:";
  if (header.metadata().empty()) std::cout << " none";
  std::cout << '\n';
  for (const auto& [key, value] : header.metadata())
    std::cout << "  " << printable(key) << " = " << printable(value) << '\n';

  std::cout << "\ntensors: " << header.tensors().size() << '\n'
            << "data bytes: " << header.data_size() << '\n'
            << "header size: " << header.header_size() << '\n';
}

void print_json(const std::string& path, const Header& header) {
  nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
  for (const TensorInfo& t : header.tensors()) {
    tensors.push_back({{"name", t.name},
                       {"dtype", dtype_name(t.dtype)},
                       {"shape", t.shape},
                       {"data_offsets", {t.begin, t.end}},
                       {"nbytes", t.nbytes()}});
  }
  nlohmann::ordered_json out = {
      {"file", path},
      {"header_size", header.header_size()},
      {"data_offset", header.data_offset()},
      // null, not {}, tells scripts the file has no __metadata__ at all.
      {"metadata", header.has_metadata() ? nlohmann::ordered_json(header.metadata()) : nullptr},
      {"tensors", std::move(tensors)},
      {"total_bytes", header.data_size()},
  };
  // Names are validated UTF-8, but the path is not: replace rather than throw.
  std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
}

}  // namespace

int inspect(const std::string& path, bool json) {
  try {
    SafeOpen file(path, LoadOptions().backend(Backend::Pread));
    if (json) {
      print_json(path, file.header());
    } else {
      print_table(file.header());
    }
    return kExitOk;
  } catch (...) {
    std::cerr << error_line(path) << '\n';
    return kExitInvalid;
  }
}

}  // namespace safetensors::cli
