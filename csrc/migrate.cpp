// Reading torch.save files, torch::save archives and safetensors files into
// named tensors, and converting and comparing them. The pickle is interpreted by
// csrc/pickle (torch-free); this file turns its tensor descriptors into
// at::Tensors over the memory-mapped archive entries.

#include "safetensors/migrate.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/serialize/input-archive.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>

#include "pickle/unpickler.hpp"
#include "pickle/zip.hpp"
#include "safetensors/error.hpp"
#include "safetensors/load.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "safetensors/source.hpp"
#include "safetensors/torch_dtype.hpp"

namespace safetensors {
namespace {

using pickle::Value;

// The first pickle of a legacy torch.save file: PROTO 2..5, a FRAME from
// protocol 4 on, then LONG1 of 10 bytes holding torch's magic number
// 0x1950a86a20f9469cfc6c, then STOP.
constexpr unsigned char kLegacyMagic[] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, '.'};
// The legacy format's protocol version (torch.serialization.PROTOCOL_VERSION).
constexpr std::int64_t kLegacyProtocolVersion = 1001;
// Name given to a checkpoint that is a single tensor (torch.save(t, f)).
constexpr const char* kLoneTensorName = "tensor";

// ---------------------------------------------------------------------------
// Format detection

// The archive folder torch.save used: the part before "/data.pkl" of the one
// top-level data.pkl (any name: torch uses the file's stem).
std::string archive_prefix(const pickle::ZipArchive& zip) {
  std::string prefix;
  for (const pickle::ZipEntry& e : zip.entries()) {
    const std::size_t slash = e.name.find('/');
    if (slash == std::string::npos || e.name.compare(slash, std::string::npos, "/data.pkl") != 0) continue;
    if (!prefix.empty())
      throw Error(ErrorCode::InvalidCheckpoint, zip.source()->path(), "",
                  "the archive holds more than one data.pkl");
    prefix = e.name.substr(0, slash + 1);
  }
  if (prefix.empty())
    throw Error(ErrorCode::InvalidCheckpoint, zip.source()->path(), "",
                "a zip archive without data.pkl is not a torch checkpoint");
  return prefix;
}

// TorchScript archives (what torch::save writes from C++) hold code and
// constants beside data.pkl; Python's torch.save archives never do.
bool is_torchscript(const pickle::ZipArchive& zip, const std::string& prefix) {
  for (const pickle::ZipEntry& e : zip.entries())
    if (e.name == prefix + "constants.pkl" || e.name.compare(0, prefix.size() + 5, prefix + "code/") == 0)
      return true;
  return false;
}

bool is_safetensors(const Source& source) {
  if (source.size() < kHeaderPrefixSize + 2) return false;
  unsigned char prefix[kHeaderPrefixSize + 1];
  source.read(0, prefix, sizeof prefix);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];
  return n <= kMaxHeaderSize && n <= source.size() - kHeaderPrefixSize && prefix[8] == '{';
}

// Where the magic number's pickle of a legacy file ends, or 0 when the file
// does not start with one.
std::size_t legacy_magic_end(const Source& source) {
  unsigned char head[2 + 9 + sizeof kLegacyMagic];
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(source.size(), sizeof head));
  source.read(0, head, n);
  if (n < 2 || head[0] != 0x80 || head[1] < 2 || head[1] > 5) return 0;
  std::size_t at = 2;
  if (n > at && head[at] == 0x95) at += 9;  // FRAME and its 8-byte length
  if (n < at + sizeof kLegacyMagic || std::memcmp(head + at, kLegacyMagic, sizeof kLegacyMagic) != 0) return 0;
  return at + sizeof kLegacyMagic;
}

bool is_legacy(const Source& source) { return legacy_magic_end(source) != 0; }

