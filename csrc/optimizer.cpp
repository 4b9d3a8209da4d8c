// An optimizer's state from and to checkpoints in the layout of Python's
// `optimizer.state_dict()`: LibTorch's state classes mapped to Python's names,
// the param groups as JSON in the metadata. A load checks everything and reads
// every tensor before it changes the optimizer.

#include "safetensors/optimizer.hpp"

#include "module_internal.hpp"
#include "optimizer_internal.hpp"
#include "save_internal.hpp"

#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/lbfgs.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/util/irange.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <sstream>
#include <type_traits>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "detail/json_nonfinite.hpp"
#include "safetensors/error.hpp"
#include "safetensors/sharded.hpp"
#include "safetensors/torch_dtype.hpp"

namespace safetensors {

namespace detail {

namespace {

using json = nlohmann::ordered_json;
namespace optim = torch::optim;

enum class Kind { SGD, Adam, AdamW, RMSprop, Adagrad };

const char* name_of(Kind kind) {
  switch (kind) {
    case Kind::SGD: return "SGD";
    case Kind::Adam: return "Adam";
    case Kind::AdamW: return "AdamW";
    case Kind::RMSprop: return "RMSprop";
    case Kind::Adagrad: return "Adagrad";
  }
  return "?";
}

Kind kind_of(const optim::Optimizer& optimizer, const std::string& file) {
  if (dynamic_cast<const optim::SGD*>(&optimizer)) return Kind::SGD;
  if (dynamic_cast<const optim::Adam*>(&optimizer)) return Kind::Adam;
  if (dynamic_cast<const optim::AdamW*>(&optimizer)) return Kind::AdamW;
  if (dynamic_cast<const optim::RMSprop*>(&optimizer)) return Kind::RMSprop;
  if (dynamic_cast<const optim::Adagrad*>(&optimizer)) return Kind::Adagrad;
  if (dynamic_cast<const optim::LBFGS*>(&optimizer))
    throw Error(ErrorCode::InvalidArgument, file, "",
                "LBFGS is not supported: its state is one history for all parameters (deques of "
                "flattened tensors, Python floats), which has no state.{i}.{key} tensor layout that "
                "Python's load_state_dict takes");
  throw Error(ErrorCode::InvalidArgument, file, "",
              "only SGD, Adam, AdamW, RMSprop and Adagrad optimizers are supported");
}

// The tensor keys of a kind's per-parameter state, in Python's order.
const std::vector<std::string>& tensor_keys(Kind kind) {
  static const std::vector<std::string> sgd{"momentum_buffer"};
  static const std::vector<std::string> adam{"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  static const std::vector<std::string> rmsprop{"square_avg", "momentum_buffer", "grad_avg"};
  static const std::vector<std::string> adagrad{"sum"};
  switch (kind) {
    case Kind::SGD: return sgd;
    case Kind::Adam:
    case Kind::AdamW: return adam;
    case Kind::RMSprop: return rmsprop;
    case Kind::Adagrad: return adagrad;
  }
  return sgd;
}

bool has_step(Kind kind) { return kind != Kind::SGD; }

// Whether a parameter's state must hold `key` (or "step") under `options`.
bool required(Kind kind, const optim::OptimizerOptions& options, const std::string& key) {
  switch (kind) {
    case Kind::SGD: return true;
    case Kind::Adam: return key != "max_exp_avg_sq" || static_cast<const optim::AdamOptions&>(options).amsgrad();
    case Kind::AdamW: return key != "max_exp_avg_sq" || static_cast<const optim::AdamWOptions&>(options).amsgrad();
    case Kind::RMSprop: {
      const auto& o = static_cast<const optim::RMSpropOptions&>(options);
      if (key == "momentum_buffer") return o.momentum() > 0;
      if (key == "grad_avg") return o.centered();
      return true;
    }
    case Kind::Adagrad: return true;
  }
  return true;
}

// A parameter's state with Python's names; undefined tensors are absent.
struct Flat {
  std::optional<std::int64_t> step;
  std::map<std::string, at::Tensor> tensors;
};

Flat flatten(Kind kind, const optim::OptimizerParamState& state) {
  Flat out;
  auto put = [&](const char* key, const at::Tensor& t) {
    if (t.defined()) out.tensors.emplace(key, t);
  };
  switch (kind) {
    case Kind::SGD: put("momentum_buffer", static_cast<const optim::SGDParamState&>(state).momentum_buffer()); break;
    case Kind::Adam: {
      const auto& s = static_cast<const optim::AdamParamState&>(state);
      out.step = s.step();
      put("exp_avg", s.exp_avg());
      put("exp_avg_sq", s.exp_avg_sq());
      put("max_exp_avg_sq", s.max_exp_avg_sq());
      break;
    }
    case Kind::AdamW: {
      const auto& s = static_cast<const optim::AdamWParamState&>(state);
      out.step = s.step();
      put("exp_avg", s.exp_avg());
      put("exp_avg_sq", s.exp_avg_sq());
      put("max_exp_avg_sq", s.max_exp_avg_sq());
      break;
    }
    case Kind::RMSprop: {
      const auto& s = static_cast<const optim::RMSpropParamState&>(state);
      out.step = s.step();
      put("square_avg", s.square_avg());
      put("momentum_buffer", s.momentum_buffer());
      put("grad_avg", s.grad_avg());
      break;
    }
    case Kind::Adagrad: {
      const auto& s = static_cast<const optim::AdagradParamState&>(state);
      out.step = s.step();
      put("sum", s.sum());
      break;
    }
  }
  return out;
}

std::unique_ptr<optim::OptimizerParamState> build(Kind kind, const Flat& flat) {
  auto get = [&](const char* key) {
    const auto it = flat.tensors.find(key);
    return it == flat.tensors.end() ? at::Tensor() : it->second;
  };
  const std::int64_t step = flat.step.value_or(0);
  switch (kind) {
    case Kind::SGD: {
      auto s = std::make_unique<optim::SGDParamState>();
      s->momentum_buffer(get("momentum_buffer"));
      return s;
    }
    case Kind::Adam: {
      auto s = std::make_unique<optim::AdamParamState>();
      s->step(step).exp_avg(get("exp_avg")).exp_avg_sq(get("exp_avg_sq")).max_exp_avg_sq(get("max_exp_avg_sq"));
      return s;
    }
    case Kind::AdamW: {
      auto s = std::make_unique<optim::AdamWParamState>();
      s->step(step).exp_avg(get("exp_avg")).exp_avg_sq(get("exp_avg_sq")).max_exp_avg_sq(get("max_exp_avg_sq"));
      return s;
    }
    case Kind::RMSprop: {
      auto s = std::make_unique<optim::RMSpropParamState>();
      s->step(step).square_avg(get("square_avg")).momentum_buffer(get("momentum_buffer")).grad_avg(get("grad_avg"));
      return s;
    }
    case Kind::Adagrad: {
      auto s = std::make_unique<optim::AdagradParamState>();
      s->step(step).sum(get("sum"));
      return s;
    }
  }
  return nullptr;
}

// The key of a parameter in Optimizer::state(): the address of its
// TensorImpl, as text in LibTorch 1.13 and as the pointer itself in 2.x.
template <typename Map>
typename Map::key_type state_key(const Map& /*state*/, const at::Tensor& param) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;  // c10::guts::to_string's format
    text << static_cast<const void*>(param.unsafeGetTensorImpl());
    return text.str();
  } else {
    return static_cast<Key>(param.unsafeGetTensorImpl());
  }
}

// ---- hyperparameters ----

json betas_json(const std::tuple<double, double>& betas) {
  return json::array({std::get<0>(betas), std::get<1>(betas)});
}

// A group's hyperparameters with the names and in the order torch 2.6 writes
// them; the implementation switches have LibTorch's fixed values.
json group_json(Kind kind, const optim::OptimizerOptions& options) {
  json g = json::object();
  switch (kind) {
    case Kind::SGD: {
      const auto& o = static_cast<const optim::SGDOptions&>(options);
      g["lr"] = o.lr();
      g["momentum"] = o.momentum();
      g["dampening"] = o.dampening();
      g["weight_decay"] = o.weight_decay();
      g["nesterov"] = o.nesterov();
      g["maximize"] = false;
      g["foreach"] = nullptr;
      g["differentiable"] = false;
      g["fused"] = nullptr;
      break;
    }
    case Kind::Adam:
    case Kind::AdamW: {
      const auto adam = [&](const auto& o) {
        g["lr"] = o.lr();
        g["betas"] = betas_json(o.betas());
        g["eps"] = o.eps();
        g["weight_decay"] = o.weight_decay();
        g["amsgrad"] = o.amsgrad();
      };
      if (kind == Kind::Adam) {
        adam(static_cast<const optim::AdamOptions&>(options));
      } else {
        adam(static_cast<const optim::AdamWOptions&>(options));
      }
      g["maximize"] = false;
      g["foreach"] = nullptr;
      g["capturable"] = false;
      g["differentiable"] = false;
      g["fused"] = nullptr;
      break;
    }
    case Kind::RMSprop: {
      const auto& o = static_cast<const optim::RMSpropOptions&>(options);
      g["lr"] = o.lr();
      g["momentum"] = o.momentum();
      g["alpha"] = o.alpha();
      g["eps"] = o.eps();
      g["centered"] = o.centered();
      g["weight_decay"] = o.weight_decay();
      g["capturable"] = false;
      g["foreach"] = nullptr;
      g["maximize"] = false;
      g["differentiable"] = false;
      break;
    }
    case Kind::Adagrad: {
      const auto& o = static_cast<const optim::AdagradOptions&>(options);
      g["lr"] = o.lr();
      g["lr_decay"] = o.lr_decay();
      g["eps"] = o.eps();
      g["weight_decay"] = o.weight_decay();
      g["initial_accumulator_value"] = o.initial_accumulator_value();
      g["foreach"] = nullptr;
      g["maximize"] = false;
      g["differentiable"] = false;
      g["fused"] = nullptr;
      break;
    }
  }
  return g;
}

// A value as messages show it: Python's text, NaN and Infinity included.
std::string shown(const json& value) { return dump_python_json(value); }

// Reads one group's hyperparameters, collecting every problem.
class GroupReader {
 public:
  GroupReader(const json& group, std::size_t index, std::vector<std::string>& problems)
      : group_(group), where_("param_groups[" + std::to_string(index) + "]"), problems_(problems) {}

