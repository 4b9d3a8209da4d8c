#include "unpickler.hpp"

#include <algorithm>
#include <array>
#include <initializer_list>
#include <cstdio>
#include <cstring>

#include "../checked.hpp"
#include "detail/text.hpp"
#include "safetensors/error.hpp"
#include "safetensors/header.hpp"

namespace safetensors::pickle {
namespace {

// What a Value takes in the arena: itself and its share of the header of
// the deque's block (as many Values as fit 512 bytes, or one) and of that
// block's slot in the deque's map.
constexpr std::uint64_t kValuesPerBlock = sizeof(Value) < 512 ? 512 / sizeof(Value) : 1;
constexpr std::uint64_t kValueCost = sizeof(Value) + (kHeapBlockCost + sizeof(void*) + kValuesPerBlock - 1) / kValuesPerBlock;

// The first window read of a pickle from a source without a mapping; doubled
// until the pickle fits.
constexpr std::uint64_t kFirstWindow = 64 << 10;

// A pickle that ended before its STOP: read from a window of a source, it may
// fit a larger one.
class Truncated : public Error {
 public:
  using Error::Error;
};

struct StorageType {
  const char* name;
  Dtype dtype;
};

// torch.<Name>Storage classes that name the element type of a storage (the
// second field of a persistent id). UntypedStorage counts bytes.
constexpr StorageType kStorageTypes[] = {
    {"BoolStorage", Dtype::BOOL},   {"ByteStorage", Dtype::U8},
    {"CharStorage", Dtype::I8},     {"ShortStorage", Dtype::I16},
    {"IntStorage", Dtype::I32},     {"LongStorage", Dtype::I64},
    {"HalfStorage", Dtype::F16},    {"BFloat16Storage", Dtype::BF16},
    {"FloatStorage", Dtype::F32},   {"DoubleStorage", Dtype::F64},
    {"ComplexFloatStorage", Dtype::C64}, {"UntypedStorage", Dtype::U8},
};

// The dtypes torch.load(weights_only=True) accepts as values (torch 2.6):
// checkpoints hold them as data, e.g. a training config's dtype.
constexpr const char* kDtypeValues[] = {
    "bfloat16", "bits16", "bits1x8", "bits2x4", "bits4x2", "bits8", "bool", "complex128", "complex32",
    "complex64", "float16", "float32", "float64", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "int16", "int32", "int64", "int8", "qint32", "qint8", "quint2x4", "quint4x2", "quint8",
    "uint16", "uint32", "uint64", "uint8",
};

// Storage classes torch has but the safetensors format has no dtype for.
constexpr const char* kStorageTypesWithoutDtype[] = {
    "ComplexDoubleStorage", "ComplexHalfStorage", "QInt8Storage", "QUInt8Storage", "QInt32Storage",
    "QUInt4x2Storage", "QUInt2x4Storage",
};

class Machine;
using Handler = void (Machine::*)();

struct Opcode {
  std::uint8_t code;
  const char* name;
  Handler handler;  // nullptr: a real pickle opcode that a checkpoint never needs
};

class Machine {
 public:
  // `data[offset]` starts the pickle; `base` is where `data` lies in the file
  // (for messages); `available` is how many bytes of the file follow the
  // pickle's start (what a FRAME may claim). The memory budget grows with the
  // bytes of the pickle read, not with what follows it in the file.
  Machine(std::string_view data, std::size_t offset, const std::string& file, std::uint64_t available,
          std::uint64_t base = 0)
      : data_(data), pos_(offset), start_(offset), base_(base), end_(offset + available), file_(file) {}

  Pickle run(std::size_t& offset);

 private:
  static const std::array<const Opcode*, 256>& dispatch_table();

  std::string message(const std::string& detail) const {
    return "pickle: " + detail + " (at byte " + std::to_string(base_ + op_pos_) + ")";
  }
  [[noreturn]] void fail(const std::string& detail, ErrorCode code = ErrorCode::InvalidCheckpoint) const {
    throw Error(code, file_, "", message(detail));
  }
  [[noreturn]] void truncated(const std::string& detail) const {
    throw Truncated(ErrorCode::InvalidCheckpoint, file_, "", message("truncated: " + detail));
  }

