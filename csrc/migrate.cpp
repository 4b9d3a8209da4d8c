// Reading torch.save files, TorchScript archives and safetensors files into
// named tensors, and converting and comparing them. Pickles are interpreted by
// csrc/pickle (torch-free); this file turns their tensor descriptors into
// at::Tensors over the archive's storages, in place in the mapping or read
// with positional reads.

#include "safetensors/migrate.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "detail/text.hpp"
#include "pickle/unpickler.hpp"
#include "checkpoint/zip.hpp"
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
// What flattening charges for each entry it makes besides the bytes of its
// name and description, each heap block with the allocator's 16 bytes: for a
// tensor, its TensorImpl, its place among the views made (a hash node) and in
// the checkpoint (an item of a vector that may have doubled, an index node),
// its place among the views counted (a tree node), find_shared's key and
// extent for it and, should it be an alias, its entry in `aliases`; its sizes
// and strides when it has more than a TensorImpl keeps inline. For a reported
// entry, its place in its list.
using pickle::kHeapBlockCost;
constexpr std::uint64_t kTensorEntryCost =
    (sizeof(c10::TensorImpl) + kHeapBlockCost) + (3 * sizeof(void*) + sizeof(at::Tensor) + kHeapBlockCost) +
    2 * (sizeof(std::string) + sizeof(at::Tensor)) + (sizeof(std::string) + 4 * sizeof(void*) + kHeapBlockCost) +
    2 * (6 * sizeof(void*) + kHeapBlockCost) + 2 * 3 * sizeof(std::uint64_t) +
    (4 * sizeof(void*) + 2 * sizeof(std::string) + kHeapBlockCost);
constexpr std::size_t kInlineRank = 5;  // c10::SizesAndStrides keeps this many inline
constexpr std::uint64_t kOtherEntryCost = sizeof(NonTensorEntry);

// The bytes a tensor entry of `rank` dimensions holds (see kTensorEntryCost);
// its name is held by the checkpoint's item and index and by an alias entry.
std::uint64_t tensor_entry_cost(std::size_t rank, std::size_t name_size) {
  const std::uint64_t dims = rank > kInlineRank ? 2 * sizeof(std::int64_t) * rank + kHeapBlockCost : 0;
  return kTensorEntryCost + dims + 3 * static_cast<std::uint64_t>(name_size);
}

// A name as errors show it: names built from a hostile pickle can be huge.
std::string shown(const std::string& name) {
  constexpr std::size_t kShown = 64;
  if (name.size() <= kShown) return name;
  return name.substr(0, kShown) + "... (" + std::to_string(name.size()) + " bytes)";
}

// ---------------------------------------------------------------------------
// Format detection

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

// Refusals of the header-length check: the file does not claim to be a
// safetensors file. One that passes it does, and is told why the parser
// refuses the rest.
bool refused_by_length(const Error& e) {
  return e.code() == ErrorCode::HeaderTooSmall || e.code() == ErrorCode::HeaderTooLarge ||
         e.code() == ErrorCode::InvalidHeaderLength;
}