  // A number >= `min` (and < `below` when given): NaN never is one.
  std::optional<double> number(const char* key, double min = 0,
                               std::optional<double> below = std::nullopt) {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number() || !(v->get<double>() >= min) || (below && !(v->get<double>() < *below))) {
      problem(std::string("'") + key + "' must be a number >= " + text(min) +
              (below ? " and < " + text(*below) : "") + ", found " + shown(*v));
      return std::nullopt;
    }
    return v->get<double>();
  }

  // Any number, NaN and the infinities included: one neither Python nor
  // LibTorch bounds.
  std::optional<double> any_number(const char* key) {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) {
      problem(std::string("'") + key + "' must be a number, found " + shown(*v));
      return std::nullopt;
    }
    return v->get<double>();
  }

  std::optional<bool> flag(const char* key) {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) {
      problem(std::string("'") + key + "' must be true or false, found " + shown(*v));
      return std::nullopt;
    }
    return v->get<bool>();
  }

  std::optional<std::tuple<double, double>> betas() {
    const json* v = find("betas", true);
    if (!v) return std::nullopt;
    if (!v->is_array() || v->size() != 2 || !(*v)[0].is_number() || !(*v)[1].is_number() ||
        !((*v)[0].get<double>() >= 0 && (*v)[0].get<double>() < 1) ||
        !((*v)[1].get<double>() >= 0 && (*v)[1].get<double>() < 1)) {
      problem("'betas' must be two numbers in [0, 1), found " + shown(*v));
      return std::nullopt;
    }
    return std::make_tuple((*v)[0].get<double>(), (*v)[1].get<double>());
  }

  // A switch that must be absent, null or `allowed`: LibTorch's algorithm
  // is the one it selects.
  void fixed(const char* key, bool allowed, const char* why) {
    const json* v = find(key, false);
    if (!v || v->is_null()) return;
    if (!v->is_boolean()) {
      problem(std::string("'") + key + "' must be true or false, found " + shown(*v));
    } else if (v->get<bool>() != allowed) {
      problem(std::string("'") + key + "' is " + shown(*v) + ": " + why);
    }
  }

  // Switches of the implementation (loops, kernels, graphs, autograd): any value.
  void implementation(const char* key) {
    const json* v = find(key, false);
    if (v && !v->is_null() && !v->is_boolean())
      problem(std::string("'") + key + "' must be true, false or null, found " + shown(*v));
  }

  // The keys not read, in the file's order: unknown to the kind in LibTorch
  // (a Python scheduler's `initial_lr`, a key of the user's).
  std::vector<std::string> unknown() const {
    std::vector<std::string> out;
    for (const auto& item : group_.items())
      if (item.key() != "params" && !seen_.count(item.key())) out.push_back(item.key());
    return out;
  }

  void problem(const std::string& text) { problems_.push_back(where_ + ": " + text); }

 private:
  static std::string text(double value) {
    std::ostringstream out;
    out << value;
    return out.str();
  }

  const json* find(const char* key, bool required = true) {
    seen_.insert(key);
    const auto it = group_.find(key);
    if (it == group_.end()) {
      if (required) problem(std::string("'") + key + "' is missing");
      return nullptr;
    }
    return &*it;
  }

  const json& group_;
  std::string where_;
  std::vector<std::string>& problems_;
  std::set<std::string> seen_;
};