  // --- memory: every value, string, container slot and memo slot is charged
  // what it holds, heap blocks with the allocator's overhead ---
  // What the values may take once the pickle has been read up to `pos_`;
  // it only grows, so what was charged always fits it.
  std::uint64_t budget() const { return kValueBytesFloor + kValueBytesPerPickleByte * (pos_ - start_); }
  void charge(std::uint64_t bytes) {
    const std::uint64_t budget = this->budget();
    if (bytes > budget - used_)
      fail("its values need more than " + std::to_string(budget) + " bytes of memory (" +
               std::to_string(kValueBytesPerPickleByte) + " per byte of the " + std::to_string(pos_ - start_) +
               " bytes of pickle read, plus " + std::to_string(kValueBytesFloor >> 20) + " MiB)",
           ErrorCode::LimitExceeded);
    used_ += bytes;
  }
  // Appends to a vector, charging the memory its growth takes.
  template <class T, class... Args>
  void grow(std::vector<T>& v, Args&&... args) {
    const std::size_t before = v.capacity();
    if (v.size() == before) charge(sizeof(T) * std::max<std::size_t>(before, 1) + (before ? 0 : kHeapBlockCost));
    v.emplace_back(std::forward<Args>(args)...);
  }
  template <class T>
  void grow_by(std::vector<T>& v, typename std::vector<T>::const_iterator first,
               typename std::vector<T>::const_iterator last) {
    const std::size_t n = static_cast<std::size_t>(last - first);
    if (v.size() + n > v.capacity()) {
      const std::size_t capacity = std::max(v.size() + n, 2 * v.capacity());
      charge(sizeof(T) * (capacity - v.capacity()) + (v.capacity() ? 0 : kHeapBlockCost));
      v.reserve(capacity);
    }
    v.insert(v.end(), first, last);
  }

  // --- reading the stream ---
  std::string_view take(std::uint64_t n) {
    if (n > data_.size() - pos_) truncated("needs " + std::to_string(n) + " more bytes");
    std::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  std::uint64_t read_uint(int bytes) {
    const std::string_view b = take(bytes);
    std::uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[i]);
    return v;
  }
  std::string_view read_line() {
    const std::size_t end = data_.find('\n', pos_);
    if (end == std::string_view::npos) truncated("unterminated line");
    std::string_view line = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return line;
  }

