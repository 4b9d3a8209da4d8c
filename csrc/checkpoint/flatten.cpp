// From a pickle's values to named tensors over the file's storages: what
// reading a torch.save zip file, a TorchScript archive and a legacy torch.save
// file share. Pickles are interpreted by csrc/pickle (torch-free); this file
// turns their tensor descriptors into at::Tensors over the storages, in place
// in the mapping or read with positional reads.

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint_internal.hpp"
#include "detail/text.hpp"
#include "pickle/unpickler.hpp"
#include "safetensors/error.hpp"
#include "safetensors/torch_dtype.hpp"

namespace safetensors::detail {
namespace {

using pickle::Value;

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
// Storages

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
// A TorchScript object is walked as its state: a module whose class the
// archive's code/ declares as its state_dict (walk_module), any other module's
// attributes by name, the tuple its own __getstate__ returned by position.
class Flattener {
 public:
  Flattener(Storages& storages, const Source& source, std::uint64_t pickle_size, bool as_json,
            const ModuleDeclarations* modules, Checkpoint& out)
      : storages_(storages),
        as_json_(as_json),
        modules_(modules),
        reported_base_(out.non_tensors.size()),
        file_(source.path()),
        visits_left_(pickle_size + 1),
        budget_(kFlattenBytesFloor + kFlattenBytesPerPickleByte * pickle_size),
        file_size_(source.size()),
        out_(out) {}

  void walk(const Value& v, const std::string& name, std::size_t depth) {
    if (depth > kMaxCheckpointDepth)
      throw Error(ErrorCode::LimitExceeded, file_, shown(name),
                  "nesting deeper than " + std::to_string(kMaxCheckpointDepth));
    visit(name);
    switch (v.kind) {
      case Value::Kind::Tensor: return add_tensor(v, name.empty() ? kLoneTensorName : name);
      case Value::Kind::Dict:
      case Value::Kind::List:
      case Value::Kind::Tuple: return walk_container(v, v, name, depth);
      case Value::Kind::Object:
        if (const ModuleDeclaration* declared = module_of(v);
            declared && v.state && v.state->kind == Value::Kind::Dict)
          return walk_module(*v.state, *declared, name, depth);
        if (modules_ && is_torchscript_object(v)) {
          // Not as declared: every tensor attribute, not told apart.
          split_known_ = false;
          if (module_of(v)) bookkeep("modules whose own __getstate__ saved their state");
        }
        if (v.state && is_container(*v.state)) return walk_container(v, *v.state, name, depth);
        if (v.state && (v.state->kind == Value::Kind::Tensor || v.state->kind == Value::Kind::Object))
          return walk(*v.state, name, depth + 1);
        [[fallthrough]];
      default: add_other(v, name, pickle::describe(v));
    }
  }

  // With module declarations: how many tensors were parameters and buffers,
  // when every module's were told apart.
  void count_state() const {
    if (!modules_ || !split_known_) return;
    out_.parameters = parameters_;
    out_.buffers = buffers_;
  }

  // Gives the entries reported their JSON text, once the walk has settled
  // which subtrees they are.
  //
  // The text of one entry is at most kMaxJsonEntry bytes, of all at most
  // kMaxJsonTotal (a file's header holds them), and each byte is charged to
  // the budget of the walk: an entry that would pass one of these keeps no
  // text (it is reported, as a value without a JSON form is), and the read
  // goes on. A value shared through the memo costs its text at each use.
  void write_json() {
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < reported_.size(); ++i) {
      NonTensorEntry& entry = out_.non_tensors[reported_base_ + i];
      std::string text;
      json_room_ = std::min({kMaxJsonEntry, kMaxJsonTotal - total, budget_ - used_});
      json_too_long_ = false;
      if (json(*reported_[i], text)) {
        used_ += text.size();
        total += text.size();
        entry.json = std::move(text);
      } else if (json_too_long_) {
        entry.description += ", its JSON text over " + std::to_string(json_room_) + " bytes";
      }
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

  void visit(const std::string& name) {
    if (visits_left_-- == 0)
      throw Error(ErrorCode::LimitExceeded, file_, shown(name), "the pickle refers to its values too many times");
  }

  static bool is_torchscript_object(const Value& v) {
    return v.kind == Value::Kind::Object && v.text.compare(0, 10, "__torch__.") == 0;
  }

  // The declarations of the module class of `v`, or nullptr.
  const ModuleDeclaration* module_of(const Value& v) const {
    if (!modules_ || !is_torchscript_object(v)) return nullptr;
    const auto it = modules_->classes.find(v.text);
    return it == modules_->classes.end() ? nullptr : &it->second;
  }

  void bookkeep(const char* what) {
    auto& kinds = out_.module_bookkeeping;
    const auto it =
        std::find_if(kinds.begin(), kinds.end(), [&](const Checkpoint::Bookkeeping& b) { return b.what == what; });
    if (it != kinds.end()) ++it->count;
    else kinds.push_back({what, 1});
  }

  // A module whose class the archive declares, its attributes `state` by name:
  // its parameters and buffers are tensors of Python's state_dict (a None one
  // is not), its submodules are walked, its flags counted; any other attribute
  // (an int, a list, a tensor that is neither) is reported under its name.
  void walk_module(const Value& state, const ModuleDeclaration& declared, const std::string& name,
                   std::size_t depth) {
    const std::size_t tensors_before = out_.tensors.size();
    for (const auto& [key, value] : state.entries) {
      visit(name);
      if (key->kind != Value::Kind::String) {
        add_other(*value, child(name, *key), pickle::describe(*value));
        continue;
      }
      const std::string& attribute = key->text;
      const bool parameter = declared.parameters.count(attribute) != 0;
      const bool buffer = !parameter && declared.buffers.count(attribute) != 0;
      if ((parameter || buffer) && value->kind == Value::Kind::Tensor) {
        add_tensor(*value, child(name, attribute));
        ++(parameter ? parameters_ : buffers_);
      } else if ((parameter || buffer) && value->kind == Value::Kind::None) {
        bookkeep(parameter ? "parameters set to None" : "buffers set to None");
      } else if ((attribute == "training" && value->kind == Value::Kind::Bool) ||
                 (attribute == "_is_full_backward_hook" &&
                  (value->kind == Value::Kind::None || value->kind == Value::Kind::Bool))) {
        bookkeep(attribute == "training" ? "training" : "_is_full_backward_hook");
      } else if (module_of(*value) || (is_torchscript_object(*value) && !modules_->complete)) {
        walk(*value, child(name, attribute), depth + 1);  // a submodule, or what may be one
      } else {
        add_other(*value, child(name, attribute),
                  value->kind == Value::Kind::Tensor ? "tensor, neither a parameter nor a buffer"
                                                     : pickle::describe(*value));
      }
    }
    if (out_.tensors.size() == tensors_before) bookkeep("modules without tensors");
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
      if (as_json_) reported_.resize(reported_before - reported_base_);
      add_other(described, name, pickle::describe(described));
    }
  }