// The group's hyperparameters from `g`, over a copy of `current`; the keys
// LibTorch has no place for in `unknown`.
std::unique_ptr<optim::OptimizerOptions> read_group(Kind kind, const json& g, std::size_t index,
                                                    const optim::OptimizerOptions& current,
                                                    std::vector<std::string>& problems,
                                                    std::vector<std::string>& unknown) {
  std::unique_ptr<optim::OptimizerOptions> out = current.clone();
  GroupReader r(g, index, problems);
  constexpr const char* kNoMaximize = "LibTorch's optimizers cannot maximize";
  const auto set = [](auto&& value, auto&& setter) {
    if (value) setter(*value);
  };
  switch (kind) {
    case Kind::SGD: {
      auto& o = static_cast<optim::SGDOptions&>(*out);
      set(r.number("lr"), [&](double v) { o.lr(v); });
      set(r.number("momentum"), [&](double v) { o.momentum(v); });
      set(r.any_number("dampening"), [&](double v) { o.dampening(v); });
      set(r.number("weight_decay"), [&](double v) { o.weight_decay(v); });
      set(r.flag("nesterov"), [&](bool v) { o.nesterov(v); });
      r.implementation("fused");
      if (o.nesterov() && (o.momentum() <= 0 || o.dampening() != 0))
        r.problem("'nesterov' needs a momentum and zero dampening");
      break;
    }
    case Kind::Adam:
    case Kind::AdamW: {
      const auto adam = [&](auto& o) {
        set(r.number("lr"), [&](double v) { o.lr(v); });
        set(r.betas(), [&](std::tuple<double, double> v) { o.betas(v); });
        set(r.number("eps"), [&](double v) { o.eps(v); });
        set(r.number("weight_decay"), [&](double v) { o.weight_decay(v); });
        set(r.flag("amsgrad"), [&](bool v) { o.amsgrad(v); });
      };
      if (kind == Kind::Adam) {
        adam(static_cast<optim::AdamOptions&>(*out));
        r.fixed("decoupled_weight_decay", false, "that is AdamW, and the optimizer is Adam");
      } else {
        adam(static_cast<optim::AdamWOptions&>(*out));
        r.fixed("decoupled_weight_decay", true, "that is Adam, and the optimizer is AdamW");
      }
      r.implementation("capturable");
      r.implementation("fused");
      break;
    }
    case Kind::RMSprop: {
      auto& o = static_cast<optim::RMSpropOptions&>(*out);
      set(r.number("lr"), [&](double v) { o.lr(v); });
      set(r.number("momentum"), [&](double v) { o.momentum(v); });
      set(r.number("alpha"), [&](double v) { o.alpha(v); });
      set(r.number("eps"), [&](double v) { o.eps(v); });
      set(r.flag("centered"), [&](bool v) { o.centered(v); });
      set(r.number("weight_decay"), [&](double v) { o.weight_decay(v); });
      r.implementation("capturable");
      break;
    }
    case Kind::Adagrad: {
      auto& o = static_cast<optim::AdagradOptions&>(*out);
      set(r.number("lr"), [&](double v) { o.lr(v); });
      set(r.number("lr_decay"), [&](double v) { o.lr_decay(v); });
      set(r.number("eps"), [&](double v) { o.eps(v); });
      set(r.number("weight_decay"), [&](double v) { o.weight_decay(v); });
      set(r.number("initial_accumulator_value"), [&](double v) { o.initial_accumulator_value(v); });
      r.implementation("fused");
      break;
    }
  }
  r.fixed("maximize", false, kNoMaximize);
  r.implementation("foreach");
  r.implementation("differentiable");
  unknown = r.unknown();
  return out;
}