CheckpointFormat detect(const std::shared_ptr<Source>& source) {
  if (pickle::looks_like_zip(*source)) {
    const pickle::ZipArchive zip(source);
    return is_torchscript(zip, archive_prefix(zip)) ? CheckpointFormat::TorchArchive : CheckpointFormat::TorchZip;
  }
  if (is_legacy(*source)) return CheckpointFormat::TorchLegacy;
  if (is_safetensors(*source)) return CheckpointFormat::Safetensors;
  return CheckpointFormat::Unknown;
}

// ---------------------------------------------------------------------------
// torch.save zip archives

// Where a storage's bytes lie in the file.
struct Span {
  std::uint64_t offset;
  std::uint64_t size;
};
using LocateStorage = std::function<std::optional<Span>(const std::string& key)>;

// Storages as flat tensors over the mapped file (an archive entry, or a
// stretch of a legacy file), made once per key so that views of one storage
// share it (and aliasing is visible to the saver).
class Storages {
 public:
  Storages(std::shared_ptr<Source> source, LocateStorage locate)
      : source_(std::move(source)), locate_(std::move(locate)) {}

  at::Tensor get(const pickle::StorageRef& ref, const std::string& tensor) {
    auto it = made_.find(ref.key);
    if (it != made_.end()) {
      if (it->second.scalar_type() != torch_dtype(ref, tensor))
        fail(tensor, "storage '" + ref.key + "' is used with two different dtypes");
      // Each tensor was checked against the size its own reference declares.
      if (static_cast<std::uint64_t>(it->second.numel()) != ref.numel)
        fail(tensor, "storage '" + ref.key + "' is declared with two different sizes (" +
                         std::to_string(it->second.numel()) + " and " + std::to_string(ref.numel) + " elements)");
      return it->second;
    }
    return made_.emplace(ref.key, make(ref, tensor)).first->second;
  }

 private:
  [[noreturn]] void fail(const std::string& tensor, const std::string& detail) const {
    throw Error(ErrorCode::TensorInvalidInfo, source_->path(), tensor, detail);
  }

  c10::ScalarType torch_dtype(const pickle::StorageRef& ref, const std::string& tensor) const {
    const auto type = to_torch_dtype(ref.dtype);
    if (!type)
      throw Error(ErrorCode::UnsupportedDtype, source_->path(), tensor,
                  std::string(dtype_name(ref.dtype)) + " is not a dtype of this LibTorch");
    return *type;
  }

  at::Tensor make(const pickle::StorageRef& ref, const std::string& tensor) {
    const std::optional<Span> entry = locate_(ref.key);
    if (!entry) fail(tensor, "storage '" + ref.key + "' is missing from the file");
    const std::uint64_t element = dtype_bits(ref.dtype) / 8;
    const std::uint64_t needed = ref.numel * element;  // checked by the unpickler
    if (entry->size < needed)
      fail(tensor, "storage '" + ref.key + "' holds " + std::to_string(entry->size) + " bytes but " +
                       std::to_string(ref.numel) + " elements need " + std::to_string(needed));
    const auto options = at::TensorOptions().dtype(torch_dtype(ref, tensor));
    const std::shared_ptr<Source>& source = source_;
    void* data = source->data() + entry->offset;
    // Hand-made archives need not align entries; torch.save aligns them to 64.
    if (needed == 0 || reinterpret_cast<std::uintptr_t>(data) % element != 0) {
      at::Tensor owned = at::empty({static_cast<std::int64_t>(ref.numel)}, options);
      if (needed) std::memcpy(owned.data_ptr(), data, needed);
      return owned;
    }
    return at::from_blob(data, {static_cast<std::int64_t>(ref.numel)}, [source](void*) {}, options);
  }

  std::shared_ptr<Source> source_;
  LocateStorage locate_;
  std::unordered_map<std::string, at::Tensor> made_;
};

std::string key_name(const Value& key) {
  if (key.kind == Value::Kind::String) return key.text;
  if (key.kind == Value::Kind::Int) return std::to_string(key.integer);
  return "[" + pickle::describe(key) + "]";
}

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

