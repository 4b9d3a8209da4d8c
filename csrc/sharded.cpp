// Sharded checkpoints: the index, a lazy view over its shards that trusts
// nothing the index says without checking it against the shards' headers, and
// a writer that never lets the index point into a half-written set.

#include "safetensors/sharded.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "safetensors/error.hpp"
#include "safetensors/module.hpp"
#include "safetensors/writer.hpp"
#include "posix.hpp"
#include "sharded_internal.hpp"

namespace safetensors {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kShardExtension = ".safetensors";

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// A shard name must stay inside the index's folder, on any OS that may read it.
std::optional<std::string> unsafe_shard_name(const std::string& name) {
  if (name.find('\0') != std::string::npos) return "contains a NUL byte";
  if (!name.empty() && name.front() == '/') return "is absolute";
  if (name.find('\\') != std::string::npos) return "contains a backslash";
  if (name.size() >= 2 && name[1] == ':') return "starts with a drive";
  if (name.size() <= kShardExtension.size() || !ends_with(name, kShardExtension))
    return "does not end in .safetensors";
  for (const auto& part : fs::path(name))
    if (part == "..") return "has a '..' component";
  return std::nullopt;
}

Error index_error(const std::string& file, const std::string& tensor, const std::string& detail) {
  return Error(ErrorCode::InvalidIndex, file, tensor, detail);
}

std::optional<std::uint64_t> parse_total_size(const nlohmann::json& value, const std::string& file) {
  if (value.is_number_unsigned()) return value.get<std::uint64_t>();
  // Some writers store it as a float; accept it while it is a whole number.
  if (value.is_number_float() && value.get<double>() >= 0 &&
      value.get<double>() == static_cast<double>(static_cast<std::uint64_t>(value.get<double>())))
    return static_cast<std::uint64_t>(value.get<double>());
  throw index_error(file, "", "metadata.total_size is not a byte count: " + value.dump());
}

}  // namespace

namespace detail {

std::string shard_file_name(std::size_t i, std::size_t n) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return name;
}

std::string new_set_id() {
  std::random_device random;
  char id[33];
  std::snprintf(id, sizeof id, "%08x%08x%08x%08x", random(), random(), random(), random());
  return id;
}

constexpr std::string_view kStagedSuffix = ".partial";

// The writer's pid is part of a staged shard's name so that a later save can
// tell the leftovers of a killed writer from the files of one still running.
std::string staged_name(const std::string& shard, const std::string& set_id) {
  return "." + shard + "." + std::to_string(::getpid()) + "." + set_id + std::string(kStagedSuffix);
}

bool only_chars(std::string_view s, int (*is_class)(int)) {
  for (const char c : s)
    if (!is_class(static_cast<unsigned char>(c))) return false;
  return !s.empty();
}

// The writer's pid, when `entry` is exactly a name staged_name() makes: other
// files in the folder are never taken for leftovers.
std::optional<pid_t> staged_writer_pid(std::string_view entry) {
  if (entry.empty() || entry.front() != '.' || !ends_with(entry, kStagedSuffix)) return std::nullopt;
  std::string_view rest = entry.substr(1, entry.size() - 1 - kStagedSuffix.size());
  const std::size_t id_dot = rest.rfind('.');
  if (id_dot == std::string_view::npos || !only_chars(rest.substr(id_dot + 1), isxdigit)) return std::nullopt;
  rest = rest.substr(0, id_dot);
  const std::size_t pid_dot = rest.rfind('.');
  if (pid_dot == std::string_view::npos) return std::nullopt;
  const std::string_view pid = rest.substr(pid_dot + 1);
  if (!only_chars(pid, isdigit) || pid.size() > 9 || !ends_with(rest.substr(0, pid_dot), kShardExtension))
    return std::nullopt;
  return static_cast<pid_t>(std::stol(std::string(pid)));
}

// A save killed while writing leaves its staged shards behind. Only those of
// writers that no longer run are removed: a concurrent save into the same
// folder keeps its files. EPERM means the process exists, so only ESRCH counts.
void remove_dead_writers_shards(const std::string& folder) {
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    const auto pid = staged_writer_pid(it->path().filename().string());
    if (pid && ::kill(*pid, 0) != 0 && errno == ESRCH) {
      std::error_code ignored;  // best effort: a leftover is harmless to the new save
      fs::remove(it->path(), ignored);
    }
  }
}