  // --- values and the stack ---
  Value* make(Value::Kind kind) {
    charge(kValueCost);
    Value& v = pickle_.arena.emplace_back();
    v.kind = kind;
    return &v;
  }
  // Immutable values a pickle repeats (None, booleans, small ints, the empty
  // tuple) are made once.
  Value* shared(Value*& slot, Value::Kind kind) {
    if (!slot) slot = make(kind);
    return slot;
  }
  void push(Value* v) { grow(stack_, v); }
  Value* pop() {
    if (stack_.size() <= stack_floor()) fail("stack underflow");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.size() <= stack_floor()) fail("stack underflow");
    return stack_.back();
  }
  std::size_t stack_floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) fail("no MARK to pop to");
    const auto first = stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back());
    std::vector<Value*> items;
    grow_by(items, first, stack_.cend());
    stack_.erase(first, stack_.end());
    marks_.pop_back();
    return items;
  }
  Value* expect(Value* v, Value::Kind kind, const char* what) {
    if (v->kind != kind) fail(std::string(what) + " expected, got " + describe(*v));
    return v;
  }
  std::uint64_t non_negative(const Value* v, const char* what) {
    if (v->kind != Value::Kind::Int || v->integer < 0)
      fail(std::string(what) + " must be a non-negative int, got " + describe(*v));
    return static_cast<std::uint64_t>(v->integer);
  }

  void push_int(std::int64_t v) {
    if (v >= 0 && v < static_cast<std::int64_t>(small_ints_.size())) {
      Value*& slot = small_ints_[static_cast<std::size_t>(v)];
      if (!slot) shared(slot, Value::Kind::Int)->integer = v;
      return push(slot);
    }
    Value* x = make(Value::Kind::Int);
    x->integer = v;
    push(x);
  }
  void push_text(Value::Kind kind, std::string_view s);
  void push_tuple(std::vector<Value*> items) {
    if (items.empty()) return push(shared(empty_tuple_, Value::Kind::Tuple));
    Value* t = make(Value::Kind::Tuple);
    t->items = std::move(items);
    push(t);
  }
  // The memo is indexed densely, as every pickler numbers it; its slots are
  // charged like values, so a hostile index cannot claim unbounded memory.
  void memo_put(std::uint64_t index) {
    Value* v = top();
    if (index >= memo_.size()) {
      if (index >= budget() / sizeof(Value*))
        fail("memo index " + std::to_string(index) + " is out of reach", ErrorCode::LimitExceeded);
      const std::size_t size = static_cast<std::size_t>(index) + 1;
      if (size > memo_.capacity()) {
        const std::size_t capacity = std::max(size, 2 * memo_.capacity());
        charge(sizeof(Value*) * (capacity - memo_.capacity()) + (memo_.capacity() ? 0 : kHeapBlockCost));
        memo_.reserve(capacity);
      }
      memo_.resize(size, nullptr);
    }
    Value*& slot = memo_[static_cast<std::size_t>(index)];
    if (!slot) ++memo_count_;
    slot = v;
  }
  void memo_get(std::uint64_t index) {
    if (index >= memo_.size() || !memo_[static_cast<std::size_t>(index)])
      fail("memo index " + std::to_string(index) + " was never stored");
    push(memo_[static_cast<std::size_t>(index)]);
  }

  Value* resolve_global(std::string_view module, std::string_view name);
  Value* call(Value* callable, Value* args);
  Value* object(const std::string& type, const Value* state) {
    charge(string_heap_cost(type.size()));
    Value* o = make(Value::Kind::Object);
    o->text = type;
    o->state = state;
    return o;
  }
  Value* rebuild_tensor(const std::vector<Value*>& args);
  Value* persistent_load(Value* pid);

  // --- opcode handlers, in the order of the table ---
  void op_proto();
  // A size hint only; the opcodes inside are read as usual. Its claim is
  // checked against the input's bytes, not the window's: a window grows for
  // the opcodes that are read, never for a claim.
  void op_frame() {
    const std::uint64_t n = read_uint(8);
    if (n > end_ - pos_)
      fail("a frame of " + std::to_string(n) + " bytes runs past the end of the input (" +
           std::to_string(end_ - pos_) + " bytes left)");
  }
  void op_stop() { stopped_ = true; }
  void op_mark() { grow(marks_, stack_.size()); }
  void op_pop() { (void)pop(); }
  void op_pop_mark() { (void)pop_mark(); }
  void op_dup() { push(top()); }
  void op_none() { push(shared(none_, Value::Kind::None)); }
  void op_true() {
    if (!true_) shared(true_, Value::Kind::Bool)->boolean = true;
    push(true_);
  }
  void op_false() { push(shared(false_, Value::Kind::Bool)); }
  void op_binint() { push_int(static_cast<std::int32_t>(read_uint(4))); }
  void op_binint1() { push_int(static_cast<std::int64_t>(read_uint(1))); }
  void op_binint2() { push_int(static_cast<std::int64_t>(read_uint(2))); }
  void op_long1() { push_long(read_uint(1)); }
  void op_long4() { push_long(read_uint(4)); }
  void push_long(std::uint64_t n);
  void op_binfloat();
  void op_binunicode() { push_text(Value::Kind::String, take(read_uint(4))); }
  void op_short_binunicode() { push_text(Value::Kind::String, take(read_uint(1))); }
  void op_binunicode8() { push_text(Value::Kind::String, take(read_uint(8))); }
  void op_binbytes() { push_text(Value::Kind::Bytes, take(read_uint(4))); }
  void op_short_binbytes() { push_text(Value::Kind::Bytes, take(read_uint(1))); }
  void op_binbytes8() { push_text(Value::Kind::Bytes, take(read_uint(8))); }
  void op_empty_list() { push(make(Value::Kind::List)); }
  void op_empty_tuple() { push(shared(empty_tuple_, Value::Kind::Tuple)); }
  void op_empty_dict() { push(make(Value::Kind::Dict)); }
  void op_tuple() { push_tuple(pop_mark()); }
  void op_tuple1() { Value* a = pop(); push_small_tuple({a}); }
  void op_tuple2() { Value* b = pop(); Value* a = pop(); push_small_tuple({a, b}); }
  void op_tuple3() { Value* c = pop(); Value* b = pop(); Value* a = pop(); push_small_tuple({a, b, c}); }
  void push_small_tuple(std::initializer_list<Value*> items) {
    charge(sizeof(Value*) * items.size() + kHeapBlockCost);
    push_tuple(items);
  }
  void op_append();
  void op_appends();
  void op_setitem();
  void op_setitems();
  void op_binput() { memo_put(read_uint(1)); }
  void op_long_binput() { memo_put(read_uint(4)); }
  void op_memoize() { memo_put(memo_count_); }
  void op_binget() { memo_get(read_uint(1)); }
  void op_long_binget() { memo_get(read_uint(4)); }
  void op_global();
  void op_stack_global();
  void op_reduce();
  void op_newobj();
  void op_build();
  void op_binpersid() { Value* pid = pop(); push(persistent_load(pid)); }

  static const Opcode kOpcodes[];

  std::string_view data_;
  std::size_t pos_;
  std::size_t start_;  // where the pickle starts in data_
  std::size_t op_pos_ = 0;
  std::uint64_t base_;
  std::uint64_t end_;  // where the input ends, in the coordinates of data_ (past it for a window)
  const std::string& file_;
  std::uint64_t used_ = 0;
  Pickle pickle_;
  std::vector<Value*> stack_;
  std::vector<std::size_t> marks_;
  std::vector<Value*> memo_;
  std::uint64_t memo_count_ = 0;  // MEMOIZE numbers entries as Python does: by count
  Value* none_ = nullptr;
  Value* true_ = nullptr;
  Value* false_ = nullptr;
  Value* empty_tuple_ = nullptr;
  std::array<Value*, 256> small_ints_{};
  bool stopped_ = false;
};

