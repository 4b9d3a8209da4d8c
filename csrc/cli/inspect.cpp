// `inspect PATH [--json] [--tensors GLOB]...`: what a file or a sharded set
// holds, read from headers alone, so it works for every dtype whether or not
// the LibTorch in use has it.

#include <algorithm>
#include <array>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "detail/text.hpp"
#include "safetensors/load.hpp"

namespace safetensors::cli {
namespace {

using Json = nlohmann::ordered_json;

std::uint64_t elements(const TensorInfo& t) {
  std::uint64_t n = 1;
  for (const std::uint64_t d : t.shape) n *= d;
  return n;
}

// The tensors listed, with the shard (a file name) each is in.
struct Listed {
  const TensorInfo* info;
  const SafeOpen* shard;
};

struct Totals {
  std::uint64_t tensors = 0, parameters = 0, bytes = 0;
  void add(const TensorInfo& t) {
    ++tensors;
    parameters += elements(t);
    bytes += t.nbytes();
  }
};

struct Listing {
  std::vector<Listed> tensors;
  Totals totals;
  std::map<Dtype, Totals> by_dtype;  // in the format's dtype order
  std::map<std::string, std::string> aliases;
};

bool listed(const InspectArgs& args, const std::string& name) {
  return args.tensors.empty() || TensorTransform().include(args.tensors).selects(name);
}

Listing list(const ShardedOpen& set, const InspectArgs& args) {
  Listing l;
  for (const SafeOpen& shard : set.shards())
    for (const TensorInfo& t : shard.header().tensors()) {
      if (!listed(args, t.name)) continue;
      l.tensors.push_back({&t, &shard});
      l.totals.add(t);
      l.by_dtype[t.dtype].add(t);
    }
  for (const auto& [removed, kept] : metadata_aliases(set))
    if (listed(args, removed)) l.aliases.emplace(removed, kept);
  return l;
}

std::string file_name(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

void print_rows(const std::vector<std::vector<std::string>>& rows, std::size_t right_aligned) {
  std::vector<std::size_t> width(rows.front().size());
  for (const auto& row : rows)
    for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      const std::string pad(width[c] - row[c].size(), ' ');
      const bool last = c + 1 == row.size();
      if (c == right_aligned) {
        line += pad + row[c];  // byte counts read best right-aligned
      } else {
        line += row[c] + (last ? "" : pad);
      }
      if (!last) line += "  ";
    }
    std::cout << line << '\n';
  }
}

void print_table(const ShardedOpen& set, const Listing& l, const InspectArgs& args) {
  const bool sharded = set.index() != nullptr;
  std::vector<std::vector<std::string>> rows{{"NAME", "DTYPE", "SHAPE", "BYTES", "RANGE"}};
  if (sharded) rows[0].push_back("SHARD");
  for (const Listed& t : l.tensors) {
    rows.push_back({printable(t.info->name), std::string(dtype_name(t.info->dtype)),
                    detail::shape_text(t.info->shape), std::to_string(t.info->nbytes()),
                    "[" + std::to_string(t.info->begin) + ", " + std::to_string(t.info->end) + ")"});
    if (sharded) rows.back().push_back(printable(file_name(t.shard->path())));
  }
  print_rows(rows, 3);

  std::cout << "\nmetadata:";
  if (set.metadata().empty()) std::cout << " none";
  std::cout << '\n';
  for (const auto& [key, value] : set.metadata())
    std::cout << "  " << printable(key) << " = " << printable(value) << '\n';
  if (!l.aliases.empty()) {
    std::cout << "\naliases (names that share a tensor's bytes):\n";
    for (const auto& [removed, kept] : l.aliases)
      std::cout << "  " << printable(removed) << " -> " << printable(kept) << '\n';
  }

  std::cout << "\ndtypes:\n";
  std::vector<std::vector<std::string>> dtype_rows;
  for (const auto& [dtype, t] : l.by_dtype)
    dtype_rows.push_back({"  " + std::string(dtype_name(dtype)), std::to_string(t.tensors) + " tensors",
                          std::to_string(t.parameters) + " parameters", std::to_string(t.bytes) + " bytes"});
  if (dtype_rows.empty()) {
    std::cout << "  none\n";
  } else {
    print_rows(dtype_rows, std::string::npos);
  }
  if (sharded) {
    std::cout << "\nshards:\n";
    std::vector<std::vector<std::string>> shard_rows;
    for (const SafeOpen& shard : set.shards()) {
      Totals t;
      for (const Listed& x : l.tensors)
        if (x.shard == &shard) t.add(*x.info);
      shard_rows.push_back({"  " + printable(file_name(shard.path())), std::to_string(t.tensors) + " tensors",
                            std::to_string(t.parameters) + " parameters", std::to_string(t.bytes) + " bytes"});
    }
    print_rows(shard_rows, std::string::npos);
  }

  std::cout << "\ntensors: " << l.totals.tensors;
  if (!args.tensors.empty()) std::cout << " matching";
  std::cout << '\n' << "parameters: " << l.totals.parameters << '\n';
  if (sharded) {
    std::uint64_t data = 0;
    for (const SafeOpen& shard : set.shards()) data += shard.header().data_size();
    std::cout << "shards: " << set.shards().size() << '\n' << "data bytes: " << data << '\n';
  } else {
    const Header& header = set.shards().front().header();
    std::cout << "data bytes: " << header.data_size() << '\n' << "header size: " << header.header_size() << '\n';
  }
}

Json totals_json(const Totals& t) {
  return {{"tensors", t.tensors}, {"parameters", t.parameters}, {"bytes", t.bytes}};
}

void print_json(const std::string& path, const ShardedOpen& set, const Listing& l) {
  const bool sharded = set.index() != nullptr;
  Json tensors = Json::array();
  for (const Listed& t : l.tensors) {
    tensors.push_back({{"name", t.info->name},
                       {"dtype", dtype_name(t.info->dtype)},
                       {"shape", t.info->shape},
                       {"data_offsets", {t.info->begin, t.info->end}},
                       {"nbytes", t.info->nbytes()}});
    if (sharded) tensors.back()["shard"] = file_name(t.shard->path());
  }
  Json dtypes = Json::object();
  for (const auto& [dtype, t] : l.by_dtype) dtypes[std::string(dtype_name(dtype))] = totals_json(t);
  Json out = {{"file", path}, {"ok", true}};
  std::uint64_t data = 0;
  if (sharded) {
    Json shards = Json::array();
    for (const SafeOpen& shard : set.shards()) {
      Totals t;
      for (const Listed& x : l.tensors)
        if (x.shard == &shard) t.add(*x.info);
      Json entry = {{"file", file_name(shard.path())},
                    {"header_size", shard.header().header_size()},
                    {"data_offset", shard.header().data_offset()},
                    {"data_bytes", shard.header().data_size()}};
      entry.update(totals_json(t));
      shards.push_back(std::move(entry));
      data += shard.header().data_size();
    }
    out["index"] = set.path();
    out["metadata"] = set.metadata();
    out["shards"] = std::move(shards);
  } else {
    const Header& header = set.shards().front().header();
    out["header_size"] = header.header_size();
    out["data_offset"] = header.data_offset();
    // null, not {}, tells scripts the file has no __metadata__ at all.
    out["metadata"] = header.has_metadata() ? Json(header.metadata()) : Json(nullptr);
    data = header.data_size();
  }
  out["tensors"] = std::move(tensors);
  out["total_bytes"] = data;
  out["parameters"] = l.totals.parameters;
  out["dtypes"] = std::move(dtypes);
  out["aliases"] = l.aliases;
  emit_json(out);
}

}  // namespace

int inspect(const std::string& path, const InspectArgs& args) {
  try {
    const ShardedOpen set = is_set_path(path) ? ShardedOpen(path, LoadOptions().backend(Backend::Pread))
                                              : ShardedOpen(SafeOpen(path, LoadOptions().backend(Backend::Pread)));
    const Listing l = list(set, args);
    if (args.json) {
      print_json(path, set, l);
    } else {
      print_table(set, l, args);
    }
    return kExitOk;
  } catch (...) {
    std::cerr << error_line(path) << '\n';
    if (args.json) emit_json(json_failure({{"file", path}}));
    return failure_status();
  }
}

}  // namespace safetensors::cli