// The files of the checkpoint the folder holds now, as a loader would pick it:
// the shards its index lists, or else model.safetensors. An index that cannot
// be read names nothing, so nothing is removed on its account.
std::set<std::string> current_checkpoint_files(const std::string& folder) {
  std::error_code ec;
  const fs::path index = fs::path(folder) / kIndexFileName;
  if (fs::exists(index, ec)) {
    try {
      const std::vector<std::string> shards = read_index(index.string()).shard_files();
      return {shards.begin(), shards.end()};
    } catch (const Error&) {
      return {};
    }
  }
  if (fs::exists(fs::path(folder) / kSingleFileName, ec)) return {std::string(kSingleFileName)};
  return {};
}

// Called once the new checkpoint is complete: files of the previous one that it
// does not reuse would otherwise linger (shards of another count, a single file
// replaced by a set). Best effort, since the new checkpoint no longer needs them.
void remove_replaced_files(const std::string& folder, const std::set<std::string>& previous,
                           const std::vector<std::string>& kept) {
  const std::set<std::string> keep(kept.begin(), kept.end());
  for (const std::string& file : previous) {
    if (keep.count(file)) continue;
    std::error_code ignored;
    fs::remove(fs::path(folder) / file, ignored);
  }
}

StagedShards::~StagedShards() {
  std::error_code ignored;
  for (std::size_t i = committed_; i < files_.size(); ++i) fs::remove(files_[i].first, ignored);
}

void StagedShards::write(const NamedTensors& tensors, const std::string& name, const Metadata& metadata,
                         const SaveOptions& options) {
  std::string staged = (fs::path(folder_) / staged_name(name, set_id_)).string();
  save_file(tensors, staged, metadata, options);  // leaves nothing if it fails
  files_.emplace_back(std::move(staged), name);
}

void StagedShards::commit(bool fsync) {
  for (; committed_ < files_.size(); ++committed_) {
    const auto& [staged, name] = files_[committed_];
    const std::string target = (fs::path(folder_) / name).string();
    if (std::rename(staged.c_str(), target.c_str()) != 0) {
      const int err = errno;
      throw Error(ErrorCode::Io, target, "",
                  std::string("cannot rename the shard into place: ") + std::strerror(err));
    }
  }
  if (fsync) fsync_folder(folder_);
}

std::uint64_t data_bytes(const NamedTensors::Item& item) {
  const at::Tensor& t = item.tensor;
  return t.defined() ? static_cast<std::uint64_t>(t.numel()) * t.element_size() : 0;
}

// Greedy packing in the given order: a new shard starts when the next tensor
// would pass the limit, so a tensor larger than the limit sits alone.
std::vector<NamedTensors> pack(const NamedTensors& tensors, std::uint64_t max_shard_size) {
  std::vector<NamedTensors> shards;
  std::uint64_t used = 0;
  for (const auto& item : tensors.items()) {
    const std::uint64_t size = data_bytes(item);
    if (shards.empty() || (shards.back().size() > 0 && used + size > max_shard_size)) {
      shards.emplace_back();
      used = 0;
    }
    if (item.raw_dtype) {
      shards.back().add_raw(item.name, *item.raw_dtype, item.raw_shape, item.tensor);
    } else {
      shards.back().add(item.name, item.tensor);
    }
    used += size;
  }
  return shards;
}

std::string index_json(const std::map<std::string, std::string>& weight_map, std::uint64_t total_size,
                       const std::string& set_id) {
  nlohmann::ordered_json index;
  index["metadata"]["total_size"] = total_size;
  index["metadata"][std::string(kShardSetKey)] = set_id;
  index["weight_map"] = weight_map;
  return index.dump(2) + "\n";
}

}  // namespace detail

using namespace detail;

// ---------------------------------------------------------------------------
// The index

std::vector<std::string> ShardIndex::shard_files() const {
  std::set<std::string> files;
  for (const auto& [tensor, file] : weight_map) files.insert(file);
  return {files.begin(), files.end()};
}