  void add_other(const Value& v, const std::string& name, std::string description) {
    charge(kOtherEntryCost + name.size() + description.size() + (as_json_ ? sizeof(void*) : 0), name);
    out_.non_tensors.push_back({name, std::move(description), std::nullopt});
    if (as_json_) reported_.push_back(&v);
  }

  // Appends `piece` to `out`, charged first: the memo may share a subtree many
  // times over, and every visit writes at least a byte, so that charging what
  // is written also bounds the work.
  // Appends `piece` unless `out` would pass json_room_.
  bool append(std::string& out, std::string_view piece) {
    if (piece.size() > json_room_ - out.size()) {
      json_too_long_ = true;
      return false;
    }
    out.append(piece);
    return true;
  }

  // `v` as Python's json.dumps writes it (default separators) into `out`, or
  // false when it has no JSON form or its text would pass json_room_. Its
  // depth was bounded by the walk.
  bool json(const Value& v, std::string& out) {
    switch (v.kind) {
      case Value::Kind::None: return append(out, "null");
      case Value::Kind::Bool: return append(out, v.boolean ? "true" : "false");
      case Value::Kind::Int: return append(out, std::to_string(v.integer));
      case Value::Kind::Float:
        if (std::isnan(v.real)) return append(out, "NaN");
        if (std::isinf(v.real)) return append(out, v.real > 0 ? "Infinity" : "-Infinity");
        return append(out, nlohmann::json(v.real).dump());  // shortest text that reads back the same
      case Value::Kind::String: return json_string(v.text, out);
      case Value::Kind::List:
      case Value::Kind::Tuple:
        if (!append(out, "[")) return false;
        for (std::size_t i = 0; i < v.items.size(); ++i)
          if ((i && !append(out, ", ")) || !json(*v.items[i], out)) return false;
        return append(out, "]");
      case Value::Kind::Dict: {
        if (!append(out, "{")) return false;
        bool first = true;
        for (const auto& [key, value] : v.entries) {
          if (!first && !append(out, ", ")) return false;
          first = false;
          if (key->kind == Value::Kind::String) {
            if (!json_string(key->text, out)) return false;
          } else if (key->kind == Value::Kind::Int) {
            if (!append(out, "\"" + std::to_string(key->integer) + "\"")) return false;
          } else {
            return false;
          }
          if (!append(out, ": ") || !json(*value, out)) return false;
        }
        return append(out, "}");
      }
      default: return false;
    }
  }

  // The unpickler accepts only UTF-8 strings; checked again here, as the
  // metadata written must be.
  bool json_string(const std::string& text, std::string& out) {
    if (!is_valid_utf8(text)) return false;
    if (text.size() + 2 > json_room_ - out.size()) {  // before the copy nlohmann makes
      json_too_long_ = true;
      return false;
    }
    return append(out, nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::strict));
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
  bool as_json_;
  const ModuleDeclarations* modules_;
  std::size_t parameters_ = 0, buffers_ = 0;
  bool split_known_ = true;
  // With as_json_: the value of each entry this walk added to out_.non_tensors
  // (those from reported_base_ on).
  std::vector<const Value*> reported_;
  std::size_t reported_base_;
  const std::string& file_;
  std::uint64_t visits_left_;
  std::uint64_t budget_;
  std::uint64_t used_ = 0;
  // write_json: the room left for the entry being written, and whether it ran out.
  std::uint64_t json_room_ = 0;
  bool json_too_long_ = false;
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

}  // namespace

void flatten(const std::shared_ptr<Source>& source, LocateStorage locate, std::uint64_t pickle_size,
             const Value& root, const CheckpointOptions& options, Checkpoint& out,
             const ModuleDeclarations* modules) {
  Storages storages(source, std::move(locate));
  Flattener flattener(storages, *source, pickle_size, options.non_tensors_as_json(), modules, out);
  flattener.walk(select(root, options.key(), source->path()), "", 0);
  flattener.count_state();
  if (options.non_tensors_as_json()) flattener.write_json();
}

}  // namespace safetensors::detail