// The archive folder: the part before "/data.pkl" of the one top-level
// data.pkl (any name: torch uses the file's stem).
std::string archive_prefix(const detail::ZipArchive& zip) {
  std::string prefix;
  for (const detail::ZipEntry& e : zip.entries()) {
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

// A TorchScript archive (torch::save from C++, torch.jit.save from Python)
// pickles a TorchScript object: its data.pkl begins with PROTO, an optional
// FRAME, then GLOBAL of a `__torch__` class. A torch.save pickle never does,
// whatever other entries (code/, constants.pkl) its zip holds.
bool is_torchscript(const detail::ZipArchive& zip, const detail::ZipEntry& data) {
  constexpr std::string_view kClass = "c__torch__";
  unsigned char head[2 + 9 + kClass.size() + 1] = {};
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(data.size, sizeof head));
  zip.source()->read(data.offset, head, n);
  const std::string_view bytes(reinterpret_cast<const char*>(head), n);
  std::size_t at = 2;
  if (n < at || head[0] != 0x80) return false;
  if (n > at && head[at] == 0x95) at += 9;
  if (at > n || bytes.substr(at, kClass.size()) != kClass) return false;
  const char next = at + kClass.size() < n ? bytes[at + kClass.size()] : '\0';
  return next == '.' || next == '\n';
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

struct Detected {
  CheckpointFormat format = CheckpointFormat::Unknown;
  std::optional<Error> safetensors_refusal;  ///< Unknown: why the safetensors parser refused it
};

Detected detect(const std::shared_ptr<Source>& source) {
  Detected d;
  d.safetensors_refusal = safetensors_refusal(*source);
  if (!d.safetensors_refusal) {
    d.format = CheckpointFormat::Safetensors;
  } else if (detail::looks_like_zip(*source)) {
    const detail::ZipArchive zip(source);
    const detail::ZipEntry* data = zip.find(archive_prefix(zip) + "data.pkl");
    d.format = is_torchscript(zip, *data) ? CheckpointFormat::TorchArchive : CheckpointFormat::TorchZip;
  } else if (legacy_magic_end(*source) != 0) {
    d.format = CheckpointFormat::TorchLegacy;
  }
  return d;
}

// ---------------------------------------------------------------------------
// Storages

// Where a storage's bytes lie in the file.
struct Span {
  std::uint64_t offset;
  std::uint64_t size;
};
using LocateStorage = std::function<std::optional<Span>(const std::string& key)>;

// Storages as flat tensors (an archive entry, or a stretch of a legacy file),
// made once per key so that views of one storage share it (and aliasing is
// visible to the saver): over the mapping, or read into memory of their own
// when the source has none (the pread backend).
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
    throw Error(ErrorCode::TensorInvalidInfo, source_->path(), shown(tensor), detail);
  }

  c10::ScalarType torch_dtype(const pickle::StorageRef& ref, const std::string& tensor) const {
    const auto type = to_torch_dtype(ref.dtype);
    if (!type)
      throw Error(ErrorCode::UnsupportedDtype, source_->path(), shown(tensor),
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
    std::byte* data = source->data() ? source->data() + entry->offset : nullptr;
    // Hand-made archives need not align entries; torch.save aligns them to 64.
    if (!data || needed == 0 || reinterpret_cast<std::uintptr_t>(data) % element != 0) {
      at::Tensor owned = at::empty({static_cast<std::int64_t>(ref.numel)}, options);
      if (needed && data) std::memcpy(owned.data_ptr(), data, needed);
      if (needed && !data) source->read(entry->offset, owned.data_ptr(), static_cast<std::size_t>(needed));
      return owned;
    }
    return at::from_blob(data, {static_cast<std::int64_t>(ref.numel)}, [source](void*) {}, options);
  }

  std::shared_ptr<Source> source_;
  LocateStorage locate_;
  std::unordered_map<std::string, at::Tensor> made_;
};

// ---------------------------------------------------------------------------
// Flattening a pickle's values into named tensors

std::string key_name(const Value& key) {
  if (key.kind == Value::Kind::String) return key.text;
  if (key.kind == Value::Kind::Int) return std::to_string(key.integer);
  return "[" + pickle::describe(key) + "]";
}

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

bool is_container(const Value& v) {
  return v.kind == Value::Kind::Dict || v.kind == Value::Kind::List || v.kind == Value::Kind::Tuple;
}

// Walks the value tree into dotted names. The tree may share subtrees (or even
// hold cycles) through the pickle's memo, so the walk bounds its depth, its
// visits (a legitimate pickle spends at least a byte per edge) and the bytes
// it produces: every name it builds and every entry it makes is charged, so
// that a name repeated through the memo cannot multiply into memory. The
// tensors' bytes once written out are bounded by the file's size.
// A TorchScript object is walked as its state: a module's attributes by name,
// the tuple its own __getstate__ returned by position.
class Flattener {
 public:
  Flattener(Storages& storages, const Source& source, std::uint64_t pickle_size, Checkpoint& out)
      : storages_(storages),
        file_(source.path()),
        visits_left_(pickle_size + 1),
        budget_(kFlattenBytesFloor + kFlattenBytesPerPickleByte * pickle_size),
        file_size_(source.size()),
        out_(out) {}

  void walk(const Value& v, const std::string& name, std::size_t depth) {
    if (depth > kMaxCheckpointDepth)
      throw Error(ErrorCode::LimitExceeded, file_, shown(name),
                  "nesting deeper than " + std::to_string(kMaxCheckpointDepth));
    if (visits_left_-- == 0)
      throw Error(ErrorCode::LimitExceeded, file_, shown(name),
                  "the pickle refers to its values too many times");
    switch (v.kind) {
      case Value::Kind::Tensor: return add_tensor(v, name.empty() ? kLoneTensorName : name);
      case Value::Kind::Dict:
      case Value::Kind::List:
      case Value::Kind::Tuple: return walk_container(v, v, name, depth);
      case Value::Kind::Object:
        if (v.state && is_container(*v.state)) return walk_container(v, *v.state, name, depth);
        if (v.state && (v.state->kind == Value::Kind::Tensor || v.state->kind == Value::Kind::Object))
          return walk(*v.state, name, depth + 1);
        [[fallthrough]];
      default: add_other(name, pickle::describe(v));
    }
  }

 private:
  void charge(std::uint64_t bytes, const std::string& name) {
    if (bytes <= budget_ - used_) {
      used_ += bytes;
      return;
    }
    throw Error(ErrorCode::LimitExceeded, file_, shown(name),
                "the dotted names and entries of the checkpoint need more than " + std::to_string(budget_) +
                    " bytes (at most " + std::to_string(kFlattenBytesPerPickleByte) + " per byte of its pickle, plus " +
                    std::to_string(kFlattenBytesFloor >> 20) + " MiB)");
  }

  // `name.key`, charged before it is built (a key is not copied on the way:
  // it may be large, and every level of nesting would hold a copy).
  std::string child(const std::string& name, const Value& key) {
    const std::string other = key.kind == Value::Kind::String ? std::string() : key_name(key);
    const std::string& text = key.kind == Value::Kind::String ? key.text : other;
    return child(name, text);
  }
  std::string child(const std::string& name, const std::string& key) {
    charge(name.size() + (name.empty() ? 0 : 1) + key.size(), name);
    std::string joined;
    joined.reserve(name.size() + 1 + key.size());
    if (!name.empty()) joined.append(name).append(1, '.');
    return joined.append(key);
  }

  // A container without tensors is reported as one entry, not element by
  // element; `described` is what it is reported as (the object it belongs to).
  void walk_container(const Value& described, const Value& v, const std::string& name, std::size_t depth) {
    const std::size_t tensors_before = out_.tensors.size(), reported_before = out_.non_tensors.size();
    if (v.kind == Value::Kind::Dict) {
      for (const auto& [key, value] : v.entries) walk(*value, child(name, *key), depth + 1);
    } else {
      for (std::size_t i = 0; i < v.items.size(); ++i)
        walk(*v.items[i], child(name, std::to_string(i)), depth + 1);
    }
    if (out_.tensors.size() == tensors_before && !name.empty()) {
      out_.non_tensors.resize(reported_before);
      add_other(name, pickle::describe(described));
    }
  }

  void add_other(const std::string& name, std::string description) {
    charge(kOtherEntryCost + name.size() + description.size(), name);
    out_.non_tensors.push_back({name, std::move(description)});
  }

  void add_tensor(const Value& v, const std::string& name) {
    const pickle::TensorRef& ref = *v.tensor;
    charge(tensor_entry_cost(ref.rank(), name.size()), name);
    if (out_.tensors.contains(name))
      throw Error(ErrorCode::DuplicateKey, file_, shown(name), "two entries flatten to this name");
    auto made = views_.find(&v);
    if (made == views_.end()) {
      const at::Tensor storage = storages_.get(*ref.storage, name);
      count_bytes(ref, storage, name);
      std::vector<std::int64_t> size(ref.rank()), stride(ref.rank());
      for (std::size_t i = 0; i < ref.rank(); ++i) {
        size[i] = static_cast<std::int64_t>(ref.size_at(i));
        stride[i] = static_cast<std::int64_t>(ref.stride_at(i));
      }
      // As torch.load makes it: a tensor over the storage, not an autograd view of it (whose view
      // metadata would be held for every tensor).
      at::Tensor view = at::empty({0}, storage.options());
      view.set_(storage.storage(), static_cast<std::int64_t>(ref.offset), size, stride);
      made = views_.emplace(&v, std::move(view)).first;
    }
    out_.tensors.insert(name, made->second);
  }

  // Bounds the bytes the tensors will take once written out, before the view
  // is made, without overflow. The same view of a storage under several names
  // (tied weights: one tensor, or one tensor detached per name as state_dict
  // does) is written once and counted once.
  void count_bytes(const pickle::TensorRef& ref, const at::Tensor& storage, const std::string& name) {
    if (!counted_.insert({storage.storage().unsafeGetStorageImpl(), &ref}).second) return;
    std::uint64_t bytes = dtype_bits(ref.storage->dtype) / 8;
    bool overflow = false;
    for (std::size_t i = 0; i < ref.rank(); ++i) {
      const std::uint64_t d = ref.size_at(i);
      overflow = overflow || d > static_cast<std::uint64_t>(INT64_MAX) || __builtin_mul_overflow(bytes, d, &bytes);
    }
    const std::uint64_t limit = kViewBytesFloor + kMaxViewExpansion * file_size_;
    if (overflow || bytes > limit - written_)
      throw Error(ErrorCode::LimitExceeded, file_, shown(name),
                  "its " + (overflow ? std::string("2^63 or more") : std::to_string(bytes)) +
                      " bytes (a view of storage '" + ref.storage->key + "' of " +
                      std::to_string(ref.storage->numel) + " elements) would bring the tensors to more than " +
                      std::to_string(kMaxViewExpansion) + " times the file's " + std::to_string(file_size_) +
                      " bytes (plus " + std::to_string(kViewBytesFloor >> 20) +
                      " MiB) once written out: views (stride 0, overlaps) may not expand a checkpoint further");
    written_ += bytes;
  }

  // A view as find_shared tells aliases apart: its storage, offset, sizes and
  // strides (a storage has one dtype).
  struct CountedView {
    const void* storage;
    const pickle::TensorRef* ref;
    bool operator<(const CountedView& o) const {
      if (storage != o.storage) return std::less<const void*>()(storage, o.storage);
      if (ref->offset != o.ref->offset) return ref->offset < o.ref->offset;
      if (ref->rank() != o.ref->rank()) return ref->rank() < o.ref->rank();
      for (std::size_t i = 0; i < ref->rank(); ++i) {
        if (ref->size_at(i) != o.ref->size_at(i)) return ref->size_at(i) < o.ref->size_at(i);
        if (ref->stride_at(i) != o.ref->stride_at(i)) return ref->stride_at(i) < o.ref->stride_at(i);
      }
      return false;
    }
  };

  Storages& storages_;
  const std::string& file_;
  std::uint64_t visits_left_;
  std::uint64_t budget_;
  std::uint64_t used_ = 0;
  std::uint64_t file_size_;
  std::uint64_t written_ = 0;
  // One view per tensor of the pickle: a tensor it refers to twice is one
  // tensor under two names, as torch.load makes it.
  std::unordered_map<const Value*, at::Tensor> views_;
  std::set<CountedView> counted_;
  Checkpoint& out_;
};

// What a value's names are made of, as the flattener walks it: a TorchScript
// object's state, through objects whose state is another object.
const Value& named_by(const Value& v) {
  const Value* node = &v;
  for (std::size_t i = 0; i <= kMaxCheckpointDepth && node->kind == Value::Kind::Object && node->state; ++i)
    node = node->state;
  return *node;
}

// The value at `key`, a path of the parts the flattener joins into names: dict
// keys (as key_name writes them), list and tuple positions, a TorchScript
// module's attribute names; or an error listing what is there.
const Value& select(const Value& root, const std::vector<std::string>& key, const std::string& file) {
  const Value* node = &root;
  std::string path;
  for (const std::string& part : key) {
    const Value& parent = named_by(*node);
    const Value* next = nullptr;
    std::string keys;
    if (parent.kind == Value::Kind::Dict) {
      for (const auto& [k, v] : parent.entries) {
        // No copy of string keys: the memo can repeat a large key many times.
        const bool match = k->kind == Value::Kind::String ? k->text == part : key_name(*k) == part;
        if (match && next)
          throw Error(ErrorCode::DuplicateKey, file, "", "two keys of '" + path + "' read as '" + shown(part) + "'");
        if (match) next = v;
        if (keys.size() < 200) keys += (keys.empty() ? "" : ", ") + shown(key_name(*k));
      }
    } else if (parent.kind == Value::Kind::List || parent.kind == Value::Kind::Tuple) {
      // A position as the flattener writes it: decimal, without sign or leading zeros.
      std::size_t index = 0;
      const bool decimal = !part.empty() && part.size() <= 19 && (part == "0" || part[0] != '0') &&
                           std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (decimal) index = static_cast<std::size_t>(std::stoull(part));
      if (decimal && index < parent.items.size()) next = parent.items[index];
      keys = parent.items.empty() ? "none" : "0 to " + std::to_string(parent.items.size() - 1);
    } else {
      throw Error(ErrorCode::TensorNotFound, file, "",
                  "'" + path + "' is a " + pickle::describe(*node) + ", not a dict, list or tuple");
    }
    path = join(path, part);
    if (!next) {
      const char* what = parent.kind == Value::Kind::Dict ? "keys" : "positions";
      throw Error(ErrorCode::TensorNotFound, file, "", "no key '" + path + "' (" + what + ": " + keys + ")");
    }
    node = next;
  }
  return *node;
}

// ---------------------------------------------------------------------------
// Zip archives: Python torch.save (1.6 and later) and TorchScript archives
// (torch::save from C++, torch.jit.save). Both store their storages as
// `<prefix>/data/<key>` and their object as `<prefix>/data.pkl`; a TorchScript
// archive's object is a module, read as data: its code is never compiled.

void read_torch_zip(const std::shared_ptr<Source>& source, CheckpointFormat format,
                    const CheckpointOptions& options, Checkpoint& out) {
  const detail::ZipArchive zip(source);
  const std::string prefix = archive_prefix(zip);
  if (const detail::ZipEntry* order = zip.find(prefix + "byteorder"); order && zip.read(*order) != "little")
    throw Error(ErrorCode::InvalidCheckpoint, source->path(), "",
                "a big-endian checkpoint; re-save it on a little-endian machine");
  const std::string data = zip.read(*zip.find(prefix + "data.pkl"));
  const pickle::Pickle p = pickle::unpickle(data, source->path());
  Storages storages(source, [&](const std::string& key) -> std::optional<Span> {
    const detail::ZipEntry* entry = zip.find(prefix + "data/" + key);
    if (!entry) return std::nullopt;
    return Span{entry->offset, entry->size};
  });
  Flattener flattener(storages, *source, data.size(), out);
  flattener.walk(select(*p.root, options.key(), source->path()), "", 0);

  // The tensors TorchScript code uses as constants are not the module's state;
  // they are reported, not read.
  const detail::ZipEntry* constants = zip.find(prefix + "constants.pkl");
  if (format != CheckpointFormat::TorchArchive || !constants || !options.key().empty()) return;
  const pickle::Pickle c = pickle::unpickle(zip.read(*constants), source->path());
  const auto count = std::count_if(c.arena.begin(), c.arena.end(),
                                   [](const Value& v) { return v.kind == Value::Kind::Tensor; });
  if (count > 0)
    out.non_tensors.push_back(
        {"CONSTANTS", std::to_string(count) + " tensor constants of the TorchScript code (constants.pkl)"});
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
  auto bad = [&](const std::string& what) -> void {
    throw Error(ErrorCode::InvalidCheckpoint, file, "", "legacy torch.save file: " + what);
  };
  std::uint64_t offset = legacy_magic_end(*source);
  const pickle::Pickle version = pickle::unpickle(*source, offset);
  if (version.root->kind != Value::Kind::Int || version.root->integer != kLegacyProtocolVersion)
    bad("protocol version " +
        (version.root->kind == Value::Kind::Int ? std::to_string(version.root->integer)
                                                : "given as a " + pickle::describe(*version.root)) +
        ", not " + std::to_string(kLegacyProtocolVersion));
  const pickle::Pickle sys_info = pickle::unpickle(*source, offset);
  bool little_endian = false;
  if (sys_info.root->kind == Value::Kind::Dict)
    for (const auto& [key, value] : sys_info.root->entries)
      if (key->kind == Value::Kind::String && key->text == "little_endian" && value->kind == Value::Kind::Bool)
        little_endian = value->boolean;
  if (!little_endian)
    throw Error(ErrorCode::InvalidCheckpoint, file, "",
                "a big-endian checkpoint (or one that does not say); re-save it on a little-endian machine");
  const std::uint64_t object_start = offset;
  const pickle::Pickle p = pickle::unpickle(*source, offset);
  const std::uint64_t object_size = offset - object_start;
  const pickle::Pickle keys = pickle::unpickle(*source, offset);
  if (keys.root->kind != Value::Kind::List) bad("the storage key list is a " + pickle::describe(*keys.root));

  // Each storage's dtype and size, from its persistent ids (Storages checks
  // that they agree with each other).
  std::unordered_map<std::string, const pickle::StorageRef*> declared;
  for (const Value& v : p.arena)
    if (v.kind == Value::Kind::Storage) declared.emplace(v.storage->key, v.storage.get());
  std::unordered_map<std::string, Span> spans;
  for (const Value* key : keys.root->items) {
    if (key->kind != Value::Kind::String) bad("a storage key is a " + pickle::describe(*key));
    const auto found = declared.find(key->text);
    if (found == declared.end()) bad("storage '" + key->text + "' is listed but no tensor uses it");
    const pickle::StorageRef& ref = *found->second;
    if (source->size() - offset < 8) bad("the file ends before storage '" + key->text + "'");
    unsigned char le[8];
    source->read(offset, le, sizeof le);
    std::uint64_t count = 0;
    for (int i = 7; i >= 0; --i) count = (count << 8) | le[i];
    offset += 8;
    if (count != ref.numel)
      bad("storage '" + key->text + "' holds " + std::to_string(count) + " elements, its tensors say " +
          std::to_string(ref.numel));
    const std::uint64_t bytes = ref.numel * (dtype_bits(ref.dtype) / 8);  // bounded by the unpickler
    if (source->size() - offset < bytes)
      bad("the file ends inside storage '" + key->text + "' (" + std::to_string(bytes) + " bytes)");
    if (!spans.emplace(key->text, Span{offset, bytes}).second) bad("storage '" + key->text + "' is listed twice");
    offset += bytes;
  }
  Storages storages(source, [&](const std::string& key) -> std::optional<Span> {
    const auto it = spans.find(key);
    if (it == spans.end()) return std::nullopt;
    return it->second;
  });
  Flattener flattener(storages, *source, object_size, out);
  flattener.walk(select(*p.root, options.key(), file), "", 0);
}

// ---------------------------------------------------------------------------
// Shared storages

// Identical views of one storage are aliases: one is kept. Different views
// whose bytes overlap cannot share bytes in a safetensors file: each is saved
// as its own copy. Disjoint views (chunks of one storage) need nothing.
void find_shared(Checkpoint& ckpt) {
  // Keys and extents refer to the tensors by position: a checkpoint may hold
  // many views of high rank, whose sizes and names are not copied again.
  const auto& items = ckpt.tensors.items();
  auto less = [&](std::size_t i, std::size_t j) {
    const at::Tensor &a = items[i].value(), &b = items[j].value();
    const void *sa = a.storage().unsafeGetStorageImpl(), *sb = b.storage().unsafeGetStorageImpl();
    if (sa != sb) return std::less<const void*>()(sa, sb);
    if (a.storage_offset() != b.storage_offset()) return a.storage_offset() < b.storage_offset();
    if (a.scalar_type() != b.scalar_type()) return a.scalar_type() < b.scalar_type();
    if (a.sizes() != b.sizes())
      return std::lexicographical_compare(a.sizes().begin(), a.sizes().end(), b.sizes().begin(), b.sizes().end());
    return std::lexicographical_compare(a.strides().begin(), a.strides().end(), b.strides().begin(),
                                        b.strides().end());
  };
  struct Extent {
    std::uint64_t begin, end;
    std::size_t index;
  };
  std::set<std::size_t, decltype(less)> first_of_view(less);
  std::map<const void*, std::vector<Extent>> extents;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const at::Tensor& t = items[i].value();
    if (!t.has_storage() || t.numel() == 0) continue;
    auto [it, inserted] = first_of_view.insert(i);
    if (!inserted) {
      ckpt.aliases[items[i].key()] = items[*it].key();
      continue;
    }
    std::uint64_t span = 1;
    for (std::int64_t d = 0; d < t.dim(); ++d)
      span += static_cast<std::uint64_t>(t.size(d) - 1) * static_cast<std::uint64_t>(t.stride(d));
    const std::uint64_t begin = static_cast<std::uint64_t>(t.storage_offset()) * t.element_size();
    extents[t.storage().unsafeGetStorageImpl()].push_back({begin, begin + span * t.element_size(), i});
  }
  std::vector<bool> overlapping(items.size());
  for (auto& [storage, list] : extents) {
    std::sort(list.begin(), list.end(), [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
    std::uint64_t reach = 0;
    const Extent* reaching = nullptr;
    for (const Extent& e : list) {
      if (reaching && e.begin < reach) overlapping[e.index] = overlapping[reaching->index] = true;
      if (!reaching || e.end > reach) reach = e.end, reaching = &e;
    }
  }
  for (std::size_t i = 0; i < items.size(); ++i)
    if (overlapping[i]) ckpt.copied_views.push_back(items[i].key());
}

// Safetensors inputs: dtypes this LibTorch lacks arrive as raw bytes; their
// real dtypes are returned so that a conversion keeps them. Names that a
// state-dict saver removed as tied weights (metadata `removed -> kept`) come
// back as aliases of the kept tensor, not as tensors of their own: a header of
// millions of short entries would otherwise make a tensor and its places for each.
std::map<std::string, TensorInfo> read_safetensors(std::shared_ptr<Source> source, Checkpoint& out) {
  SafeOpen file(std::move(source), LoadOptions().unsupported_as_bytes(true));
  std::map<std::string, TensorInfo> raw;
  for (const TensorInfo& info : file.header().tensors()) {
    out.tensors.insert(info.name, file.get_tensor(info.name));
    if (!to_torch_dtype(info.dtype)) raw.emplace(info.name, info);
  }
  for (const auto& [removed, kept] : file.metadata())
    if (removed != "format" && !out.tensors.contains(removed) && file.contains(kept))
      out.aliases.emplace_hint(out.aliases.end(), removed, kept);
  return raw;
}

Checkpoint read(const std::string& path, const CheckpointOptions& options,
                std::map<std::string, TensorInfo>* raw) {
  const std::shared_ptr<Source> source = open_file(path, options.backend());
  Checkpoint ckpt;
  Detected detected = detect(source);
  ckpt.format = detected.format;
  switch (ckpt.format) {
    case CheckpointFormat::TorchZip:
    case CheckpointFormat::TorchArchive: read_torch_zip(source, ckpt.format, options, ckpt); break;
    case CheckpointFormat::Safetensors: {
      if (!options.key().empty())
        throw Error(ErrorCode::InvalidArgument, path, "", "a safetensors file has no nested keys to select");
      auto found = read_safetensors(source, ckpt);
      if (raw) *raw = std::move(found);
      break;
    }
    case CheckpointFormat::TorchLegacy: read_torch_legacy(source, options, ckpt); break;
    case CheckpointFormat::Unknown:
      // A file whose first 8 bytes are a plausible header length is told why
      // the safetensors parser refuses it.
      if (!refused_by_length(*detected.safetensors_refusal)) throw *detected.safetensors_refusal;
      throw Error(ErrorCode::InvalidCheckpoint, path, "",
                  "not a safetensors file, torch.save file or TorchScript archive");
  }
  find_shared(ckpt);
  return ckpt;
}

std::string dtype_text(const at::Tensor& t) {
  const auto dtype = from_torch_dtype(t.scalar_type());
  return dtype ? std::string(dtype_name(*dtype)) : std::string(c10::toString(t.scalar_type()));
}

// Compares two tensors of one dtype and shape piece by piece, so that the
// memory used stays bounded whatever their size or layout: a piece is made
// contiguous (a copy, for a view) and widened to 64 bits only when it differs.
class Comparison {
 public:
  void compare(const at::Tensor& a, const at::Tensor& b) {
    if (a.dim() == 0 || a.numel() <= kDiffChunkElements) return compare_piece(a, b);
    if (a.size(0) == 1) return compare(a.select(0, 0), b.select(0, 0));
    const std::int64_t row = a.numel() / a.size(0);
    const std::int64_t rows = std::max<std::int64_t>(1, kDiffChunkElements / row);
    for (std::int64_t i = 0; i < a.size(0); i += rows) {
      const std::int64_t n = std::min(rows, a.size(0) - i);
      compare(a.narrow(0, i, n), b.narrow(0, i, n));
    }
  }

  // "" when bitwise identical.
  std::string detail() const {
    if (equal_) return "";
    if (!has_max_) return "values differ";
    return "values differ: max abs difference " + (integral_ ? std::to_string(max_int_) : std::to_string(max_));
  }

 private:
  void compare_piece(const at::Tensor& a, const at::Tensor& b) {
    if (a.numel() == 0) return;
    const at::Tensor ac = a.contiguous(), bc = b.contiguous();
    if (std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0) return;
    equal_ = false;
    if (a.is_complex()) {
      update((ac.to(at::kComplexDouble) - bc.to(at::kComplexDouble)).abs().max().item<double>());
    } else if (a.is_floating_point()) {
      update((ac.to(at::kDouble) - bc.to(at::kDouble)).abs().max().item<double>());
    } else if (a.scalar_type() != at::kBool) {
      const auto max = (ac.to(at::kLong) - bc.to(at::kLong)).abs().max().item<std::int64_t>();
      integral_ = true;
      max_int_ = has_max_ ? std::max(max_int_, max) : max;
      has_max_ = true;
    }
  }
  // The largest difference of every piece; NaN once any piece has one, as
  // max() over the whole tensor would give.
  void update(double max) {
    if (!has_max_ || std::isnan(max) || (!std::isnan(max_) && max > max_)) max_ = max;
    has_max_ = true;
  }

  static constexpr std::int64_t kDiffChunkElements = 1 << 21;
  bool equal_ = true;
  bool has_max_ = false;
  bool integral_ = false;
  double max_ = 0;
  std::int64_t max_int_ = 0;
};

// The tensor compared for `name` in `c`: that of the first name of its view
// (for an alias, its kept name, whether or not the alias is a tensor of its
// own), or nullptr when `c` has no such name.
const at::Tensor* first_of_view(const Checkpoint& c, const std::string& name) {
  const auto alias = c.aliases.find(name);
  return c.tensors.find(alias == c.aliases.end() ? name : alias->second);
}

// Why two tensors of one name differ, or "" when they are bitwise identical.
std::string difference(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type()) return "dtype " + dtype_text(a) + " vs " + dtype_text(b);
  if (a.sizes() != b.sizes()) return "shape " + detail::shape_text(a.sizes().vec()) + " vs " + detail::shape_text(b.sizes().vec());
  Comparison comparison;
  comparison.compare(a, b);
  return comparison.detail();
}

}  // namespace

