// Training checkpoints: a module's state dict, an optimizer's state and the
// CPU generator's state in one save, loaded back all or nothing.

#include "safetensors/training.hpp"

#include "module_internal.hpp"
#include "optimizer_internal.hpp"
#include "save_internal.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <charconv>
#include <mutex>

#include "safetensors/error.hpp"
#include "safetensors/sharded.hpp"

namespace safetensors {

namespace {

bool starts_with(const std::string& text, const char* prefix) {
  return text.compare(0, std::char_traits<char>::length(prefix), prefix) == 0;
}

// The checkpoint's own keys, which the caller's metadata may not use.
bool reserved(const std::string& key) {
  return key == kStepKey || key == kEpochKey || key == std::string(kShardSetKey) || key == "total_size" ||
         starts_with(key, kModelPrefix) || starts_with(key, kOptimizerPrefix);
}

std::int64_t integer_entry(const ShardedOpen& checkpoint, const char* key) {
  const std::string* text = detail::metadata_entry(checkpoint, key);
  if (!text)
    throw Error(ErrorCode::StateDictMismatch, checkpoint.path(), "",
                std::string("no metadata key '") + key + "': not a training checkpoint");
  std::int64_t value = 0;
  const char* end = text->data() + text->size();
  const auto [ptr, ec] = std::from_chars(text->data(), end, value);
  if (ec != std::errc() || ptr != end || text->empty())
    throw Error(ErrorCode::StateDictMismatch, checkpoint.path(), "",
                std::string("metadata '") + key + "' is not a decimal integer: '" + detail::escape_control(*text) +
                    "'");
  return value;
}

}  // namespace

void save_training_checkpoint(const std::string& path, const torch::nn::Module& module,
                              const torch::optim::Optimizer& optimizer, const TrainingState& state,
                              const TrainingSaveOptions& options) {
  Metadata meta;
  for (const auto& [key, value] : state.metadata) {
    if (reserved(key))
      throw Error(ErrorCode::InvalidArgument, path, "",
                  "metadata key '" + key + "' is one the training checkpoint uses");
    meta.emplace(key, value);
  }
  meta.emplace("format", "pt");
  meta[kStepKey] = std::to_string(state.step);
  meta[kEpochKey] = std::to_string(state.epoch);

  NamedTensors model;
  for (auto& [name, tensor] : detail::module_state(module)) model.add(kModelPrefix + name, std::move(tensor));
  Deduplicated saved = deduplicate_shared(model);
  for (const auto& [removed, kept] : saved.aliases) meta.emplace(removed, kept);
  NamedTensors tensors = std::move(saved.tensors);

  auto [optimizer_tensors, groups] = detail::optimizer_to_save(optimizer, kOptimizerPrefix, path);
  for (const NamedTensors::Item& item : optimizer_tensors.items()) tensors.add(item.name, item.tensor);
  meta.emplace(std::string(kOptimizerPrefix) + kParamGroupsKey, std::move(groups));

  at::Generator generator = at::detail::getDefaultCPUGenerator();
  at::Tensor rng;
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    rng = generator.get_state();
  }
  tensors.add(kRngStateName, rng);

  detail::save_one_or_sharded(tensors, path, meta, options.max_shard_size(), options);
}

TrainingLoadResult load_training_checkpoint(const std::string& path, torch::nn::Module& module,
                                            torch::optim::Optimizer& optimizer,
                                            const TrainingLoadOptions& options) {
  const Backend backend =
      options.backend().value_or(options.mode() == LoadMode::Copy ? Backend::Pread : Backend::Mmap);
  const ShardedOpen checkpoint(path, LoadOptions().backend(backend));
  TrainingLoadResult result;
  result.state.step = integer_entry(checkpoint, kStepKey);
  result.state.epoch = integer_entry(checkpoint, kEpochKey);
  const Metadata& metadata =
      checkpoint.index() ? checkpoint.shards().front().metadata() : checkpoint.metadata();
  for (const auto& [key, value] : metadata)
    if (!reserved(key) && key != "format") result.state.metadata.emplace(key, value);

  at::Generator generator = at::detail::getDefaultCPUGenerator();
  at::Tensor rng;
  if (options.restore_rng()) {
    if (!checkpoint.contains(kRngStateName))
      throw Error(ErrorCode::StateDictMismatch, checkpoint.path(), kRngStateName,
                  "no generator state in the checkpoint (restore_rng(false) loads without it)");
    std::int64_t size = 0;
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      size = generator.get_state().numel();
    }
    const TensorInfo& info = checkpoint.info(kRngStateName);
    if (info.dtype != Dtype::U8 || info.shape.size() != 1 || info.shape[0] != static_cast<std::uint64_t>(size))
      throw Error(ErrorCode::StateDictMismatch, checkpoint.path(), kRngStateName,
                  "the CPU generator's state is U8 [" + std::to_string(size) + "], the checkpoint's " +
                      std::string(dtype_name(info.dtype)) + " " + detail::shape_text(info.shape));
    rng = checkpoint.get_tensor(kRngStateName).clone();
  }

  detail::OptimizerLoad optimizer_load(
      optimizer, checkpoint, OptimizerLoadOptions().strict(options.strict()).prefix(kOptimizerPrefix));
  const auto model_name = [](const std::string& name) -> std::optional<std::string> {
    if (!starts_with(name, kModelPrefix)) return std::nullopt;
    return name.substr(std::char_traits<char>::length(kModelPrefix));
  };
  result.model = load_state_dict(
      module, checkpoint,
      StateDictLoadOptions().strict(options.strict()).mode(options.mode()).rename(model_name));
  result.optimizer = std::move(optimizer_load.report());
  optimizer_load.commit();
  if (rng.defined()) {
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(rng);
  }
  return result;
}

}  // namespace safetensors