// "state.{i}.{key}" after the prefix: i and key, or nullopt.
std::optional<std::pair<std::uint64_t, std::string>> parse_state_name(const std::string& rest) {
  static const std::string head = "state.";
  if (rest.compare(0, head.size(), head) != 0) return std::nullopt;
  const std::size_t dot = rest.find('.', head.size());
  if (dot == std::string::npos || dot == head.size() || dot + 1 == rest.size()) return std::nullopt;
  const std::string digits = rest.substr(head.size(), dot - head.size());
  if (digits.size() > 18 || (digits.size() > 1 && digits[0] == '0')) return std::nullopt;
  std::uint64_t id = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    id = id * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return std::make_pair(id, rest.substr(dot + 1));
}

// Why a `step` tensor cannot be a step count, or nullopt; the count in `step`.
std::optional<std::string> step_misfit(const ShardedOpen& checkpoint, const TensorInfo& info,
                                       std::int64_t& step) {
  const auto type = to_torch_dtype(info.dtype);
  if (!info.shape.empty()) return "shape: a step is a 0-dim tensor";
  if (!type || !(at::isFloatingType(*type) || at::isIntegralType(*type, /*includeBool=*/false)))
    return "dtype: a step is a float or integer tensor";
  const at::Tensor t = checkpoint.get_tensor(info.name);
  if (at::isFloatingType(*type)) {
    const double v = t.item<double>();
    // 2^63: the first double above int64's range.
    if (!(v >= 0) || v != std::floor(v) || v >= 9223372036854775808.0)
      return "a step is a whole number in [0, 2^63), found " + shown(json(v));
    step = static_cast<std::int64_t>(v);
  } else {
    step = t.item<std::int64_t>();
    if (step < 0) return "a step is a whole number in [0, 2^63), found " + std::to_string(step);
  }
  return std::nullopt;
}