ShardIndex parse_index(std::string_view json, const std::string& file) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(json.begin(), json.end());
  } catch (const nlohmann::json::exception& e) {
    throw index_error(file, "", std::string("the index is not JSON: ") + e.what());
  }
  if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object())
    throw index_error(file, "", "the index has no \"weight_map\" object");
  ShardIndex index;
  for (const auto& entry : doc["weight_map"].items()) {
    const std::string& tensor = entry.key();
    if (!entry.value().is_string()) throw index_error(file, tensor, "its shard is not a file name");
    std::string name = entry.value().get<std::string>();
    if (auto why = unsafe_shard_name(name))
      throw index_error(file, tensor, "shard name '" + name + "' " + *why);
    index.weight_map.emplace(tensor, std::move(name));
  }
  if (doc.contains("metadata") && !doc["metadata"].is_null()) {
    if (!doc["metadata"].is_object()) throw index_error(file, "", "\"metadata\" is not an object");
    for (const auto& entry : doc["metadata"].items()) {
      const std::string& key = entry.key();
      const nlohmann::json& value = entry.value();
      if (key == "total_size") {
        index.total_size = parse_total_size(value, file);
      } else {
        index.metadata.emplace(key, value.is_string() ? value.get<std::string>() : value.dump());
      }
    }
  }
  return index;
}

ShardIndex read_index(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::Io, path, "", std::string("cannot open: ") + std::strerror(errno));
  const std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(ErrorCode::Io, path, "", "cannot read the index");
  return parse_index(json, path);
}

// ---------------------------------------------------------------------------
// ShardedOpen

ShardedOpen::ShardedOpen(const std::string& path, LoadOptions options) : path_(path) {
  std::error_code ec;  // a path that cannot be inspected fails below, when it is opened
  if (fs::is_directory(path, ec)) {
    const fs::path index = fs::path(path) / kIndexFileName;
    const fs::path single = fs::path(path) / kSingleFileName;
    if (fs::exists(index, ec)) {
      path_ = index.string();
    } else if (fs::exists(single, ec)) {
      path_ = single.string();
    } else {
      throw Error(ErrorCode::Io, path, "",
                  "the folder holds neither " + std::string(kIndexFileName) + " nor " +
                      std::string(kSingleFileName));
    }
  }
  if (ends_with(path_, ".json")) {
    open_index(path_, options);
  } else {
    add_shard(SafeOpen(path_, std::move(options)));
    metadata_ = shards_.front().metadata();
  }
}

ShardedOpen::ShardedOpen(SafeOpen file) : path_(file.path()) {
  metadata_ = file.metadata();
  add_shard(std::move(file));
}

void ShardedOpen::add_shard(SafeOpen shard) {
  for (const TensorInfo& info : shard.header().tensors()) {
    const auto [it, fresh] = shard_of_.emplace(info.name, shards_.size());
    if (!fresh)
      throw index_error(path_, info.name,
                        "in two shards: " + shards_[it->second].path() + " and " + shard.path());
  }
  shards_.push_back(std::move(shard));
}

void ShardedOpen::open_index(const std::string& index_path, const LoadOptions& options) {
  index_ = read_index(index_path);
  const fs::path folder = fs::path(index_path).parent_path();
  const auto set_id = index_->metadata.find(std::string(kShardSetKey));
  for (const std::string& file : index_->shard_files()) {
    SafeOpen shard((folder / file).string(), options);
    for (const TensorInfo& info : shard.header().tensors()) {
      const auto listed = index_->weight_map.find(info.name);
      if (listed == index_->weight_map.end())
        throw index_error(path_, info.name, "shard " + file + " holds it but the index does not list it");
      if (listed->second != file)
        throw index_error(path_, info.name,
                          "the index lists it in " + listed->second + " but it is in " + file);
    }
    if (set_id != index_->metadata.end()) {
      const auto found = shard.metadata().find(std::string(kShardSetKey));
      if (found == shard.metadata().end() || found->second != set_id->second)
        throw index_error(path_, "",
                          "shard " + file + " belongs to another save than the index (" +
                              std::string(kShardSetKey) + " " +
                              (found == shard.metadata().end() ? "absent" : found->second) + ", index " +
                              set_id->second + "): an interrupted save mixed two checkpoints");
    }
    add_shard(std::move(shard));
  }
  for (const auto& [tensor, file] : index_->weight_map)
    if (!shard_of_.count(tensor)) throw index_error(path_, tensor, "listed in " + file + " but absent from it");
  metadata_ = index_->metadata;
  if (index_->total_size) metadata_["total_size"] = std::to_string(*index_->total_size);
}