// Walks the value tree into dotted names. The tree may share subtrees (or even
// hold cycles) through the pickle's memo, so the walk bounds both its depth and
// the number of visits (a legitimate pickle spends at least a byte per edge).
class Flattener {
 public:
  Flattener(Storages& storages, const std::string& file, std::size_t max_visits, Checkpoint& out)
      : storages_(storages), file_(file), visits_left_(max_visits), out_(out) {}

  void walk(const Value& v, const std::string& name, std::size_t depth) {
    if (depth > kMaxCheckpointDepth)
      throw Error(ErrorCode::LimitExceeded, file_, name,
                  "nesting deeper than " + std::to_string(kMaxCheckpointDepth));
    if (visits_left_-- == 0)
      throw Error(ErrorCode::LimitExceeded, file_, name, "the pickle refers to its values too many times");
    switch (v.kind) {
      case Value::Kind::Tensor: return add_tensor(*v.tensor, name.empty() ? kLoneTensorName : name);
      case Value::Kind::Dict: return walk_container(v, name, depth, true);
      case Value::Kind::List:
      case Value::Kind::Tuple: return walk_container(v, name, depth, false);
      default: out_.non_tensors.push_back({name, pickle::describe(v)});
    }
  }

 private:
  // A container without tensors is reported as one entry, not element by element.
  void walk_container(const Value& v, const std::string& name, std::size_t depth, bool dict) {
    const std::size_t tensors_before = out_.tensors.size(), reported_before = out_.non_tensors.size();
    if (dict) {
      for (const auto& [key, value] : v.entries) walk(*value, join(name, key_name(*key)), depth + 1);
    } else {
      for (std::size_t i = 0; i < v.items.size(); ++i) walk(*v.items[i], join(name, std::to_string(i)), depth + 1);
    }
    if (out_.tensors.size() == tensors_before && !name.empty()) {
      out_.non_tensors.resize(reported_before);
      out_.non_tensors.push_back({name, pickle::describe(v)});
    }
  }

  void add_tensor(const pickle::TensorRef& ref, const std::string& name) {
    if (out_.tensors.contains(name))
      throw Error(ErrorCode::DuplicateKey, file_, name, "two entries flatten to this name");
    at::Tensor storage = storages_.get(ref.storage, name);
    const std::vector<std::int64_t> size(ref.size.begin(), ref.size.end());
    const std::vector<std::int64_t> stride(ref.stride.begin(), ref.stride.end());
    out_.tensors.insert(name, storage.as_strided(size, stride, static_cast<std::int64_t>(ref.offset)));
  }

  Storages& storages_;
  const std::string& file_;
  std::size_t visits_left_;
  Checkpoint& out_;
};

// The value at `key` (a path of dict keys), or an error listing what is there.
const Value& select(const Value& root, const std::vector<std::string>& key, const std::string& file) {
  const Value* node = &root;
  std::string path;
  for (const std::string& part : key) {
    if (node->kind != Value::Kind::Dict)
      throw Error(ErrorCode::TensorNotFound, file, "", "'" + path + "' is a " + pickle::describe(*node) + ", not a dict");
    const Value* next = nullptr;
    std::string keys;
    for (const auto& [k, v] : node->entries) {
      if (key_name(*k) == part) next = v;
      if (keys.size() < 200) keys += (keys.empty() ? "" : ", ") + key_name(*k);
    }
    path = join(path, part);
    if (!next) throw Error(ErrorCode::TensorNotFound, file, "", "no key '" + path + "' (keys: " + keys + ")");
    node = next;
  }
  return *node;
}

