// `convert IN OUT [--metadata KEY=VALUE]... [--key K] [--shard-size SIZE]
// [--include GLOB]... [--exclude GLOB]... [--strip-prefix P] [--add-prefix P]
// [--dtype D] [--no-values]`: reads a safetensors file or sharded set, a Python
// torch.save file or a C++ torch::save archive (told apart by content) and
// writes its tensors as safetensors through convert_checkpoint, keeping every
// tensor's dtype unless --dtype casts the floating-point ones. On a terminal, a
// large conversion shows its progress on one line of stderr.


#include <cstdio>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "progress.hpp"
#include "safetensors/error.hpp"
#include "safetensors/migrate.hpp"
#include "safetensors/transform.hpp"

namespace safetensors::cli {
namespace {

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names) out += (out.empty() ? "" : ", ") + printable(name);
  return out;
}

// What a migration did beyond writing tensors: nothing is dropped silently.
void print_report(const std::string& in, const std::string& out, const ConvertReport& s,
                  const TransformReport* t = nullptr) {
  std::cout << "converted " << printable(in) << " (" << to_string(s.format) << ") -> " << printable(out)
            << ": " << s.tensors << " tensors, " << s.bytes << " bytes";
  // The files written are the shards, then the index.
  if (s.files.size() > 1) std::cout << " in " << s.files.size() - 1 << " shards with an index";
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%.2f", s.seconds);
  std::cout << ", " << seconds << " s\n";
  if (s.parameters && s.buffers)
    std::cout << "  read " << *s.parameters << " parameters, " << *s.buffers << " buffers\n";
  if (!s.module_bookkeeping.empty()) {
    std::vector<std::string> kinds;
    for (const Checkpoint::Bookkeeping& b : s.module_bookkeeping)
      kinds.push_back(b.what + " (" + std::to_string(b.count) + ")");
    std::cout << "  module bookkeeping, not converted: " << joined(kinds) << '\n';
  }
  if (!s.aliases.empty()) {
    std::vector<std::string> pairs;
    for (const auto& [removed, kept] : s.aliases) pairs.push_back(removed + " -> " + kept);
    std::cout << "  shared tensors written once (recorded in the metadata): " << joined(pairs) << '\n';
  }
  if (!s.copied_views.empty())
    std::cout << "  overlapping views of one storage, written as separate copies: " << joined(s.copied_views)
              << '\n';
  if (!s.metadata_keys.empty())
    std::cout << "  " << s.metadata_keys.size() << " non-tensor values kept as metadata: " << joined(s.metadata_keys)
              << '\n';
  if (!s.non_tensors.empty()) {
    std::vector<std::string> entries;
    for (const NonTensorEntry& e : s.non_tensors) entries.push_back(e.name + " (" + e.description + ")");
    std::cout << (s.format == CheckpointFormat::TorchArchive ? "  module attributes, not converted: "
                                                              : "  not tensors, not converted: ")
              << joined(entries) << '\n';
  }
  for (const MetadataConflict& c : s.metadata_conflicts) {
    std::vector<std::string> values;
    for (const MetadataConflict::Value& v : c.values) {
      const std::string text = nlohmann::json(v.value).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      values.push_back(printable(text) + " (" + joined(v.files) + ")");
    }
    std::cout << "  metadata the set's files disagree on, the first value kept: " << printable(c.key) << ": "
              << joined(values) << '\n';
  }
  if (!t) return;
  if (!t->excluded.empty()) std::cout << "  left out: " << t->excluded.size() << " (" << joined(t->excluded) << ")\n";
  if (t->renamed) std::cout << "  renamed: " << t->renamed << '\n';
  if (!t->cast.empty()) {
    std::map<std::pair<Dtype, Dtype>, std::size_t> counts;
    for (const TransformReport::Cast& c : t->cast) ++counts[{c.from, c.to}];
    std::cout << "  cast:";
    const char* separator = " ";
    for (const auto& [dtypes, n] : counts) {
      std::cout << separator << n << " " << dtype_name(dtypes.first) << " -> " << dtype_name(dtypes.second);
      separator = ", ";
    }
    std::cout << " (other tensors keep their dtype)\n";
  }
  if (!t->not_cast.empty())
    std::cout << "  floating-point dtypes this LibTorch cannot convert, kept: " << joined(t->not_cast) << '\n';
  // Warnings go to stderr: a pattern that matched nothing, values the cast lost.
  for (const std::string& p : t->unmatched_include)
    std::cerr << "warning: --include '" << printable(p) << "' matches no tensor of " << printable(in) << '\n';
  for (const std::string& p : t->unmatched_exclude)
    std::cerr << "warning: --exclude '" << printable(p) << "' matches no tensor of " << printable(in) << '\n';
  std::vector<std::string> overflowed;
  for (const TransformReport::Cast& c : t->cast)
    if (c.overflowed)
      overflowed.push_back(c.name + " (" + std::to_string(c.overflowed) + (c.overflowed == 1 ? " value)" : " values)"));
  if (!overflowed.empty())
    std::cerr << "warning: finite values beyond the range of " << dtype_name(t->cast.front().to)
              << " became infinite: " << joined(overflowed) << '\n';
}

}  // namespace

int convert(const std::string& in, const std::string& out, const Metadata& overrides, const ConvertArgs& args) {
  try {
    ConvertReport report;
    {
      ProgressLine progress("converted");  // ended before the report is printed
      report = convert_checkpoint(in, out,
                                  ConvertOptions()
                                      .key(args.key)
                                      .backend(args.backend)
                                      .metadata(overrides)
                                      .keep_non_tensors(args.keep_values)
                                      .max_shard_size(args.shard_size)
                                      .transform(args.transform)
                                      .progress(progress.callback()));
    }
    print_report(in, out, report, args.transform.identity() ? nullptr : &report.transform);
    return kExitOk;
  } catch (...) {
    std::cerr << error_line(in) << '\n';
    return failure_status();
  }
}

}  // namespace safetensors::cli