// Every opcode of pickle protocols 0 to 5. Those without a handler are refused
// by name: a checkpoint never needs them, and several (INST, OBJ, NEWOBJ_EX,
// EXT*) exist to construct arbitrary objects. NEWOBJ is read for TorchScript
// classes only, whose objects stay opaque records.
const Opcode Machine::kOpcodes[] = {
    {0x80, "PROTO", &Machine::op_proto},
    {0x95, "FRAME", &Machine::op_frame},
    {'.', "STOP", &Machine::op_stop},
    {'(', "MARK", &Machine::op_mark},
    {'0', "POP", &Machine::op_pop},
    {'1', "POP_MARK", &Machine::op_pop_mark},
    {'2', "DUP", &Machine::op_dup},
    {'N', "NONE", &Machine::op_none},
    {0x88, "NEWTRUE", &Machine::op_true},
    {0x89, "NEWFALSE", &Machine::op_false},
    {'J', "BININT", &Machine::op_binint},
    {'K', "BININT1", &Machine::op_binint1},
    {'M', "BININT2", &Machine::op_binint2},
    {0x8a, "LONG1", &Machine::op_long1},
    {0x8b, "LONG4", &Machine::op_long4},
    {'G', "BINFLOAT", &Machine::op_binfloat},
    {'X', "BINUNICODE", &Machine::op_binunicode},
    {0x8c, "SHORT_BINUNICODE", &Machine::op_short_binunicode},
    {0x8d, "BINUNICODE8", &Machine::op_binunicode8},
    {'B', "BINBYTES", &Machine::op_binbytes},
    {'C', "SHORT_BINBYTES", &Machine::op_short_binbytes},
    {0x8e, "BINBYTES8", &Machine::op_binbytes8},
    {']', "EMPTY_LIST", &Machine::op_empty_list},
    {')', "EMPTY_TUPLE", &Machine::op_empty_tuple},
    {'}', "EMPTY_DICT", &Machine::op_empty_dict},
    {'t', "TUPLE", &Machine::op_tuple},
    {0x85, "TUPLE1", &Machine::op_tuple1},
    {0x86, "TUPLE2", &Machine::op_tuple2},
    {0x87, "TUPLE3", &Machine::op_tuple3},
    {'a', "APPEND", &Machine::op_append},
    {'e', "APPENDS", &Machine::op_appends},
    {'s', "SETITEM", &Machine::op_setitem},
    {'u', "SETITEMS", &Machine::op_setitems},
    {'q', "BINPUT", &Machine::op_binput},
    {'r', "LONG_BINPUT", &Machine::op_long_binput},
    {0x94, "MEMOIZE", &Machine::op_memoize},
    {'h', "BINGET", &Machine::op_binget},
    {'j', "LONG_BINGET", &Machine::op_long_binget},
    {'c', "GLOBAL", &Machine::op_global},
    {0x93, "STACK_GLOBAL", &Machine::op_stack_global},
    {'R', "REDUCE", &Machine::op_reduce},
    {'b', "BUILD", &Machine::op_build},
    {'Q', "BINPERSID", &Machine::op_binpersid},
    {0x81, "NEWOBJ", &Machine::op_newobj},
    // Refused.
    {'I', "INT", nullptr},
    {'L', "LONG", nullptr},
    {'F', "FLOAT", nullptr},
    {'S', "STRING", nullptr},
    {'T', "BINSTRING", nullptr},
    {'U', "SHORT_BINSTRING", nullptr},
    {'V', "UNICODE", nullptr},
    {'p', "PUT", nullptr},
    {'g', "GET", nullptr},
    {'P', "PERSID", nullptr},
    {'d', "DICT", nullptr},
    {'l', "LIST", nullptr},
    {'i', "INST", nullptr},
    {'o', "OBJ", nullptr},
    {0x92, "NEWOBJ_EX", nullptr},
    {0x82, "EXT1", nullptr},
    {0x83, "EXT2", nullptr},
    {0x84, "EXT4", nullptr},
    {0x8f, "EMPTY_SET", nullptr},
    {0x90, "ADDITEMS", nullptr},
    {0x91, "FROZENSET", nullptr},
    {0x96, "BYTEARRAY8", nullptr},
    {0x97, "NEXT_BUFFER", nullptr},
    {0x98, "READONLY_BUFFER", nullptr},
};