std::string dtype_text(c10::ScalarType type) {
  if (auto d = from_torch_dtype(type)) return std::string(dtype_name(*d));
  return c10::toString(type);
}

}  // namespace

const std::string* metadata_entry(const ShardedOpen& checkpoint, const std::string& key) {
  if (const auto it = checkpoint.metadata().find(key); it != checkpoint.metadata().end()) return &it->second;
  for (const SafeOpen& shard : checkpoint.shards())
    if (const auto it = shard.metadata().find(key); it != shard.metadata().end()) return &it->second;
  return nullptr;
}

std::pair<NamedTensors, std::string> optimizer_to_save(const optim::Optimizer& optimizer,
                                                       const std::string& prefix, const std::string& file) {
  const Kind kind = kind_of(optimizer, file);
  NamedTensors tensors;
  json groups = json::array();
  std::uint64_t id = 0;
  const auto& state = optimizer.state();
  for (const optim::OptimizerParamGroup& group : optimizer.param_groups()) {
    json g = group_json(kind, group.options());
    json params = json::array();
    for (const at::Tensor& param : group.params()) {
      params.push_back(id);
      const auto it = state.find(state_key(state, param));
      if (it != state.end() && it->second) {
        const std::string name = prefix + "state." + std::to_string(id) + ".";
        const Flat flat = flatten(kind, *it->second);
        if (flat.step) {
          // Python's float32 step, unless float32 would round it.
          const bool exact = *flat.step <= (std::int64_t{1} << 24);
          tensors.add(name + "step",
                      at::scalar_tensor(static_cast<double>(*flat.step), exact ? at::kFloat : at::kDouble));
        }
        for (const auto& [key, t] : flat.tensors) tensors.add(name + key, t);
      }
      ++id;
    }
    g["params"] = std::move(params);
    groups.push_back(std::move(g));
  }
  // NaN and the infinities as Python writes them (nlohmann would write null).
  return {std::move(tensors), dump_python_json(groups)};
}