void read_torch_zip(const std::shared_ptr<Source>& source, const CheckpointOptions& options, Checkpoint& out) {
  const pickle::ZipArchive zip(source);
  const std::string prefix = archive_prefix(zip);
  if (const pickle::ZipEntry* order = zip.find(prefix + "byteorder"); order && zip.read(*order) != "little")
    throw Error(ErrorCode::InvalidCheckpoint, source->path(), "",
                "a big-endian checkpoint; re-save it on a little-endian machine");
  const std::string data = zip.read(*zip.find(prefix + "data.pkl"));
  const pickle::Pickle p = pickle::unpickle(data, source->path());
  Storages storages(source, [&](const std::string& key) -> std::optional<Span> {
    const pickle::ZipEntry* entry = zip.find(prefix + "data/" + key);
    if (!entry) return std::nullopt;
    return Span{entry->offset, entry->size};
  });
  Flattener flattener(storages, source->path(), data.size() + 1, out);
  flattener.walk(select(*p.root, options.key(), source->path()), "", 0);
}

// ---------------------------------------------------------------------------
// Legacy torch.save files (torch < 1.6, or _use_new_zipfile_serialization=False)
//
// Five pickles back to back: the magic number, the protocol version (1001),
// sys_info (byte order and C type sizes), the object (storages as persistent
// ids), and the list of storage keys; then each listed storage in that
// order: its element count as 8 little-endian bytes, then its elements.

void read_torch_legacy(const std::shared_ptr<Source>& source, const CheckpointOptions& options, Checkpoint& out) {
  const std::string& file = source->path();
  const std::string_view data(reinterpret_cast<const char*>(source->data()), static_cast<std::size_t>(source->size()));
  auto bad = [&](const std::string& what) -> void {
    throw Error(ErrorCode::InvalidCheckpoint, file, "", "legacy torch.save file: " + what);
  };
  std::size_t offset = legacy_magic_end(*source);
  const pickle::Pickle version = pickle::unpickle(data, offset, file);
  if (version.root->kind != Value::Kind::Int || version.root->integer != kLegacyProtocolVersion)
    bad("protocol version " +
        (version.root->kind == Value::Kind::Int ? std::to_string(version.root->integer)
                                                : "given as a " + pickle::describe(*version.root)) +
        ", not " + std::to_string(kLegacyProtocolVersion));
  const pickle::Pickle sys_info = pickle::unpickle(data, offset, file);
  bool little_endian = false;
  if (sys_info.root->kind == Value::Kind::Dict)
    for (const auto& [key, value] : sys_info.root->entries)
      if (key->kind == Value::Kind::String && key->text == "little_endian" && value->kind == Value::Kind::Bool)
        little_endian = value->boolean;
  if (!little_endian)
    throw Error(ErrorCode::InvalidCheckpoint, file, "",
                "a big-endian checkpoint (or one that does not say); re-save it on a little-endian machine");
  const std::size_t object_start = offset;
  const pickle::Pickle p = pickle::unpickle(data, offset, file);
  const std::size_t object_size = offset - object_start;
  const pickle::Pickle keys = pickle::unpickle(data, offset, file);
  if (keys.root->kind != Value::Kind::List) bad("the storage key list is a " + pickle::describe(*keys.root));

  // Each storage's dtype and size, from its persistent ids (Storages checks
  // that they agree with each other).
  std::unordered_map<std::string, const pickle::StorageRef*> declared;
  for (const auto& v : p.arena)
    if (v->kind == Value::Kind::Storage) declared.emplace(v->storage->key, v->storage.get());
  std::unordered_map<std::string, Span> spans;
  for (const Value* key : keys.root->items) {
    if (key->kind != Value::Kind::String) bad("a storage key is a " + pickle::describe(*key));
    const auto found = declared.find(key->text);
    if (found == declared.end()) bad("storage '" + key->text + "' is listed but no tensor uses it");
    const pickle::StorageRef& ref = *found->second;
    if (data.size() - offset < 8) bad("the file ends before storage '" + key->text + "'");
    std::uint64_t count = 0;
    for (int i = 7; i >= 0; --i) count = (count << 8) | static_cast<unsigned char>(data[offset + i]);
    offset += 8;
    if (count != ref.numel)
      bad("storage '" + key->text + "' holds " + std::to_string(count) + " elements, its tensors say " +
          std::to_string(ref.numel));
    const std::uint64_t bytes = ref.numel * (dtype_bits(ref.dtype) / 8);  // bounded by the unpickler
    if (data.size() - offset < bytes)
      bad("the file ends inside storage '" + key->text + "' (" + std::to_string(bytes) + " bytes)");
    if (!spans.emplace(key->text, Span{offset, bytes}).second) bad("storage '" + key->text + "' is listed twice");
    offset += static_cast<std::size_t>(bytes);
  }
  Storages storages(source, [&](const std::string& key) -> std::optional<Span> {
    const auto it = spans.find(key);
    if (it == spans.end()) return std::nullopt;
    return it->second;
  });
  Flattener flattener(storages, file, object_size + 1, out);
  flattener.walk(select(*p.root, options.key(), file), "", 0);
}