const std::array<const Opcode*, 256>& Machine::dispatch_table() {
  static const std::array<const Opcode*, 256> table = [] {
    std::array<const Opcode*, 256> t{};
    for (const Opcode& op : kOpcodes) t[op.code] = &op;
    return t;
  }();
  return table;
}

Pickle Machine::run(std::size_t& offset) {
  const auto& table = dispatch_table();
  while (!stopped_) {
    op_pos_ = pos_;
    const auto code = static_cast<std::uint8_t>(take(1)[0]);
    const Opcode* op = table[code];
    if (!op) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02x", code);
      fail(std::string("unknown opcode ") + hex);
    }
    if (!op->handler) fail(std::string("opcode ") + op->name + " is not allowed in a checkpoint");
    if (op_pos_ == offset && code != 0x80) fail("no PROTO opcode: only pickle protocols 2 to 5 are read");
    (this->*op->handler)();
  }
  if (stack_.size() != 1 || !marks_.empty()) fail("STOP with " + std::to_string(stack_.size()) + " values on the stack");
  pickle_.root = stack_.back();
  offset = pos_;
  return std::move(pickle_);
}

void Machine::op_proto() {
  const auto protocol = static_cast<int>(read_uint(1));
  if (protocol < kMinProtocol || protocol > kMaxProtocol)
    fail("pickle protocol " + std::to_string(protocol) + " (only 2 to 5 are read)");
}

void Machine::push_long(std::uint64_t n) {
  if (n > kMaxIntegerBytes) fail("an integer of " + std::to_string(n) + " bytes does not fit 64 bits");
  const std::string_view b = take(n);
  std::uint64_t v = 0;
  for (std::size_t i = n; i-- > 0;) v = (v << 8) | static_cast<unsigned char>(b[i]);
  // Sign-extend the two's complement value from n bytes.
  if (n > 0 && n < 8 && (static_cast<unsigned char>(b[n - 1]) & 0x80)) v |= ~std::uint64_t{0} << (8 * n);
  push_int(static_cast<std::int64_t>(v));
}

void Machine::op_binfloat() {
  std::uint64_t bits = 0;
  for (char c : take(8)) bits = (bits << 8) | static_cast<unsigned char>(c);  // big-endian
  Value* v = make(Value::Kind::Float);
  std::memcpy(&v->real, &bits, sizeof bits);
  push(v);
}

void Machine::push_text(Value::Kind kind, std::string_view s) {
  if (kind == Value::Kind::String && !detail::is_valid_utf8(s)) fail("a string is not valid UTF-8");
  charge(string_heap_cost(s.size()));
  Value* v = make(kind);
  v->text = std::string(s);
  push(v);
}

void Machine::op_append() {
  Value* item = pop();
  grow(expect(top(), Value::Kind::List, "APPEND target")->items, item);
}

void Machine::op_appends() {
  const std::vector<Value*> items = pop_mark();
  grow_by(expect(top(), Value::Kind::List, "APPENDS target")->items, items.cbegin(), items.cend());
}

void Machine::op_setitem() {
  Value* value = pop();
  Value* key = pop();
  grow(expect(top(), Value::Kind::Dict, "SETITEM target")->entries, key, value);
}

void Machine::op_setitems() {
  std::vector<Value*> items = pop_mark();
  if (items.size() % 2) fail("SETITEMS with an odd number of values");
  Value* dict = expect(top(), Value::Kind::Dict, "SETITEMS target");
  for (std::size_t i = 0; i < items.size(); i += 2) grow(dict->entries, items[i], items[i + 1]);
}

