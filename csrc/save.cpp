// From at::Tensors to a file: check every tensor, plan the header, then
// stream each tensor's bytes straight from its memory (one tensor at a time is
// copied only when it is not contiguous CPU memory).

#include "safetensors/save.hpp"

#include <c10/util/Exception.h>

#include <cstddef>
#include <vector>

#include "safetensors/error.hpp"
#include "safetensors/torch_dtype.hpp"
#include "safetensors/writer.hpp"
#include "detail/durable.hpp"
#include "detail/extent.hpp"
#include "detail/sink.hpp"
#include "save_internal.hpp"

namespace safetensors {

using detail::AtomicFile;
using detail::BufferSink;
using detail::Sink;
using detail::StorageExtent;

NamedTensors::NamedTensors(const torch::OrderedDict<std::string, at::Tensor>& tensors) {
  items_.reserve(tensors.size());
  for (const auto& item : tensors) add(item.key(), item.value());
}
NamedTensors::NamedTensors(const std::map<std::string, at::Tensor>& tensors) {
  items_.reserve(tensors.size());
  for (const auto& [name, t] : tensors) add(name, t);
}
NamedTensors::NamedTensors(const std::unordered_map<std::string, at::Tensor>& tensors) {
  items_.reserve(tensors.size());
  for (const auto& [name, t] : tensors) add(name, t);
}
NamedTensors::NamedTensors(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  items_.reserve(tensors.size());
  for (const auto& [name, t] : tensors) add(name, t);
}
NamedTensors::NamedTensors(std::initializer_list<std::pair<std::string, at::Tensor>> tensors) {
  items_.reserve(tensors.size());
  for (const auto& [name, t] : tensors) add(name, t);
}

NamedTensors& NamedTensors::add(std::string name, at::Tensor tensor) {
  items_.push_back(Item{std::move(name), std::move(tensor), std::nullopt, {}});
  return *this;
}

NamedTensors& NamedTensors::add_raw(std::string name, Dtype dtype, std::vector<std::uint64_t> shape,
                                    at::Tensor bytes) {
  items_.push_back(Item{std::move(name), std::move(bytes), dtype, std::move(shape)});
  return *this;
}

EntrySpec detail::describe_entry(const NamedTensors::Item& item, const std::string& file) {
  const at::Tensor& t = item.tensor;
  auto fail = [&](const std::string& detail) {
    return Error(ErrorCode::InvalidArgument, file, item.name, detail);
  };
  if (!t.defined()) throw fail("the tensor is undefined");
  if (t.layout() != c10::kStrided) throw fail("sparse tensors cannot be saved; call .to_dense()");
  if (t.is_quantized()) throw fail("quantized tensors cannot be saved; call .dequantize()");
  if (t.is_meta()) throw fail("meta tensors have no data to save");
  EntrySpec spec;
  spec.name = item.name;
  if (item.raw_dtype) {
    spec.dtype = *item.raw_dtype;
    spec.shape = item.raw_shape;
    if (t.scalar_type() != c10::kByte)
      throw fail("raw bytes must be a uint8 tensor, not " + std::string(c10::toString(t.scalar_type())));
    std::uint64_t bits = 1;
    for (std::uint64_t d : spec.shape) bits *= d;  // overflow is caught by plan_write
    bits *= dtype_bits(spec.dtype);
    if (static_cast<std::uint64_t>(t.numel()) * 8 != bits)
      throw fail("raw bytes hold " + std::to_string(t.numel()) + " bytes but " +
                 std::string(dtype_name(spec.dtype)) + " of that shape needs " +
                 std::to_string(bits / 8));
    return spec;
  }
  auto dtype = from_torch_dtype(t.scalar_type());
  if (!dtype)
    throw fail("dtype " + std::string(c10::toString(t.scalar_type())) +
               " has no safetensors equivalent");
  spec.dtype = *dtype;
  for (std::int64_t d : t.sizes()) spec.shape.push_back(static_cast<std::uint64_t>(d));
  if (dtype_bits(spec.dtype) < 8 && !spec.shape.empty())
    spec.shape.back() *= 8 / dtype_bits(spec.dtype);  // packed torch dtype (F4)
  return spec;
}

std::vector<std::vector<const NamedTensors::Item*>> detail::overlapping_groups(const NamedTensors& tensors) {
  const auto& items = tensors.items();
  std::vector<StorageExtent> extents;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const at::Tensor& t = items[i].tensor;
    if (!t.defined() || !t.has_storage() || t.is_meta() || t.numel() == 0) continue;
    extents.push_back(storage_extent(t, i));
  }
  std::vector<std::vector<const NamedTensors::Item*>> groups;
  for_each_overlapping(extents, [&](const StorageExtent* first, const StorageExtent* last) {
    std::vector<const NamedTensors::Item*>& group = groups.emplace_back();
    for (; first != last; ++first) group.push_back(&items[first->index]);
  });
  return groups;
}