struct OptimizerLoad::Parameter {
  at::Tensor param;
  bool fits = false;  // the file's state for it is taken
  std::unique_ptr<optim::OptimizerParamState> state;  // null: no state
};

OptimizerLoad::OptimizerLoad(OptimizerLoad&&) noexcept = default;
OptimizerLoad::~OptimizerLoad() = default;

OptimizerLoad::OptimizerLoad(optim::Optimizer& optimizer, const ShardedOpen& checkpoint,
                             const OptimizerLoadOptions& options)
    : optimizer_(&optimizer) {
  const std::string& file = checkpoint.path();
  const Kind kind = kind_of(optimizer, file);
  const std::string& prefix = options.prefix();
  const std::string groups_key = prefix + kParamGroupsKey;
  const auto& groups = optimizer.param_groups();

  // ---- the param groups ----
  std::vector<std::string> problems;
  std::size_t unknown_keys = 0;  // hyperparameters LibTorch has no place for, in report_
  const std::string* text = metadata_entry(checkpoint, groups_key);
  if (!text)
    throw Error(ErrorCode::StateDictMismatch, file, "",
                "no metadata key '" + escape_control(groups_key) +
                    "': not an optimizer checkpoint (or another prefix)");
  if (json_depth(*text) > kMaxJsonDepth)
    throw Error(ErrorCode::StateDictMismatch, file, "",
                "metadata '" + escape_control(groups_key) + "' nests deeper than " + std::to_string(kMaxJsonDepth) +
                    " levels: not param groups");
  json saved;
  try {
    saved = parse_python_json(*text);  // Python's json.dumps writes NaN and Infinity bare
  } catch (const json::exception& e) {
    throw Error(ErrorCode::StateDictMismatch, file, "",
                "metadata '" + escape_control(groups_key) + "' is not JSON: " + escape_control(e.what()));
  }
  // File parameter number -> position across the optimizer's groups.
  std::unordered_map<std::uint64_t, std::size_t> position;
  std::vector<std::size_t> group_of;
  for (std::size_t g = 0; g < groups.size(); ++g)
    for (const at::Tensor& p : groups[g].params()) {
      parameters_.push_back(Parameter{p, false, nullptr});
      group_of.push_back(g);
    }
  if (!saved.is_array()) {
    problems.push_back("'" + groups_key + "' is not a list of param groups");
  } else if (saved.size() != groups.size()) {
    problems.push_back("the checkpoint has " + std::to_string(saved.size()) + " param groups, the optimizer " +
                       std::to_string(groups.size()));
  } else {
    std::size_t next = 0;
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const json& group = saved[g];
      const std::string where = "param_groups[" + std::to_string(g) + "]";
      if (!group.is_object()) {
        problems.push_back(where + ": not an object");
        next += groups[g].params().size();
        continue;
      }
      std::vector<std::string> unknown;
      options_.push_back(read_group(kind, group, g, groups[g].options(), problems, unknown));
      for (const std::string& key : unknown) {
        const std::string name = groups_key + "[" + std::to_string(g) + "]." + key;
        report_.unexpected_keys.push_back({name, name});
        ++unknown_keys;
      }
      const auto params = group.find("params");
      if (params == group.end() || !params->is_array()) {
        problems.push_back(where + ": 'params' is not a list of parameter numbers");
      } else if (params->size() != groups[g].params().size()) {
        problems.push_back(where + ": " + std::to_string(params->size()) + " parameters in the checkpoint, " +
                           std::to_string(groups[g].params().size()) + " in the optimizer");
      } else {
        for (std::size_t j = 0; j < params->size(); ++j) {
          const json& id = (*params)[j];
          if (!id.is_number_unsigned()) {
            problems.push_back(where + ": parameter number " + id.dump() + " is not an integer >= 0");
          } else if (!position.emplace(id.get<std::uint64_t>(), next + j).second) {
            problems.push_back(where + ": parameter number " + id.dump() + " appears twice");
          }
        }
      }
      next += groups[g].params().size();
    }
  }
  if (!problems.empty()) {
    std::string list;
    for (const std::string& p : problems) list += "\n" + escape_control(p);
    throw Error(ErrorCode::StateDictMismatch, file, "",
                std::string("the ") + name_of(kind) + " optimizer and the checkpoint's param groups disagree:" +
                    list);
  }

  // ---- the state tensors ----
  const Catalog catalog = Catalog::of(checkpoint);
  const std::vector<std::string>& keys = tensor_keys(kind);
  struct Found {
    const TensorInfo* info;
    std::string key;
  };
  std::vector<std::vector<Found>> found(parameters_.size());
  std::vector<std::uint64_t> id_of(parameters_.size());
  for (const auto& [id, pos] : position) id_of[pos] = id;
  for (const TensorInfo& info : catalog.tensors) {
    if (info.name.compare(0, prefix.size(), prefix) != 0) continue;
    const auto parsed = parse_state_name(info.name.substr(prefix.size()));
    const auto pos = parsed ? position.find(parsed->first) : position.end();
    const bool known = parsed && (std::find(keys.begin(), keys.end(), parsed->second) != keys.end() ||
                                  (has_step(kind) && parsed->second == "step"));
    if (pos == position.end() || !known) {
      report_.unexpected_keys.push_back({info.name, info.name});
      continue;
    }
    found[pos->second].push_back({&info, parsed->second});
  }

  std::vector<std::int64_t> steps(parameters_.size(), 0);
  std::vector<bool> bad(parameters_.size(), false);
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    const at::Tensor& p = parameters_[i].param;
    const optim::OptimizerOptions& group_options = *options_[group_of[i]];
    const std::string name = prefix + "state." + std::to_string(id_of[i]) + ".";
    if (found[i].empty() && kind != Kind::Adagrad) continue;  // no state, as in Python
    std::vector<std::string> wanted;
    if (has_step(kind)) wanted.push_back("step");
    for (const std::string& key : keys)
      if (required(kind, group_options, key)) wanted.push_back(key);
    for (const std::string& key : wanted)
      if (std::none_of(found[i].begin(), found[i].end(), [&](const Found& f) { return f.key == key; })) {
        report_.missing_keys.push_back(name + key);
        bad[i] = true;
      }
    for (const Found& f : found[i]) {
      std::optional<std::string> why;
      std::vector<std::int64_t> expected_shape;
      c10::ScalarType expected_dtype = p.scalar_type();
      if (f.key == "step") {
        expected_dtype = at::kFloat;
        why = step_misfit(checkpoint, *f.info, steps[i]);
      } else {
        expected_shape = p.sizes().vec();
        const auto type = to_torch_dtype(f.info->dtype);
        if (torch_shape(*f.info, file) != expected_shape) {
          why = "shape";
        } else if (!type) {
          why = "the LibTorch in use has no dtype " + std::string(dtype_name(f.info->dtype));
        } else if (*type != p.scalar_type()) {
          why = "dtype: " + dtype_text(*type) + " state for a " + dtype_text(p.scalar_type()) + " parameter";
        }
      }
      if (why) {
        report_.mismatched.push_back(
            {f.info->name, f.info->name, expected_shape, expected_dtype, f.info->shape, f.info->dtype, *why});
        bad[i] = true;
      }
    }
  }
  if (options.strict() && !report_.ok())
    throw Error(ErrorCode::StateDictMismatch, file, "",
                std::string("the ") + name_of(kind) + " optimizer and the checkpoint disagree:\n" +
                    report_.describe() +
                    (unknown_keys ? std::string("(an unexpected '") + escape_control(groups_key) +
                                        "[i].key' is a hyperparameter LibTorch's " + name_of(kind) +
                                        " does not have: strict(false) loads without it)"
                                  : std::string()));

  // ---- read every fitting state into new memory, shard by shard ----
  std::vector<Flat> flats(parameters_.size());
  std::map<const SafeOpen*, std::vector<std::pair<std::string, at::Tensor>>> reads;
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    if (bad[i]) continue;
    parameters_[i].fits = true;
    if (found[i].empty()) continue;
    flats[i].step = steps[i];
    for (const Found& f : found[i]) {
      if (f.key == "step") continue;
      at::Tensor t = at::empty_like(parameters_[i].param, at::MemoryFormat::Preserve);
      reads[&checkpoint.shard_of(f.info->name)].emplace_back(f.info->name, t);
      flats[i].tensors.emplace(f.key, t);
    }
  }
  for (const auto& [shard, targets] : reads) shard->read_into(targets);
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    if (!parameters_[i].fits) continue;
    if (!found[i].empty()) parameters_[i].state = build(kind, flats[i]);
    for (const Found& f : found[i]) report_.loaded_keys.push_back(f.info->name);
  }
}