// ---------------------------------------------------------------------------
// torch::save archives (TorchScript modules): read with LibTorch

void read_archive(torch::serialize::InputArchive& archive, const std::string& prefix, Checkpoint& out,
                  std::size_t depth, const std::string& file) {
  if (depth > kMaxCheckpointDepth)
    throw Error(ErrorCode::LimitExceeded, file, prefix, "nesting deeper than " + std::to_string(kMaxCheckpointDepth));
  for (const std::string& key : archive.keys()) {
    const std::string name = join(prefix, key);
    c10::IValue value;
    torch::serialize::InputArchive child;
    if (archive.try_read(key, value) && value.isTensor()) {
      out.tensors.insert(name, value.toTensor());
    } else if (archive.try_read(key, child)) {
      read_archive(child, name, out, depth + 1, file);
    } else {
      out.non_tensors.push_back({name, value.tagKind()});
    }
  }
}

void read_torch_archive(const std::string& path, const CheckpointOptions& options, Checkpoint& out) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
    torch::serialize::InputArchive* node = &archive;
    std::vector<torch::serialize::InputArchive> path_archives(options.key().size());
    for (std::size_t i = 0; i < options.key().size(); ++i) {
      if (!node->try_read(options.key()[i], path_archives[i]))
        throw Error(ErrorCode::TensorNotFound, path, "", "no submodule '" + options.key()[i] + "'");
      node = &path_archives[i];
    }
    read_archive(*node, "", out, 0, path);
  } catch (const c10::Error& e) {
    throw Error(ErrorCode::InvalidCheckpoint, path, "",
                std::string("LibTorch cannot read this torch::save archive: ") + e.what_without_backtrace());
  }
}

// ---------------------------------------------------------------------------
// Shared storages

