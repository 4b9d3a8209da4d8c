#pragma once
// What a checkpoint's pickle describes, as plain data: the few Python types a
// state dict or training checkpoint holds, tensors as descriptors of storage
// views, and TorchScript objects as opaque records of their state. Nothing
// here runs code or touches torch.

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "safetensors/dtype.hpp"

namespace safetensors::pickle {

/// A storage the pickle refers to by key: its bytes are the archive entry
/// `data/<key>`, holding `numel` elements of `dtype`.
struct StorageRef {
  std::string key;
  Dtype dtype = Dtype::U8;
  std::uint64_t numel = 0;
  std::string location;  ///< the device it was saved from ("cpu", "cuda:0")
};

struct Value;

/// A tensor as torch._utils._rebuild_tensor_v2 would build it: a strided view
/// of a storage, in elements. Validated to lie inside the storage's declared size.
struct TensorRef {
  const StorageRef* storage = nullptr;  ///< owned by the Storage value of the same pickle
  std::uint64_t offset = 0;
  /// The pickle's size and stride tuples, of one length, of non-negative ints:
  /// referred to, not copied, as many tensors may share them through the memo.
  const Value* size = nullptr;
  const Value* stride = nullptr;
  bool requires_grad = false;

  std::size_t rank() const;
  std::uint64_t size_at(std::size_t dim) const;
  std::uint64_t stride_at(std::size_t dim) const;
};

/// Whitelisted globals; any other is refused. None of them is ever imported or
/// run: each is a recipe for plain data.
enum class Callable : std::uint8_t {
  OrderedDict,       ///< collections.OrderedDict
  RebuildTensor,     ///< torch._utils._rebuild_tensor_v2
  RebuildParameter,  ///< torch._utils._rebuild_parameter(_with_state)
  StorageType,       ///< torch.FloatStorage and friends (an argument, never called)
  TorchScriptClass,  ///< __torch__.*: NEWOBJ makes an opaque Object, BUILD gives it its state
  BuildList,         ///< torch.jit._pickle.build_{int,double,bool,tensor}list: the list itself
  RestoreTypeTag,    ///< torch.jit._pickle.restore_type_tag: the dict or list itself
  Device,            ///< torch.device: an Object holding its arguments
  Complex,           ///< builtins.complex: an Object holding (real, imag)
  Size,              ///< torch.Size: an Object holding its tuple of ints
  DtypeValue,        ///< torch.float16 and the other dtypes torch.load(weights_only=True) accepts: a value, never called
};

struct Value {
  enum class Kind : std::uint8_t { None, Bool, Int, Float, String, Bytes, List, Tuple, Dict, Global, Storage, Tensor, Object };
  Kind kind = Kind::None;
  bool boolean = false;
  bool ordered = false;                         ///< Dict: a collections.OrderedDict
  Callable callable = Callable::OrderedDict;    ///< Global
  Dtype storage_dtype = Dtype::U8;              ///< Global StorageType: its element type
  union {
    std::int64_t integer = 0;                   ///< Int
    double real;                                ///< Float
  };
  std::string text;                             ///< String, Bytes; "module.name" of a Global or an Object's class
  std::vector<Value*> items;                    ///< List, Tuple
  std::vector<std::pair<Value*, Value*>> entries;  ///< Dict, in insertion order
  /// Object: what BUILD gave it (a TorchScript module's attributes as a dict,
  /// or whatever its __getstate__ returned), or the arguments it was made
  /// from; nullptr when it has none.
  const Value* state = nullptr;
  std::unique_ptr<StorageRef> storage;          ///< Storage
  std::unique_ptr<TensorRef> tensor;            ///< Tensor
};

inline std::size_t TensorRef::rank() const { return size->items.size(); }
inline std::uint64_t TensorRef::size_at(std::size_t dim) const {
  return static_cast<std::uint64_t>(size->items[dim]->integer);
}
inline std::uint64_t TensorRef::stride_at(std::size_t dim) const {
  return static_cast<std::uint64_t>(stride->items[dim]->integer);
}

/// A short description for messages: "int 3", "str 'adam'", "list of 4".
std::string describe(const Value& value);

/// The values of one pickle. They may refer to each other in any shape the
/// pickle's memo allows (even cycles), so they live in one arena (whose
/// elements never move) and point at each other; walking them must bound its
/// depth.
struct Pickle {
  std::deque<Value> arena;
  const Value* root = nullptr;
};

}  // namespace safetensors::pickle