const char* to_string(CheckpointFormat format) noexcept {
  switch (format) {
    case CheckpointFormat::Safetensors: return "safetensors";
    case CheckpointFormat::TorchZip: return "torch.save (zip)";
    case CheckpointFormat::TorchLegacy: return "torch.save (legacy)";
    case CheckpointFormat::TorchArchive: return "TorchScript archive";
    case CheckpointFormat::Unknown: return "unknown";
  }
  return "unknown";
}

CheckpointFormat detect_format(const std::string& path, Backend backend) {
  return detect(open_file(path, backend)).format;
}

Checkpoint read_checkpoint(const std::string& path, const CheckpointOptions& options) {
  return read(path, options, nullptr);
}

ConvertReport convert_checkpoint(const std::string& in, const std::string& out, const ConvertOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  std::map<std::string, TensorInfo> raw;
  Checkpoint ckpt = read(in, CheckpointOptions().key(options.key()).backend(options.backend()), &raw);

  // An alias is recorded as a metadata key of its name: one whose name is a
  // key already (the caller's or "format") is written as a copy instead.
  Metadata metadata = options.metadata();
  metadata.emplace("format", "pt");
  std::set<std::string> copies(ckpt.copied_views.begin(), ckpt.copied_views.end());
  for (auto it = ckpt.aliases.begin(); it != ckpt.aliases.end();) {
    if (!metadata.count(it->first)) {
      ++it;
      continue;
    }
    copies.insert(it->first);
    // A safetensors input's aliases are names only: give this one its tensor.
    if (!ckpt.tensors.contains(it->first)) {
      const at::Tensor kept = ckpt.tensors[it->second];
      ckpt.tensors.insert(it->first, kept);
      if (const auto r = raw.find(it->second); r != raw.end()) raw.emplace(it->first, r->second);
    }
    it = ckpt.aliases.erase(it);
  }
  for (const auto& [removed, kept] : ckpt.aliases) metadata.emplace(removed, kept);

  ConvertReport summary;
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
  if (options.max_shard_size()) {
    std::error_code ec;
    std::filesystem::create_directories(out, ec);  // save_sharded reports a folder it cannot use
    summary.files = save_sharded(tensors, out, std::move(metadata),
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
  // A view under many names (tied weights, an expand shared by thousands of
  // entries) is compared once per pair of views, not once per name: each name
  // stands for the first name of its view (its alias's kept name), and each
  // pair of those is compared once, so that the work is that of the distinct bytes.
  std::map<std::pair<const at::Tensor*, const at::Tensor*>, std::string> compared;
  DiffReport report;
  auto compare = [&](const std::string& name) {
    const at::Tensor* other = first_of_view(cb, name);
    if (!other) return report.only_in_a.push_back(name);
    const auto views = std::make_pair(first_of_view(ca, name), other);
    auto done = compared.find(views);
    if (done == compared.end()) done = compared.emplace(views, difference(*views.first, *views.second)).first;
    if (done->second.empty()) {
      ++report.identical;
    } else {
      report.different.push_back({name, done->second});
    }
  };
  for (const auto& item : ca.tensors) compare(item.key());
  for (const auto& [name, kept] : ca.aliases)
    if (!ca.tensors.contains(name)) compare(name);
  for (const auto& item : cb.tensors)
    if (!first_of_view(ca, item.key())) report.only_in_b.push_back(item.key());
  for (const auto& [name, kept] : cb.aliases)
    if (!cb.tensors.contains(name) && !first_of_view(ca, name)) report.only_in_b.push_back(name);
  return report;
}

}  // namespace safetensors
