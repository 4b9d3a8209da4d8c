// Sharded checkpoints: the index, a lazy view over its shards that trusts
// nothing the index says without checking it against the shards' headers, and
// a writer that never lets the index point into a half-written set.

#include "safetensors/sharded.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>

#include "safetensors/error.hpp"
#include "safetensors/module.hpp"
#include "safetensors/writer.hpp"
#include "detail/durable.hpp"
#include "detail/json_nonfinite.hpp"
#include "posix.hpp"
#include "save_internal.hpp"
#include "sharded_internal.hpp"

namespace safetensors {

namespace fs = std::filesystem;

namespace {

// An index's text: a regular file (a FIFO or a device is refused, never read
// or waited on) of at most kMaxIndexSize bytes.
std::string read_index_text(const std::string& path) {
  const FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (fd.get() < 0) throw Error(ErrorCode::Io, path, "", "cannot open: " + errno_text(errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw Error(ErrorCode::Io, path, "", "cannot stat: " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) throw Error(ErrorCode::InvalidIndex, path, "", "the index is not a regular file");
  if (static_cast<std::uint64_t>(st.st_size) > kMaxIndexSize)
    throw Error(ErrorCode::InvalidIndex, path, "",
                "the index has " + std::to_string(st.st_size) + " bytes, more than the limit of " +
                    std::to_string(kMaxIndexSize));
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::pread(fd.get(), text.data() + done, text.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(ErrorCode::Io, path, "", "cannot read the index: " + errno_text(errno));
    if (n == 0) break;  // shrunk meanwhile: what is there is parsed
    done += static_cast<std::size_t>(n);
  }
  text.resize(done);
  return text;
}

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
  // Some writers store it as a float; accept it while it is a whole number
  // that fits (converting a double of 2^64 or more is undefined behaviour).
  if (value.is_number_float()) {
    const double d = value.get<double>();
    if (d >= 0 && d < 18446744073709551616.0 && d == std::floor(d)) return static_cast<std::uint64_t>(d);
  }
  throw index_error(file, "", "metadata.total_size is not a byte count: " + value.dump());
}

}  // namespace

namespace detail {

std::string shard_file_name(std::size_t i, std::size_t n) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return name;
}

// A save's files are shards (a lock records nothing else), and those the
// folder's checkpoint occupies are in use.
void remove_dead_writers_shards(const std::string& folder) {
  const SavedFiles shards{[](const std::string& name) { return !unsafe_shard_name(name); },
                          [&] { return current_checkpoint(folder).occupied; }};
  remove_dead_writers_files(folder, &shards);
}

// The files of the checkpoint the folder holds now, as a loader would pick it:
// the shards its index lists, or else model.safetensors. An index this reader
// refuses (a total_size other software wrote as a string, say) may still load
// in a loader that reads only its weight_map: the names its weight_map gives,
// as far as they can be read, are the checkpoint's files, and any visible
// *.safetensors file may be one of them, so a new shard never takes such a name
// before the switch. Hidden files are not: staged shards and temporary files
// are hidden, and a loader never picks them unless an index names them.
Checkpoint current_checkpoint(const std::string& folder) {
  Checkpoint out;
  std::error_code ec;
  const fs::path index = fs::path(folder) / kIndexFileName;
  if (fs::exists(index, ec)) {
    try {
      const std::vector<std::string> shards = read_index(index.string()).shard_files();
      out.files = {shards.begin(), shards.end()};
      out.occupied = out.files;
      return out;
    } catch (const Error&) {
    }
    std::string text;
    try {
      text = read_index_text(index.string());
    } catch (const Error&) {  // unreadable: every visible shard counts as the old checkpoint's
    }
    const nlohmann::json doc = detail::json_depth(text) > detail::kMaxJsonDepth
                                   ? nlohmann::json(nlohmann::json::value_t::discarded)
                                   : nlohmann::json::parse(text, nullptr, false);
    if (doc.is_object() && doc.contains("weight_map") && doc["weight_map"].is_object())
      for (const auto& entry : doc["weight_map"].items())
        if (entry.value().is_string() && !unsafe_shard_name(entry.value().get<std::string>()))
          out.files.insert(fs::path(entry.value().get<std::string>()).lexically_normal().generic_string());
    out.occupied = out.files;
    for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.front() != '.' && ends_with(name, kShardExtension)) out.occupied.insert(name);
    }
    return out;
  }
  if (fs::exists(fs::path(folder) / kSingleFileName, ec)) out.files = out.occupied = {std::string(kSingleFileName)};
  return out;
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

std::string published_name(const std::string& shard, const std::string& set_id, const Checkpoint& previous) {
  return previous.occupied.count(shard) ? staged_name(shard, set_id) : shard;
}

StagedShards::StagedShards(std::string folder, std::string set_id)
    : folder_(std::move(folder)), set_id_(std::move(set_id)), lock_(folder_, set_id_) {}

StagedShards::~StagedShards() {
  for (std::size_t i = published_; i < files_.size(); ++i) ::unlink(files_[i].first.c_str());
}

void StagedShards::write(const NamedTensors& tensors, const std::string& name, const Metadata& metadata,
                         const SaveOptions& options) {
  std::string staged = (fs::path(folder_) / staged_name(name, set_id_)).string();
  // Leaves nothing if it fails; takes the permissions of the shard it replaces.
  save_file_replacing(tensors, staged, (fs::path(folder_) / name).string(), metadata, options);
  files_.emplace_back(std::move(staged), name);
}

void StagedShards::commit(bool fsync, const Checkpoint& previous) {
  // Undoes this commit: the previous checkpoint stays the folder's only one.
  auto unpublish = [&] {
    for (std::size_t i = 0; i < published_; ++i)
      if (!previous.occupied.count(files_[i].second)) ::unlink((fs::path(folder_) / files_[i].second).c_str());
    published_ = 0;
  };
  std::set<std::string> may_stay = previous.files;
  for (const auto& [staged, name] : files_) may_stay.insert(name);
  lock_.record(may_stay);
  for (; published_ < files_.size(); ++published_) {
    const auto& [staged, name] = files_[published_];
    if (previous.occupied.count(name)) continue;  // see published_name
    const std::string target = (fs::path(folder_) / name).string();
    if (std::rename(staged.c_str(), target.c_str()) != 0) {
      const int err = errno;
      unpublish();
      throw Error(ErrorCode::Io, target, "", "cannot rename the shard into place: " + errno_text(err));
    }
  }
  if (fsync) {
    try {
      fsync_folder(folder_);
    } catch (const Error&) {
      unpublish();
      throw;
    }
  }
}

std::vector<std::string> commit_set(const std::string& folder, const std::vector<std::string>& names,
                                    const std::map<std::string, std::string>& weight_map, std::uint64_t total_size,
                                    const std::string& set_id, const Checkpoint& previous, bool fsync) {
  const std::string index_path = (fs::path(folder) / kIndexFileName).string();
  const auto path_of = [&](const std::string& name) { return (fs::path(folder) / name).string(); };
  std::map<std::string, std::size_t> shard_index;
  for (std::size_t i = 0; i < names.size(); ++i) shard_index.emplace(names[i], i);
  // The index's text when the shards have the names `as`.
  const auto index_text = [&](const std::vector<std::string>& as) {
    std::map<std::string, std::string> renamed;
    for (const auto& [tensor, file] : weight_map) renamed.emplace(tensor, as[shard_index.at(file)]);
    return index_json(renamed, total_size, set_id);
  };
  std::vector<std::string> listed;
  for (const std::string& name : names) listed.push_back(published_name(name, set_id, previous));

  // The switch: until the index is renamed into place the previous checkpoint
  // loads, untouched; from then on this one does.
  {
    const std::string json = index_text(listed);
    AtomicFile index(index_path, AtomicFile::Options{fsync});
    try {
      index.write(json.data(), json.size());
      index.commit();
    } catch (const Error&) {
      if (!index.committed())
        for (const std::string& name : listed) ::unlink(path_of(name).c_str());
      throw;
    }
  }
  // The files at the new names that were kept for the switch go with the
  // previous checkpoint's.
  std::set<std::string> replaced = previous.files;
  for (const std::string& name : names)
    if (previous.occupied.count(name)) replaced.insert(name);
  remove_replaced_files(folder, replaced, listed);

  // Shards published under their staged names take their final names, whose
  // files of the previous checkpoint are gone now: a second name each, the
  // index naming those, then the staged names go. Any moment of it loads.
  std::vector<std::size_t> moved, linked;
  for (std::size_t i = 0; i < names.size(); ++i)
    if (listed[i] != names[i]) moved.push_back(i);
  if (moved.empty()) return names;
  for (const std::size_t i : moved) {
    if (::linkat(AT_FDCWD, path_of(listed[i]).c_str(), AT_FDCWD, path_of(names[i]).c_str(), 0) != 0) break;
    linked.push_back(i);
  }
  bool renamed = linked.size() == moved.size();
  if (renamed) {
    if (fsync) fsync_folder(folder);
    const std::string json = index_text(names);
    AtomicFile index(index_path, AtomicFile::Options{fsync});
    try {
      index.write(json.data(), json.size());
      index.commit();
    } catch (const Error&) {
      if (index.committed()) throw;
      renamed = false;
    }
  }
  if (!renamed) {
    // No hard links on this filesystem (FAT, some FUSE ones), or no room for
    // the second index: the shards keep the names the index gives them.
    for (const std::size_t i : linked) ::unlink(path_of(names[i]).c_str());
    return listed;
  }
  for (const std::size_t i : moved) ::unlink(path_of(listed[i]).c_str());
  return names;
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
  // Its metadata values are written back as JSON text, recursively.
  if (detail::json_depth(json) > detail::kMaxJsonDepth)
    throw index_error(file, "", "the index nests deeper than " + std::to_string(detail::kMaxJsonDepth) + " levels");
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
    // One spelling per file ("./model-1.safetensors" is "model-1.safetensors"),
    // so that a save compares the files an index lists by name.
    name = std::filesystem::path(name).lexically_normal().generic_string();
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

ShardIndex read_index(const std::string& path) { return parse_index(read_index_text(path), path); }

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
    // A shard that is not there makes the set invalid, as one that does not
    // match the index does; one that cannot be read is an I/O error.
    const fs::path shard_path = folder / file;
    std::error_code ec;
    if (!fs::exists(shard_path, ec) && !ec)
      throw index_error(path_, "", "lists shard " + file + ", which does not exist");
    SafeOpen shard(shard_path.string(), options);
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

const SafeOpen& ShardedOpen::shard_of(const std::string& name) const& {
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
  std::vector<NamedTensors> shards = pack(tensors, options.max_shard_size());
  const std::string index_path = (fs::path(folder) / kIndexFileName).string();
  remove_dead_writers_shards(folder);
  const Checkpoint previous = current_checkpoint(folder);

  const SaveOptions file_options = SaveOptions().fsync(options.fsync());
  std::error_code ec;
  const bool over_a_set = fs::exists(fs::symlink_status(index_path, ec));
  if (shards.size() <= 1 && !over_a_set) {
    // No index to switch away from: the file is renamed over model.safetensors,
    // which is never missing and carries no shard_set (the switch below would
    // remove it before linking the new one, and leave a staged name and an
    // index where the filesystem has no hard links). Stages nothing: the lock
    // is the record of what a death leaves, the new file beside the previous
    // set included. A model.safetensors already there
    // that the previous checkpoint does not use is not this save's to remove
    // until this save has replaced it.
    const std::string single = (fs::path(folder) / kSingleFileName).string();
    WriterLock lock(folder, new_set_id());
    std::set<std::string> leaves = previous.files;
    if (!fs::exists(fs::symlink_status(single, ec))) leaves.emplace(kSingleFileName);
    lock.record(leaves);
    save_file(shards.empty() ? NamedTensors{} : shards.front(), single, meta,
              SaveOptions(file_options).progress(options.progress()));
    if (leaves.emplace(kSingleFileName).second) lock.record(leaves);
    // An index left by an earlier sharded save would take precedence over the new file.
    fs::remove(index_path, ec);
    if (ec) throw Error(ErrorCode::Io, index_path, "", "cannot remove the stale index: " + ec.message());
    std::vector<std::string> names = {std::string(kSingleFileName)};
    remove_replaced_files(folder, previous.files, names);
    return names;
  }

  // One file over a set: the new file may take the name of a file the set
  // uses (its index may even list model.safetensors), so it goes through the
  // set's switch, as a set of one shard named model.safetensors, and the index
  // is removed only once that set is in place. A kill leaves the old set, or
  // the new file with or without an index that names it: never a mix.
  const bool single = shards.size() <= 1;
  if (shards.empty()) shards.emplace_back();
  const std::string set_id = new_set_id();
  meta[std::string(kShardSetKey)] = set_id;
  std::vector<std::string> names;
  if (single) names.emplace_back(kSingleFileName);
  for (std::size_t i = 0; !single && i < shards.size(); ++i) names.push_back(shard_file_name(i, shards.size()));
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
  staged.commit(options.fsync(), previous);
  std::map<std::string, std::string> weight_map;
  for (std::size_t i = 0; i < shards.size(); ++i)
    for (const auto& item : shards[i].items()) weight_map.emplace(item.name, names[i]);
  names = commit_set(folder, names, weight_map, total, set_id, previous, options.fsync());
  if (single && names.front() == kSingleFileName) {
    // The set of one names model.safetensors: without its index, that file is
    // the same checkpoint. Should the removal fail, the set still loads.
    fs::remove(index_path, ec);
    if (!ec) return names;
  }
  names.emplace_back(kIndexFileName);
  return names;
}

}  // namespace safetensors
