// An AOTInductor package's constants from safetensors: read the package's
// constant table, match it to the checkpoint as a module's state, read every
// tensor, then hand the set to the package's runner (its inactive buffer and a
// swap, or in place where LibTorch 2.6's CPU runtime leaves no other way).

#include "safetensors/aoti.hpp"

#include "module_internal.hpp"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/inductor/aoti_runner/model_container_runner.h>

#include <c10/util/intrusive_ptr.h>
#include <dlfcn.h>

#include <cctype>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <unordered_map>
#include <utility>
#include <vector>

#include "safetensors/error.hpp"
#include "safetensors/sharded.hpp"

namespace safetensors {

using namespace detail;

namespace {

using torch::inductor::AOTIModelContainerRunner;

// One constant of a package, as its generated code declares it.
struct Constant {
  std::string name;  // the runner's name (`fc1_weight`)
  std::string fqn;   // the model's (`fc1.weight`)
  std::vector<std::int64_t> shape, stride;
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  bool from_folded = false;   // computed from other constants (runtime constant folding)
  std::string type;           // ConstantType: Parameter, Buffer, TensorConstant, ...
};

// The runner's model library, reached through a function of it: LibTorch 2.6
// gives no other way to it from a loader.
struct RunnerAccess : AOTIModelContainerRunner {
  static const void* model_function(const AOTIModelContainerRunner& runner) {
    return reinterpret_cast<const void*>(runner.*(&RunnerAccess::get_num_constants_func_));
  }
};

std::string model_library(const AOTIModelContainerRunner& runner) {
  Dl_info info{};
  const void* fn = RunnerAccess::model_function(runner);
  if (fn == nullptr || dladdr(fn, &info) == 0 || info.dli_fname == nullptr)
    throw Error(ErrorCode::InvalidArgument, "", "", "cannot find the AOTInductor package's model library");
  return info.dli_fname;
}

[[noreturn]] void bad_table(const std::string& file, const std::string& why) {
  throw Error(ErrorCode::InvalidArgument, file, "",
              "cannot read the package's constant table (" + why +
                  "): a package made by another version of torch._inductor?");
}

std::vector<std::int64_t> parse_ints(const std::string& file, const std::string& value) {
  if (value.size() < 2 || value.front() != '{' || value.back() != '}') bad_table(file, "a shape '" + value + "'");
  std::vector<std::int64_t> out;
  std::istringstream in(value.substr(1, value.size() - 2));
  std::string item;
  while (std::getline(in, item, ',')) {
    std::size_t pos = 0;
    while (pos < item.size() && item[pos] == ' ') ++pos;
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item.substr(pos), &used);
    } catch (const std::exception&) {
      bad_table(file, "a shape '" + value + "'");
    }
    if (pos + used != item.size() || v < 0) bad_table(file, "a shape '" + value + "'");
    out.push_back(v);
  }
  return out;
}

std::string parse_string(const std::string& file, const std::string& value) {
  if (value.size() < 2 || value.front() != '"' || value.back() != '"' ||
      value.find('\\') != std::string::npos)
    bad_table(file, "a name " + value);
  return value.substr(1, value.size() - 2);
}

// The table the generated model's constructor fills, one field a line:
//   constants_info_[0].name = "fc1_weight";
//   constants_info_[0].shape = {32, 16};
// LibTorch 2.6's runner tells names and dtypes but no shapes: without them, a
// tensor of another size would be read out of bounds by the compiled kernels.
std::vector<Constant> read_table(const std::string& source, const std::string& file) {
  std::map<std::size_t, Constant> by_index;
  std::map<std::size_t, int> fields;  // name, fqn, shape, stride seen
  static const std::string kOpen = "constants_info_[";
  std::istringstream in(source);
  std::string line;
  while (std::getline(in, line)) {
    const std::size_t at = line.find(kOpen);
    if (at == std::string::npos) continue;
    std::size_t pos = at + kOpen.size();
    std::size_t index = 0;
    const std::size_t digits = pos;
    while (pos < line.size() && std::isdigit(static_cast<unsigned char>(line[pos])))
      index = index * 10 + static_cast<std::size_t>(line[pos++] - '0');
    if (pos == digits || line.compare(pos, 2, "].") != 0) continue;  // not an assignment
    pos += 2;
    const std::size_t eq = line.find(" = ", pos);
    if (eq == std::string::npos || line.back() != ';') continue;
    const std::string field = line.substr(pos, eq - pos);
    const std::string value = line.substr(eq + 3, line.size() - eq - 4);
    Constant& c = by_index[index];
    if (field == "name") {
      c.name = parse_string(file, value);
      fields[index] |= 1;
    } else if (field == "original_fqn") {
      c.fqn = parse_string(file, value);
      fields[index] |= 2;
    } else if (field == "shape") {
      c.shape = parse_ints(file, value);
      fields[index] |= 4;
    } else if (field == "stride") {
      c.stride = parse_ints(file, value);
      fields[index] |= 8;
    } else if (field == "from_folded") {
      if (value != "true" && value != "false") bad_table(file, "from_folded " + value);
      c.from_folded = value == "true";
    } else if (field == "type") {
      const std::size_t t = value.find("ConstantType::");
      if (t == std::string::npos) bad_table(file, "a constant type " + value);
      c.type = value.substr(t + 14);
      if (!c.type.empty() && c.type.back() == ')') c.type.pop_back();
    }
  }
  std::vector<Constant> out;
  for (auto& [index, c] : by_index) {
    if (index != out.size()) bad_table(file, "constant " + std::to_string(out.size()) + " is not declared");
    if (fields[index] != 15) bad_table(file, "constant " + std::to_string(index) + " lacks a field");
    if (c.shape.size() != c.stride.size()) bad_table(file, "constant '" + c.name + "' has a stride per dimension");
    out.push_back(std::move(c));
  }
  return out;
}