Value* Machine::resolve_global(std::string_view module, std::string_view name) {
  const std::string full = std::string(module) + "." + std::string(name);
  charge(string_heap_cost(full.size()));
  Value* g = make(Value::Kind::Global);
  g->text = full;
  if (full == "collections.OrderedDict") {
    g->callable = Callable::OrderedDict;
  } else if (full == "torch._utils._rebuild_tensor_v2") {
    g->callable = Callable::RebuildTensor;
  } else if (full == "torch._utils._rebuild_parameter" ||
             full == "torch._utils._rebuild_parameter_with_state") {
    g->callable = Callable::RebuildParameter;
  } else if (module == "__torch__" || module.substr(0, 10) == "__torch__.") {
    // The classes of a TorchScript archive (its modules, and its enums made by
    // REDUCE): their code is in the archive, and it is never compiled or run.
    g->callable = Callable::TorchScriptClass;
  } else if (full == "torch.jit._pickle.build_intlist" || full == "torch.jit._pickle.build_doublelist" ||
             full == "torch.jit._pickle.build_boollist" || full == "torch.jit._pickle.build_tensorlist") {
    g->callable = Callable::BuildList;
  } else if (full == "torch.jit._pickle.restore_type_tag") {
    g->callable = Callable::RestoreTypeTag;
  } else if (full == "torch.device") {
    g->callable = Callable::Device;
  } else if (full == "builtins.complex") {
    g->callable = Callable::Complex;
  } else if (full == "torch.Size") {
    g->callable = Callable::Size;
  } else if (module == "torch" && std::any_of(std::begin(kDtypeValues), std::end(kDtypeValues),
                                               [&](const char* dtype) { return name == dtype; })) {
    g->callable = Callable::DtypeValue;
  } else {
    if (module == "torch") {
      for (const StorageType& s : kStorageTypes)
        if (name == s.name) {
          g->callable = Callable::StorageType;
          g->storage_dtype = s.dtype;
          return g;
        }
      for (const char* s : kStorageTypesWithoutDtype)
        if (name == s) fail("torch." + std::string(name) + " has no safetensors dtype", ErrorCode::UnsupportedDtype);
    }
    fail("global '" + full + "' is not allowed: a checkpoint may only refer to tensors, storages, OrderedDict, "
         "torch.Size, torch.device, dtypes and TorchScript's classes and containers; nothing is imported or run");
  }
  return g;
}

void Machine::op_global() {
  const std::string_view module = read_line();
  const std::string_view name = read_line();
  push(resolve_global(module, name));
}

void Machine::op_stack_global() {
  Value* name = expect(pop(), Value::Kind::String, "STACK_GLOBAL name");
  Value* module = expect(pop(), Value::Kind::String, "STACK_GLOBAL module");
  push(resolve_global(module->text, name->text));
}

void Machine::op_reduce() {
  Value* args = pop();
  Value* callable = expect(pop(), Value::Kind::Global, "REDUCE callable");
  // A TorchScript enum is its class applied to its value, given bare.
  if (callable->callable == Callable::TorchScriptClass) return push(object(callable->text, args));
  expect(args, Value::Kind::Tuple, "REDUCE arguments");
  push(call(callable, args));
}

// cls.__new__(cls, *args) for a TorchScript class: an object without state,
// which BUILD gives its attributes (or what its __getstate__ returned). Its
// __setstate__ is never run.
void Machine::op_newobj() {
  Value* args = expect(pop(), Value::Kind::Tuple, "NEWOBJ arguments");
  Value* cls = expect(pop(), Value::Kind::Global, "NEWOBJ class");
  if (cls->callable != Callable::TorchScriptClass)
    fail("opcode NEWOBJ is not allowed in a checkpoint but for TorchScript classes (__torch__.*), not for '" +
         cls->text + "'");
  if (!args->items.empty()) fail("NEWOBJ of '" + cls->text + "' with arguments");
  push(object(cls->text, nullptr));
}

Value* Machine::call(Value* callable, Value* args) {
  const std::vector<Value*>& a = args->items;
  switch (callable->callable) {
    case Callable::OrderedDict: {
      if (!a.empty()) fail("collections.OrderedDict called with arguments");
      Value* d = make(Value::Kind::Dict);
      d->ordered = true;
      return d;
    }
    case Callable::RebuildTensor:
      return rebuild_tensor(a);
    case Callable::RebuildParameter:
      // (data, requires_grad, backward_hooks[, state]): the data is the tensor.
      if (a.size() < 3 || a.size() > 4) fail("_rebuild_parameter with " + std::to_string(a.size()) + " arguments");
      expect(a[0], Value::Kind::Tensor, "_rebuild_parameter data");
      a[0]->tensor->requires_grad = expect(a[1], Value::Kind::Bool, "requires_grad")->boolean;
      return a[0];
    case Callable::BuildList:
      if (a.size() != 1 || a[0]->kind != Value::Kind::List) fail("'" + callable->text + "' expects one list");
      return a[0];
    case Callable::RestoreTypeTag:
      if (a.size() != 2 || (a[0]->kind != Value::Kind::List && a[0]->kind != Value::Kind::Dict) ||
          a[1]->kind != Value::Kind::String)
        fail("'" + callable->text + "' expects a list or dict and its type");
      return a[0];
    case Callable::Device:
      if (a.empty() || a.size() > 2 || a[0]->kind != Value::Kind::String ||
          (a.size() == 2 && a[1]->kind != Value::Kind::Int))
        fail("torch.device expects a device name and an optional index");
      return object(callable->text, args);
    case Callable::Complex:
      if (a.size() != 2 || a[0]->kind != Value::Kind::Float || a[1]->kind != Value::Kind::Float)
        fail("builtins.complex expects two floats");
      return object(callable->text, args);
    case Callable::Size:
      if (a.size() != 1 || (a[0]->kind != Value::Kind::Tuple && a[0]->kind != Value::Kind::List) ||
          !std::all_of(a[0]->items.begin(), a[0]->items.end(), [](const Value* d) { return d->kind == Value::Kind::Int; }))
        fail("torch.Size expects one tuple of ints");
      return object(callable->text, a[0]);
    case Callable::StorageType:
    case Callable::TorchScriptClass:
    case Callable::DtypeValue:
      break;
  }
  fail("'" + callable->text + "' cannot be called");
}