void OptimizerLoad::commit() {
  auto& state = optimizer_->state();
  for (Parameter& p : parameters_) {
    if (!p.fits) continue;
    const auto key = state_key(state, p.param);
    state.erase(key);
    if (p.state) state.emplace(key, std::move(p.state));
  }
  auto& groups = optimizer_->param_groups();
  for (std::size_t g = 0; g < groups.size(); ++g) groups[g].set_options(std::move(options_[g]));
  parameters_.clear();
  options_.clear();
}

}  // namespace detail

void save_optimizer(const torch::optim::Optimizer& optimizer, const std::string& path,
                    const std::optional<Metadata>& metadata, const OptimizerSaveOptions& options) {
  auto [tensors, groups] = detail::optimizer_to_save(optimizer, options.prefix(), path);
  Metadata meta = metadata.value_or(Metadata{});
  const std::string key = options.prefix() + kParamGroupsKey;
  if (meta.count(key))
    throw Error(ErrorCode::InvalidArgument, path, "",
                "metadata key '" + key + "' is where the param groups are saved");
  meta.emplace(key, std::move(groups));
  meta.emplace("format", "pt");
  detail::save_one_or_sharded(tensors, path, meta, options.max_shard_size(), options);
}

LoadReport load_optimizer(torch::optim::Optimizer& optimizer, const ShardedOpen& checkpoint,
                          const OptimizerLoadOptions& options) {
  detail::OptimizerLoad load(optimizer, checkpoint, options);
  LoadReport report = std::move(load.report());
  load.commit();
  return report;
}

LoadReport load_optimizer(torch::optim::Optimizer& optimizer, const std::string& path,
                          const OptimizerLoadOptions& options) {
  return load_optimizer(optimizer,
                        ShardedOpen(path, LoadOptions().backend(options.backend().value_or(Backend::Pread))),
                        options);
}

LoadReport load_optimizer(torch::optim::Optimizer& optimizer, const SafeOpen& file,
                          const OptimizerLoadOptions& options) {
  return load_optimizer(optimizer, ShardedOpen(file), options);
}

}  // namespace safetensors