// Identical views of one storage are aliases: one is kept. Different views
// whose bytes overlap cannot share bytes in a safetensors file: each is saved
// as its own copy. Disjoint views (chunks of one storage) need nothing.
void find_shared(Checkpoint& ckpt) {
  using View = std::tuple<const void*, std::int64_t, std::vector<std::int64_t>, std::vector<std::int64_t>,
                          c10::ScalarType>;
  struct Extent {
    std::uint64_t begin, end;
    std::string name;
  };
  std::map<View, std::string> first_of_view;
  std::map<const void*, std::vector<Extent>> extents;
  for (const auto& item : ckpt.tensors) {
    const at::Tensor& t = item.value();
    if (!t.has_storage() || t.numel() == 0) continue;
    const void* storage = t.storage().unsafeGetStorageImpl();
    auto [it, inserted] = first_of_view.emplace(
        View{storage, t.storage_offset(), t.sizes().vec(), t.strides().vec(), t.scalar_type()}, item.key());
    if (!inserted) {
      ckpt.aliases[item.key()] = it->second;
      continue;
    }
    std::uint64_t span = 1;
    for (std::int64_t d = 0; d < t.dim(); ++d)
      span += static_cast<std::uint64_t>(t.size(d) - 1) * static_cast<std::uint64_t>(t.stride(d));
    const std::uint64_t begin = static_cast<std::uint64_t>(t.storage_offset()) * t.element_size();
    extents[storage].push_back({begin, begin + span * t.element_size(), item.key()});
  }
  std::set<std::string> overlapping;
  for (auto& [storage, list] : extents) {
    std::sort(list.begin(), list.end(), [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
    std::uint64_t reach = 0;
    const Extent* reaching = nullptr;
    for (const Extent& e : list) {
      if (reaching && e.begin < reach) {
        overlapping.insert(e.name);
        overlapping.insert(reaching->name);
      }
      if (!reaching || e.end > reach) reach = e.end, reaching = &e;
    }
  }
  for (const auto& item : ckpt.tensors)
    if (overlapping.count(item.key())) ckpt.copied_views.push_back(item.key());
}

std::shared_ptr<Source> open_source(const std::string& path) { return open_file(path, Backend::Mmap); }

// Safetensors inputs: dtypes this LibTorch lacks arrive as raw bytes; their
// real dtypes are returned so that a conversion keeps them. Names that a
// state-dict saver removed as tied weights (metadata `removed -> kept`) come
// back as the kept tensor, so that every checkpoint lists every name.
std::map<std::string, TensorInfo> read_safetensors(const std::string& path, Checkpoint& out) {
  SafeOpen file(path, LoadOptions().unsupported_as_bytes(true));
  std::map<std::string, TensorInfo> raw;
  for (const TensorInfo& info : file.header().tensors()) {
    out.tensors.insert(info.name, file.get_tensor(info.name));
    if (!to_torch_dtype(info.dtype)) raw.emplace(info.name, info);
  }
  for (const auto& [removed, kept] : file.metadata())
    if (!out.tensors.contains(removed) && file.contains(kept) && !raw.count(kept))
      out.tensors.insert(removed, out.tensors[kept]);
  return raw;
}

Checkpoint read(const std::string& path, const CheckpointOptions& options,
                std::map<std::string, TensorInfo>* raw) {
  const std::shared_ptr<Source> source = open_source(path);
  Checkpoint ckpt;
  ckpt.format = detect(source);
  switch (ckpt.format) {
    case CheckpointFormat::TorchZip: read_torch_zip(source, options, ckpt); break;
    case CheckpointFormat::TorchArchive: read_torch_archive(path, options, ckpt); break;
    case CheckpointFormat::Safetensors: {
      if (!options.key().empty())
        throw Error(ErrorCode::InvalidArgument, path, "", "a safetensors file has no nested keys to select");
      auto found = read_safetensors(path, ckpt);
      if (raw) *raw = std::move(found);
      break;
    }
    case CheckpointFormat::TorchLegacy: read_torch_legacy(source, options, ckpt); break;
    case CheckpointFormat::Unknown:
      throw Error(ErrorCode::InvalidCheckpoint, path, "",
                  "not a safetensors file, torch.save file or torch::save archive");
  }
  find_shared(ckpt);
  return ckpt;
}

std::string shape_text(at::IntArrayRef sizes) {
  std::string out = "[";
  for (std::size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

std::string dtype_text(const at::Tensor& t) {
  const auto dtype = from_torch_dtype(t.scalar_type());
  return dtype ? std::string(dtype_name(*dtype)) : std::string(c10::toString(t.scalar_type()));
}

// Why two tensors of one name differ, or "" when they are bitwise identical.
std::string difference(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type()) return "dtype " + dtype_text(a) + " vs " + dtype_text(b);
  if (a.sizes() != b.sizes()) return "shape " + shape_text(a.sizes()) + " vs " + shape_text(b.sizes());
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  if (std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0) return "";
  if (a.is_floating_point() || a.is_complex()) {
    const double max = (ac.to(at::kDouble) - bc.to(at::kDouble)).abs().max().item<double>();
    return "values differ: max abs difference " + std::to_string(max);
  }
  if (a.scalar_type() != at::kBool) {
    const auto max = (ac.to(at::kLong) - bc.to(at::kLong)).abs().max().item<std::int64_t>();
    return "values differ: max abs difference " + std::to_string(max);
  }
  return "values differ";
}

}  // namespace

const char* to_string(CheckpointFormat format) noexcept {
  switch (format) {
    case CheckpointFormat::Safetensors: return "safetensors";
    case CheckpointFormat::TorchZip: return "torch.save (zip)";
    case CheckpointFormat::TorchLegacy: return "torch.save (legacy)";
    case CheckpointFormat::TorchArchive: return "torch::save archive";
    case CheckpointFormat::Unknown: return "unknown";
  }
  return "unknown";
}

CheckpointFormat detect_format(const std::string& path) { return detect(open_source(path)); }

Checkpoint read_checkpoint(const std::string& path, const CheckpointOptions& options) {
  return read(path, options, nullptr);
}

ConvertSummary convert_checkpoint(const std::string& in, const std::string& out, const ConvertOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  std::map<std::string, TensorInfo> raw;
  Checkpoint ckpt = read(in, CheckpointOptions().key(options.key()), &raw);
  const std::set<std::string> copies(ckpt.copied_views.begin(), ckpt.copied_views.end());

  ConvertSummary summary;
  NamedTensors tensors;
  for (const auto& item : ckpt.tensors) {
    if (ckpt.aliases.count(item.key())) continue;
    at::Tensor t = copies.count(item.key()) ? item.value().clone(at::MemoryFormat::Contiguous) : item.value();
    if (auto r = raw.find(item.key()); r != raw.end()) {
      tensors.add_raw(item.key(), r->second.dtype, r->second.shape, t);
    } else {
      tensors.add(item.key(), t);
    }
    summary.bytes += t.nbytes();
  }
  Metadata metadata = options.metadata();
  metadata.emplace("format", "pt");
  for (const auto& [removed, kept] : ckpt.aliases) metadata[removed] = kept;
  if (options.max_shard_size()) {
    std::error_code ec;
    std::filesystem::create_directories(out, ec);  // save_sharded reports a folder it cannot use
    summary.files = save_sharded(tensors, out, metadata,
                                 ShardedSaveOptions()
                                     .max_shard_size(*options.max_shard_size())
                                     .fsync(options.fsync())
                                     .progress(options.progress()));
  } else {
    save_file(tensors, out, metadata, SaveOptions().fsync(options.fsync()).progress(options.progress()));
    summary.files = {out};
  }

  summary.format = ckpt.format;
  summary.tensors = tensors.size();
  summary.aliases = std::move(ckpt.aliases);
  summary.copied_views = std::move(ckpt.copied_views);
  summary.non_tensors = std::move(ckpt.non_tensors);
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

DiffReport diff_checkpoints(const std::string& a, const std::string& b, const CheckpointOptions& options_a,
                            const CheckpointOptions& options_b) {
  const Checkpoint ca = read_checkpoint(a, options_a), cb = read_checkpoint(b, options_b);
  DiffReport report;
  for (const auto& item : ca.tensors) {
    const at::Tensor* other = cb.tensors.find(item.key());
    if (!other) {
      report.only_in_a.push_back(item.key());
      continue;
    }
    const std::string detail = difference(item.value(), *other);
    if (detail.empty()) {
      ++report.identical;
    } else {
      report.different.push_back({item.key(), detail});
    }
  }
  for (const auto& item : cb.tensors)
    if (!ca.tensors.contains(item.key())) report.only_in_b.push_back(item.key());
  return report;
}

}  // namespace safetensors