// The package's constants, their table checked against what the runner says.
std::vector<Constant> package_constants(AOTIModelContainerRunner& runner) {
  const std::string library = model_library(runner);
  const std::size_t dot = library.rfind('.');
  const std::string source_path = (dot == std::string::npos ? library : library.substr(0, dot)) + ".cpp";
  std::ifstream in(source_path, std::ios::binary);
  if (!in) bad_table(source_path, "the package has no generated source next to its model library");
  std::ostringstream text;
  text << in.rdbuf();
  std::vector<Constant> table = read_table(text.str(), source_path);
  const auto fqns = runner.getConstantNamesToOriginalFQNs();
  const auto dtypes = runner.getConstantNamesToDtypes();
  if (table.size() != fqns.size())
    bad_table(source_path, std::to_string(table.size()) + " constants declared, the runner has " +
                               std::to_string(fqns.size()));
  for (Constant& c : table) {
    const auto f = fqns.find(c.name);
    const auto d = dtypes.find(c.name);
    if (f == fqns.end() || d == dtypes.end() || f->second != c.fqn)
      bad_table(source_path, "constant '" + c.name + "' is not the runner's");
    if (d->second < 0 || d->second >= static_cast<std::int32_t>(c10::ScalarType::NumOptions))
      bad_table(source_path, "constant '" + c.name + "' has dtype " + std::to_string(d->second));
    c.dtype = static_cast<c10::ScalarType>(d->second);
    if (c.fqn.empty()) c.fqn = c.name;
  }
  return table;
}

c10::Device package_device(torch::inductor::AOTIModelPackageLoader& package) {
  const auto metadata = package.get_metadata();
  const auto it = metadata.find("AOTI_DEVICE_KEY");
  if (it == metadata.end()) throw Error(ErrorCode::InvalidArgument, "", "", "the AOTInductor package names no device");
  try {
    return c10::Device(it->second);
  } catch (const c10::Error&) {
    throw Error(ErrorCode::InvalidArgument, "", "", "the AOTInductor package's device '" + it->second + "' is unknown");
  }
}

// LibTorch 2.6's CPU runtime keeps the first tensor each buffer was given for
// a constant (the buffer's map is filled with emplace): its own buffer keeps
// the package's constants, the other keeps those of the first load. Later
// loads write the latter in place. They are remembered per runner, weakly, so
// that a runner destroyed (its buffers with it) leaves nothing behind.
struct Installed {
  std::vector<std::pair<std::string, c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>>> constants;
};

std::mutex installed_mutex;
std::unordered_map<const AOTIModelContainerRunner*, Installed>& installed_by_runner() {
  static std::unordered_map<const AOTIModelContainerRunner*, Installed> map;
  return map;
}

// The tensors a first load installed in the runner's (now active) buffer, by
// runner name; nullopt when this runner has none alive.
std::optional<std::unordered_map<std::string, at::Tensor>> installed(const AOTIModelContainerRunner& runner) {
  std::lock_guard<std::mutex> lock(installed_mutex);
  auto& map = installed_by_runner();
  const auto it = map.find(&runner);
  if (it == map.end()) return std::nullopt;
  std::unordered_map<std::string, at::Tensor> out;
  for (const auto& [name, weak] : it->second.constants) {
    auto strong = weak.lock();
    if (!strong) {  // the runner that installed them is gone; this is another one
      map.erase(it);
      return std::nullopt;
    }
    out.emplace(name, at::Tensor(std::move(strong)));
  }
  return out;
}

void remember(const AOTIModelContainerRunner& runner, const std::vector<std::pair<std::string, at::Tensor>>& given) {
  Installed record;
  for (const auto& [name, t] : given) record.constants.emplace_back(name, t.getIntrusivePtr());
  std::lock_guard<std::mutex> lock(installed_mutex);
  auto& map = installed_by_runner();
  for (auto it = map.begin(); it != map.end();) {  // runners destroyed meanwhile
    const auto& constants = it->second.constants;
    it = !constants.empty() && constants.front().second.expired() ? map.erase(it) : std::next(it);
  }
  map[&runner] = std::move(record);
}

}  // namespace

