#pragma once
// What a checkpoint's pickle describes, as plain data: the few Python types a
// state dict or training checkpoint holds, and tensors as descriptors of
// storage views. Nothing here runs code or touches torch.

#include <cstdint>
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

/// A tensor as torch._utils._rebuild_tensor_v2 would build it: a strided view
/// of a storage, in elements. Validated to lie inside the storage's declared size.
struct TensorRef {
  StorageRef storage;
  std::uint64_t offset = 0;
  std::vector<std::uint64_t> size;
  std::vector<std::uint64_t> stride;
  bool requires_grad = false;
};

/// Whitelisted Python callables; any other global is refused.
enum class Callable {
  OrderedDict,      ///< collections.OrderedDict
  RebuildTensor,    ///< torch._utils._rebuild_tensor_v2
  RebuildParameter, ///< torch._utils._rebuild_parameter(_with_state)
  StorageType,      ///< torch.FloatStorage and friends (an argument, never called)
};

struct Value {
  enum class Kind { None, Bool, Int, Float, String, Bytes, List, Tuple, Dict, Global, Storage, Tensor };
  Kind kind = Kind::None;
  bool boolean = false;
  std::int64_t integer = 0;
  double real = 0;
  std::string text;                             ///< String, Bytes; "module.name" of a Global
  std::vector<Value*> items;                    ///< List, Tuple
  std::vector<std::pair<Value*, Value*>> entries;  ///< Dict, in insertion order
  bool ordered = false;                         ///< Dict: a collections.OrderedDict
  Callable callable = Callable::OrderedDict;    ///< Global
  Dtype storage_dtype = Dtype::U8;              ///< Global StorageType: its element type
  std::unique_ptr<StorageRef> storage;          ///< Storage
  std::unique_ptr<TensorRef> tensor;            ///< Tensor
};

/// A short description for messages: "int 3", "str 'adam'", "list of 4".
std::string describe(const Value& value);

/// The values of one pickle. They may refer to each other in any shape the
/// pickle's memo allows (even cycles), so they live in one arena and point at
/// each other; walking them must bound its depth.
struct Pickle {
  std::vector<std::unique_ptr<Value>> arena;
  const Value* root = nullptr;
};

}  // namespace safetensors::pickle