Value* Machine::persistent_load(Value* pid) {
  expect(pid, Value::Kind::Tuple, "persistent id");
  const std::vector<Value*>& f = pid->items;
  // ('storage', storage_type, key, location, numel); the legacy format adds a
  // sixth field, None unless the storage is a view of another (torch < 1.0).
  if ((f.size() != 5 && f.size() != 6) || f[0]->kind != Value::Kind::String || f[0]->text != "storage")
    fail("persistent id is not ('storage', type, key, location, numel)");
  if (f.size() == 6 && f[5]->kind != Value::Kind::None)
    fail("a storage saved as a view of another storage (torch before 1.0) is not read; load and re-save "
         "the file with a newer torch");
  Value* type = expect(f[1], Value::Kind::Global, "storage type");
  if (type->callable != Callable::StorageType) fail("'" + type->text + "' is not a storage type");
  charge(sizeof(StorageRef) + kHeapBlockCost + string_heap_cost(f[2]->text.size()) +
         string_heap_cost(f[3]->text.size()));
  auto storage = std::make_unique<StorageRef>();
  storage->dtype = type->storage_dtype;
  storage->key = expect(f[2], Value::Kind::String, "storage key")->text;
  storage->location = expect(f[3], Value::Kind::String, "storage location")->text;
  storage->numel = non_negative(f[4], "storage size");
  std::uint64_t bits = 0;
  if (!checked_numel_bits({storage->numel}, dtype_bits(storage->dtype), bits))
    fail("storage '" + storage->key + "' size overflows", ErrorCode::ValidationOverflow);
  Value* v = make(Value::Kind::Storage);
  v->storage = std::move(storage);
  return v;
}

// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
// backward_hooks[, metadata]); the view must lie inside the storage.
Value* Machine::rebuild_tensor(const std::vector<Value*>& a) {
  if (a.size() != 6 && a.size() != 7) fail("_rebuild_tensor_v2 with " + std::to_string(a.size()) + " arguments");
  auto t = std::make_unique<TensorRef>();
  t->storage = expect(a[0], Value::Kind::Storage, "tensor storage")->storage.get();
  t->offset = non_negative(a[1], "storage offset");
  t->size = expect(a[2], Value::Kind::Tuple, "tensor size");
  t->stride = expect(a[3], Value::Kind::Tuple, "tensor stride");
  const std::size_t rank = t->size->items.size();
  if (rank != t->stride->items.size()) fail("tensor size and stride differ in rank");
  if (rank > kMaxRank)
    fail("tensor of rank " + std::to_string(rank) + " (at most " + std::to_string(kMaxRank) + ")", ErrorCode::LimitExceeded);
  charge(sizeof(TensorRef) + kHeapBlockCost);
  std::vector<std::uint64_t> size(rank);
  for (std::size_t i = 0; i < rank; ++i) {
    size[i] = non_negative(t->size->items[i], "tensor size");
    (void)non_negative(t->stride->items[i], "tensor stride");
  }
  t->requires_grad = expect(a[4], Value::Kind::Bool, "requires_grad")->boolean;
  if (a[5]->kind != Value::Kind::Dict || !a[5]->entries.empty())
    fail("tensor with backward hooks (" + describe(*a[5]) + ")");

  // The last element the view reaches must be inside the storage.
  std::uint64_t numel = 0;
  if (!checked_numel_bits(size, 1, numel)) fail("tensor size overflows", ErrorCode::ValidationOverflow);
  if (numel > 0) {
    std::uint64_t last = t->offset;
    for (std::size_t i = 0; i < rank; ++i) {
      std::uint64_t step = 0;
      if (__builtin_mul_overflow(size[i] - 1, t->stride_at(i), &step) || __builtin_add_overflow(last, step, &last))
        fail("tensor extent overflows", ErrorCode::ValidationOverflow);
    }
    if (last >= t->storage->numel)
      fail("tensor view (offset " + std::to_string(t->offset) + ", last element " + std::to_string(last) +
               ") lies outside its storage '" + t->storage->key + "' of " + std::to_string(t->storage->numel) + " elements",
           ErrorCode::TensorInvalidInfo);
  }
  Value* v = make(Value::Kind::Tensor);
  v->tensor = std::move(t);
  return v;
}