std::vector<std::string> ShardedOpen::keys() const {
  std::vector<std::string> out;
  out.reserve(size());
  for (const SafeOpen& shard : shards_)
    for (const TensorInfo& info : shard.header().tensors()) out.push_back(info.name);
  return out;
}

const SafeOpen& ShardedOpen::shard_of(const std::string& name) const {
  const auto it = shard_of_.find(name);
  if (it == shard_of_.end())
    throw Error(ErrorCode::TensorNotFound, path_, name, "the checkpoint does not contain this tensor");
  return shards_[it->second];
}

TensorDict ShardedOpen::tensors() const {
  TensorDict out;
  out.reserve(size());
  for (const SafeOpen& shard : shards_)
    for (const TensorInfo& info : shard.header().tensors()) out.insert(info.name, shard.get_tensor(info.name));
  return out;
}

// ---------------------------------------------------------------------------
// Saving

std::vector<std::string> save_sharded(const NamedTensors& tensors, const std::string& folder,
                                      const std::optional<Metadata>& metadata,
                                      const ShardedSaveOptions& options) {
  if (options.max_shard_size() == 0)
    throw Error(ErrorCode::InvalidArgument, folder, "", "max_shard_size must be positive");
  const Deduplicated unique = deduplicate_shared(tensors);
  if (!unique.aliases.empty()) {
    const auto& [removed, kept] = *unique.aliases.begin();
    throw Error(ErrorCode::InvalidArgument, folder, removed,
                "shares memory with tensor '" + kept +
                    "'; saving both would store the bytes twice: save one (see deduplicate_shared)");
  }
  Metadata meta = metadata.value_or(Metadata{});
  meta.emplace("format", "pt");
  const std::vector<NamedTensors> shards = pack(tensors, options.max_shard_size());
  const std::string index_path = (fs::path(folder) / kIndexFileName).string();
  remove_dead_writers_shards(folder);
  const std::set<std::string> previous = current_checkpoint_files(folder);

  const SaveOptions file_options = SaveOptions().fsync(options.fsync());
  if (shards.size() <= 1) {
    save_file(shards.empty() ? NamedTensors{} : shards.front(), (fs::path(folder) / kSingleFileName).string(),
              meta, SaveOptions(file_options).progress(options.progress()));
    // An index left by an earlier sharded save would take precedence over the new file.
    std::error_code ec;
    fs::remove(index_path, ec);
    if (ec) throw Error(ErrorCode::Io, index_path, "", "cannot remove the stale index: " + ec.message());
    std::vector<std::string> names = {std::string(kSingleFileName)};
    remove_replaced_files(folder, previous, names);
    return names;
  }

  const std::string set_id = new_set_id();
  meta[std::string(kShardSetKey)] = set_id;
  std::vector<std::string> names;
  for (std::size_t i = 0; i < shards.size(); ++i) names.push_back(shard_file_name(i, shards.size()));
  std::uint64_t total = 0, written = 0;  // tensor bytes, over every shard
  for (const NamedTensors& shard : shards)
    for (const auto& item : shard.items()) total += data_bytes(item);
  StagedShards staged(folder, set_id);
  for (std::size_t i = 0; i < shards.size(); ++i) {
    SaveOptions shard_options = file_options;
    if (options.progress())
      shard_options.progress([&](std::uint64_t done, std::uint64_t) { options.progress()(written + done, total); });
    staged.write(shards[i], names[i], meta, shard_options);
    for (const auto& item : shards[i].items()) written += data_bytes(item);
  }
  staged.commit(options.fsync());
  std::map<std::string, std::string> weight_map;
  for (std::size_t i = 0; i < shards.size(); ++i)
    for (const auto& item : shards[i].items()) weight_map.emplace(item.name, names[i]);
  const std::string json = index_json(weight_map, total, set_id);
  AtomicFile index(index_path, AtomicFile::Options{options.fsync()});
  index.write(json.data(), json.size());
  index.commit();
  remove_replaced_files(folder, previous, names);
  names.emplace_back(kIndexFileName);
  return names;
}

}  // namespace safetensors