LoadReport load_constants(torch::inductor::AOTIModelPackageLoader& package, const ShardedOpen& checkpoint,
                          const StateDictLoadOptions& options) {
  AOTIModelContainerRunner* runner = package.get_runner();
  if (runner == nullptr) throw Error(ErrorCode::InvalidArgument, "", "", "the AOTInductor package has no runner");
  const std::vector<Constant> table = package_constants(*runner);
  const c10::Device device = package_device(package);

  // The constants to fill, as shape-and-dtype stand-ins (no memory) in the
  // package's order; computed ones are left to the package.
  Entries targets;
  std::vector<const Constant*> constant_of;  // per target
  bool has_folded = false, has_tensor_constants = false;
  for (const Constant& c : table) {
    if (c.from_folded) {
      has_folded = true;
      continue;
    }
    has_tensor_constants |= c.type == "TensorConstant";
    targets.emplace_back(c.fqn, at::empty_strided(c.shape, c.stride, at::TensorOptions().dtype(c.dtype).device(c10::kMeta)));
    constant_of.push_back(&c);
  }
  const Catalog catalog = Catalog::of(checkpoint);
  Matcher matcher(targets, catalog, options);
  matcher.match();
  LoadReport& report = matcher.report();
  detail::refuse_mismatch(report, options, checkpoint.path(), "the AOTInductor package");

  const auto live = device.is_cpu() ? installed(*runner) : std::nullopt;
  if (!live && (!report.missing_keys.empty() || !report.mismatched.empty()))
    throw Error(ErrorCode::StateDictMismatch, checkpoint.path(), "",
                "the package's constants are replaced as a whole, and these cannot be filled:\n" +
                    LoadReport{{}, report.missing_keys, {}, report.mismatched}.describe());
  if (device.is_cpu() && has_folded && (live || has_tensor_constants))
    throw Error(ErrorCode::InvalidArgument, checkpoint.path(), "",
                live ? "LibTorch 2.6's CPU runtime cannot fold the constants of a package again once loaded: "
                       "load this package's weights once, into a new AOTIModelPackageLoader"
                     : "LibTorch 2.6's CPU runtime cannot fold constants in a buffer beside tensor constants");

  // Every tensor is read (and so every I/O error met) before the package changes.
  const std::vector<Write> writes = matcher.writes();
  std::vector<std::pair<std::string, at::Tensor>> fresh;  // runner name -> tensor
  fresh.reserve(writes.size());
  std::vector<std::pair<const SafeOpen*, std::vector<std::pair<std::string, at::Tensor>>>> reads;
  std::unordered_map<const SafeOpen*, std::size_t> read_of;
  const bool zero_copy = options.mode() == LoadMode::ZeroCopy && device.is_cpu() && !live;
  for (const Write& w : writes) {
    const Fill& f = *w.fill;
    const Constant& c = *constant_of[f.target];
    const auto made = at::TensorOptions().dtype(c.dtype).device(live ? c10::Device(c10::kCPU) : device);
    if (zero_copy) {
      at::Tensor view = checkpoint.get_tensor(f.source);
      if (f.part) view = view.narrow(f.part->dim, f.part->range.start, f.part->range.length);
      view = view.to(c.dtype);
      if (view.strides() != c10::IntArrayRef(c.stride)) view = at::empty_strided(c.shape, c.stride, made).copy_(view);
      fresh.emplace_back(c.name, std::move(view));
      continue;
    }
    at::Tensor t = at::empty_strided(c.shape, c.stride, made);
    if (f.part) {
      t.copy_(checkpoint.get_slice(f.source)(part_index(f.part->dim, f.part->range)));  // only the part's bytes
    } else {
      // Straight from the file (through the staging ring to a GPU), per shard.
      const SafeOpen* shard = &checkpoint.shard_of(f.source);
      const auto [it, first] = read_of.emplace(shard, reads.size());
      if (first) reads.emplace_back(shard, std::vector<std::pair<std::string, at::Tensor>>{});
      reads[it->second].second.emplace_back(f.source, t);
    }
    fresh.emplace_back(c.name, std::move(t));
  }
  for (const auto& [shard, of_shard] : reads) shard->read_into(of_shard);

  if (live) {
    for (const auto& [name, t] : fresh) live->at(name).copy_(t);
    return std::move(report);
  }
  torch::inductor::TensorConstantMap map;
  if (device.is_cpu()) {
    // The CPU runtime takes ownership of the handles it is given.
    for (const auto& [name, t] : fresh) map.emplace(name, new at::Tensor(t));
  } else {
    // Copied into the package's own memory; the handles stay ours.
    for (auto& [name, t] : fresh) map.emplace(name, &t);
  }
  runner->update_inactive_constant_buffer(map);
  if (has_folded) runner->run_const_fold(/*use_inactive=*/true);
  runner->swap_constant_buffer();
  if (device.is_cpu()) remember(*runner, fresh);
  return std::move(report);
}

LoadReport load_constants(torch::inductor::AOTIModelPackageLoader& package, const std::string& path,
                          const StateDictLoadOptions& options) {
  return load_constants(package, ShardedOpen(path, LoadOptions().backend(default_backend(options))), options);
}

LoadReport load_constants(torch::inductor::AOTIModelPackageLoader& package, const SafeOpen& file,
                          const StateDictLoadOptions& options) {
  return load_constants(package, ShardedOpen(file), options);
}

}  // namespace safetensors
