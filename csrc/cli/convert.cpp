// `convert IN OUT [--metadata KEY=VALUE]... [--key K] [--shard-size SIZE]
// [--include GLOB]... [--exclude GLOB]... [--strip-prefix P] [--add-prefix P]
// [--dtype D]`: reads a safetensors file or sharded set, a Python torch.save
// file or a C++ torch::save archive (told apart by content) and writes its
// tensors as safetensors, keeping every tensor's dtype unless --dtype casts the
// floating-point ones. On a terminal, a large conversion shows its progress on
// one line of stderr.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <set>
#include <optional>
#include <string>

#include "commands.hpp"
#include "checkpoint/checkpoint_internal.hpp"
#include "safetensors/error.hpp"
#include "safetensors/load.hpp"
#include "safetensors/migrate.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "safetensors/torch_dtype.hpp"
#include "safetensors/transform.hpp"

namespace safetensors::cli {
namespace {

// IN's metadata with the overrides applied; none at all when IN has none and
// nothing is given, so that OUT has no __metadata__ either.
std::optional<Metadata> merged_metadata(const Header& header, const Metadata& overrides) {
  if (!header.has_metadata() && overrides.empty()) return std::nullopt;
  Metadata merged = header.metadata();
  for (const auto& [key, value] : overrides) merged[key] = value;
  return merged;
}

// Below this much tensor data a conversion is over before a progress line
// would be worth reading.
constexpr std::uint64_t kProgressThreshold = 256ull << 20;

// "1.2 GB", "340.0 MB", "512 B": decimal units, as file managers show sizes.
std::string human_bytes(std::uint64_t n) {
  constexpr const char* kUnits[] = {"kB", "MB", "GB", "TB", "PB"};
  if (n < 1000) return std::to_string(n) + " B";
  double value = static_cast<double>(n) / 1000;
  std::size_t unit = 0;
  while (value >= 1000 && unit + 1 < std::size(kUnits)) value /= 1000, ++unit;
  char text[32];
  std::snprintf(text, sizeof text, "%.1f %s", value, kUnits[unit]);
  return text;
}

// A line on stderr redrawn in place ("\r[converted 1.2 GB / 4.8 GB, 25%]").
// Only on a terminal, so that redirected output and logs stay one line per
// event; redrawn only when the percentage changes, so that a checkpoint of many
// small tensors does not flood the terminal. The destructor ends the line, also
// when the conversion fails, so that the error starts on a line of its own.
class ProgressLine {
 public:
  ProgressLine() : terminal_(isatty(STDERR_FILENO) == 1) {}
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;
  ~ProgressLine() {
    if (shown_) std::fputc('\n', stderr);
  }

  void update(std::uint64_t done, std::uint64_t total) {
    if (!terminal_ || total <= kProgressThreshold) return;
    const int percent = static_cast<int>(static_cast<double>(done) / static_cast<double>(total) * 100);
    if (shown_ && percent == percent_) return;
    std::fprintf(stderr, "\r[converted %s / %s, %d%%]", human_bytes(done).c_str(), human_bytes(total).c_str(),
                 percent);
    std::fflush(stderr);
    shown_ = true;
    percent_ = percent;
  }

  std::function<void(std::uint64_t, std::uint64_t)> callback() {
    return [this](std::uint64_t done, std::uint64_t total) { update(done, total); };
  }