void Machine::op_build() {
  Value* state = pop();
  Value* target = top();
  // OrderedDict state dicts carry their `_metadata` (module versions) as
  // instance state; it is a dict and is accepted without being applied.
  if (target->kind == Value::Kind::Dict && target->ordered && state->kind == Value::Kind::Dict) return;
  // A TorchScript object keeps its state as data.
  if (target->kind == Value::Kind::Object && !target->state) {
    target->state = state;
    return;
  }
  fail("BUILD of " + describe(*target) + " with " + describe(*state));
}

}  // namespace

std::string describe(const Value& v) {
  switch (v.kind) {
    case Value::Kind::None: return "None";
    case Value::Kind::Bool: return v.boolean ? "bool True" : "bool False";
    case Value::Kind::Int: return "int " + std::to_string(v.integer);
    case Value::Kind::Float: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "float %.17g", v.real);
      return buf;
    }
    case Value::Kind::String:
      return v.text.size() <= 40 ? "str '" + v.text + "'" : "str of " + std::to_string(v.text.size()) + " chars";
    case Value::Kind::Bytes: return "bytes of " + std::to_string(v.text.size());
    case Value::Kind::List: return "list of " + std::to_string(v.items.size());
    case Value::Kind::Tuple: return "tuple of " + std::to_string(v.items.size());
    case Value::Kind::Dict: return (v.ordered ? "OrderedDict of " : "dict of ") + std::to_string(v.entries.size());
    case Value::Kind::Global: return (v.callable == Callable::DtypeValue ? "dtype " : "global ") + v.text;
    case Value::Kind::Storage: return "storage '" + v.storage->key + "'";
    case Value::Kind::Tensor: return "tensor";
    case Value::Kind::Object:
      if (v.text == "torch.Size" && v.state && v.state->items.size() <= 8) {
        std::string dims;
        for (const Value* d : v.state->items) dims += (dims.empty() ? "" : ", ") + std::to_string(d->integer);
        return "torch.Size([" + dims + "])";
      }
      return "object " + v.text;
  }
  return "value";
}

Pickle unpickle(std::string_view data, std::size_t& offset, const std::string& file) {
  if (offset > data.size()) throw Error(ErrorCode::InvalidCheckpoint, file, "", "pickle: offset past the end");
  return Machine(data, offset, file, data.size() - offset).run(offset);
}

Pickle unpickle(std::string_view data, const std::string& file) {
  std::size_t offset = 0;
  Pickle p = unpickle(data, offset, file);
  if (offset != data.size())
    throw Error(ErrorCode::InvalidCheckpoint, file, "",
                "pickle: " + std::to_string(data.size() - offset) + " bytes after STOP");
  return p;
}

Pickle unpickle(const Source& source, std::uint64_t& offset) {
  const std::string& file = source.path();
  if (offset > source.size()) throw Error(ErrorCode::InvalidCheckpoint, file, "", "pickle: offset past the end");
  const std::uint64_t available = source.size() - offset;
  if (source.data()) {
    const std::string_view whole(reinterpret_cast<const char*>(source.data()), static_cast<std::size_t>(source.size()));
    std::size_t at = static_cast<std::size_t>(offset);
    Pickle p = Machine(whole, at, file, available).run(at);
    offset = at;
    return p;
  }
  // Positional reads: a window from the pickle's start, doubled until the
  // pickle ends inside it. Values copy what they keep, so each window is
  // dropped once read.
  for (std::uint64_t window = std::min(available, kFirstWindow);; window = std::min(available, 2 * window)) {
    std::string bytes(static_cast<std::size_t>(window), '\0');
    source.read(offset, bytes.data(), bytes.size());
    std::size_t end = 0;
    try {
      Pickle p = Machine(bytes, 0, file, available, offset).run(end);
      offset += end;
      return p;
    } catch (const Truncated&) {
      if (window == available) throw;
    }
  }
}

}  // namespace safetensors::pickle