namespace {

// Checks every tensor and plans the file; nothing is written yet.
WritePlan prepare(const NamedTensors& tensors, const std::optional<Metadata>& metadata,
                  const std::string& file) {
  std::vector<EntrySpec> specs;
  specs.reserve(tensors.size());
  for (const auto& item : tensors.items()) specs.push_back(detail::describe_entry(item, file));
  // Tensors whose bytes overlap: the file would hold them twice and loading
  // would untie them.
  if (const auto groups = detail::overlapping_groups(tensors); !groups.empty())
    throw Error(ErrorCode::InvalidArgument, file, groups[0][1]->name,
                "shares memory with tensor '" + groups[0][0]->name +
                    "'; saving both would store the bytes twice and untie them on load: "
                    "save one of them, or .clone() it");
  return plan_write(specs, metadata, file);
}

// One tensor's bytes, copied first when they are not contiguous CPU memory.
void write_tensor(const NamedTensors::Item& item, std::uint64_t nbytes, Sink& sink, const std::string& file) {
  if (nbytes == 0) return;
  at::Tensor t = item.tensor;
  try {
    if (!t.device().is_cpu()) t = t.cpu();
    t = t.resolve_conj().resolve_neg().contiguous();
  } catch (const c10::Error& e) {
    throw Error(ErrorCode::InvalidArgument, file, item.name,
                std::string("cannot copy the tensor to CPU memory: ") + e.what_without_backtrace());
  }
  sink.write(t.data_ptr(), static_cast<std::size_t>(nbytes));
}

void write_planned(const NamedTensors& tensors, const WritePlan& plan, Sink& sink,
                   const std::string& file, const SaveOptions& options) {
  sink.write(plan.header.data(), plan.header.size());
  const std::uint64_t total = plan.file_size() - plan.header.size();
  std::uint64_t done = 0;
  for (std::size_t i : plan.order) {
    const auto& item = tensors.items()[i];
    const std::uint64_t nbytes = plan.offsets[i].second - plan.offsets[i].first;
    write_tensor(item, nbytes, sink, file);
    done += nbytes;
    if (options.progress()) options.progress()(done, total);
  }
}

}  // namespace

void detail::save_file_replacing(const NamedTensors& tensors, const std::string& path, const std::string& replaces,
                                 const std::optional<Metadata>& metadata, const SaveOptions& options) {
  // Everything is checked before the filesystem is touched.
  WritePlan plan = prepare(tensors, metadata, path);
  AtomicFile file(path, AtomicFile::Options{options.fsync(), replaces});
  write_planned(tensors, plan, file, path, options);
  file.commit();
}

void save_file(const NamedTensors& tensors, const std::string& path,
               const std::optional<Metadata>& metadata, const SaveOptions& options) {
  detail::save_file_replacing(tensors, path, "", metadata, options);
}

std::vector<std::uint8_t> save(const NamedTensors& tensors, const std::optional<Metadata>& metadata) {
  WritePlan plan = prepare(tensors, metadata, "");
  BufferSink sink;
  sink.bytes().reserve(static_cast<std::size_t>(plan.file_size()));
  write_planned(tensors, plan, sink, "", SaveOptions());
  return std::move(sink.bytes());
}

}  // namespace safetensors