 private:
  bool terminal_;
  bool shown_ = false;
  int percent_ = 0;
};

// Every tensor of the file, as views of its mapping. One whose dtype the
// LibTorch in use lacks arrives as raw bytes and goes back as raw bytes with
// its file dtype, so that OUT does not degrade it to U8.
NamedTensors all_tensors(const SafeOpen& file) {
  NamedTensors tensors;
  for (const TensorInfo& info : file.header().tensors()) {
    at::Tensor t = file.get_tensor(info.name);
    if (to_torch_dtype(info.dtype)) {
      tensors.add(info.name, std::move(t));
    } else {
      tensors.add_raw(info.name, info.dtype, info.shape, std::move(t));
    }
  }
  return tensors;
}

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
}

// A safetensors file or set, its tensors selected, renamed and cast
// (TensorTransform) on their way to one file or a sharded folder. It keeps its
// metadata and its dtypes this LibTorch lacks; an alias (a name recorded in
// the metadata for a tensor's bytes) stays an alias, unless its name is a
// metadata key already, when it is written as a copy.
int transform(const std::string& in, const std::string& out, const Metadata& overrides, const ConvertArgs& args) {
  const auto start = std::chrono::steady_clock::now();
  if (!args.key.empty())
    throw Error(ErrorCode::InvalidArgument, in, "", "a safetensors file has no nested keys to select");
  ConvertReport report;
  const SetTensors set = read_set(in, args.backend);  // holds the input files open until written
  if (set.set.index() && !args.shard_size) {
    // One file written over the index or a shard would leave the input set
    // broken (a lone file may replace itself: it is read from its mapping).
    std::vector<std::string> inputs{set.set.path()};
    for (const SafeOpen& shard : set.set.shards()) inputs.push_back(shard.path());
    for (const std::string& file : inputs) {
      std::error_code ec;
      if (std::filesystem::equivalent(out, file, ec))
        throw Error(ErrorCode::InvalidArgument, out, "",
                    "is a file of the sharded set being converted (" + printable(in) +
                        "): writing it would break that set");
    }
  }
  std::map<std::string, std::string> aliases = set.aliases;
  Metadata metadata = set.metadata;
  report.format = CheckpointFormat::Safetensors;

  TransformReport changes;
  NamedTensors written = transform_tensors(set.tensors, args.transform, &aliases, &changes);
  for (const auto& [key, value] : overrides) metadata[key] = value;
  metadata.emplace("format", "pt");
  detail::record_aliases(written, aliases, metadata);
  for (const NamedTensors::Item& item : written.items()) report.bytes += item.tensor.nbytes();

  {
    ProgressLine progress;  // ended before the report is printed
    if (args.shard_size) {
      std::error_code ec;
      std::filesystem::create_directories(out, ec);  // save_sharded reports a folder it cannot use
      report.files = save_sharded(written, out, metadata,
                                  ShardedSaveOptions().max_shard_size(*args.shard_size).progress(progress.callback()));
    } else {
      save_file(written, out, metadata, SaveOptions().progress(progress.callback()));
      report.files = {out};
    }
  }
  report.tensors = written.size();
  report.aliases = std::move(aliases);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  print_report(in, out, report, &changes);
  return kExitOk;
}

// A torch.save file or torch::save archive, or a safetensors file read with
// migration options.
int migrate(const std::string& in, const std::string& out, const Metadata& overrides, const ConvertArgs& args) {
  ConvertReport report;
  {
    ProgressLine progress;  // ended before the report is printed
    report = convert_checkpoint(in, out,
                                ConvertOptions()
                                    .key(args.key)
                                    .backend(args.backend)
                                    .metadata(overrides)
                                    .max_shard_size(args.shard_size)
                                    .transform(args.transform)
                                    .progress(progress.callback()));
  }
  print_report(in, out, report, args.transform.identity() ? nullptr : &report.transform);
  return kExitOk;
}

// A safetensors file rewritten through the library.
int rewrite(const std::string& in, const std::string& out, const Metadata& overrides, Backend backend) {
  // Streamed from the private mapping (no copy of the file in memory), or
  // read into memory with the pread backend; OUT may even replace IN, since
  // the new file is renamed over it and the mapping keeps the old one.
  SafeOpen file(in, LoadOptions().unsupported_as_bytes(true).backend(backend));
  std::size_t count = 0;
  {
    ProgressLine progress;  // ended before the summary is printed
    const NamedTensors tensors = all_tensors(file);
    save_file(tensors, out, merged_metadata(file.header(), overrides), SaveOptions().progress(progress.callback()));
    count = tensors.size();
  }
  std::cout << "converted " << printable(in) << " -> " << printable(out) << ": " << count
            << " tensors, " << file.header().data_size() << " bytes\n";
  return kExitOk;
}

}  // namespace

int convert(const std::string& in, const std::string& out, const Metadata& overrides, const ConvertArgs& args) {
  try {
    // A safetensors input keeps its metadata whatever is asked of it; a pickle
    // goes through convert_checkpoint, which reads what the pickle holds.
    if (!is_set_path(in) && detect_format(in, args.backend) != CheckpointFormat::Safetensors)
      return migrate(in, out, overrides, args);
    if (!args.transform.identity() || is_set_path(in) || args.shard_size || !args.key.empty())
      return transform(in, out, overrides, args);
    return rewrite(in, out, overrides, args.backend);
  } catch (...) {
    std::cerr << error_line(in) << '\n';
    return failure_status();
  }
}

}  // namespace safetensors::cli
