// From bytes to at::Tensors: lazy handles, zero-copy views over the
// mapping, positional reads, and slices that read only what they select.

#include "safetensors/load.hpp"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include "detail/extent.hpp"
#include "detail/text.hpp"
#include "detail/torch_shape.hpp"
#include "host_memory.hpp"
#include "safetensors/torch_dtype.hpp"
#include "upload.hpp"

namespace safetensors {

struct SafeOpen::State {
  std::shared_ptr<Source> source;
  Header header;
  LoadOptions options;
};

namespace {

using State = SafeOpen::State;
using detail::read_parallel;

Header read_header(const Source& source) {
  const std::string& file = source.path();
  if (source.data() != nullptr) {
    return parse_header(source.data(), static_cast<std::size_t>(source.size()), file);
  }
  unsigned char prefix[kHeaderPrefixSize] = {};
  const std::uint64_t size = source.size();
  if (size >= kHeaderPrefixSize) source.read(0, prefix, kHeaderPrefixSize);
  const std::uint64_t n = parse_header_length(prefix, size, file);
  std::string json(static_cast<std::size_t>(n), '\0');
  source.read(kHeaderPrefixSize, json.data(), json.size());
  return parse_header(json, size - kHeaderPrefixSize - n, file);
}

// How a tensor of the file appears in torch: its dtype and shape, possibly as
// raw bytes when the LibTorch in use lacks the dtype.
struct TorchView {
  c10::ScalarType dtype;
  std::vector<std::int64_t> shape;
  std::size_t element_size;  // bytes per torch element
};

TorchView torch_view(const State& s, const TensorInfo& info) {
  TorchView v;
  v.shape = detail::torch_shape(info, s.source->path());
  const unsigned bits = dtype_bits(info.dtype);
  if (auto t = to_torch_dtype(info.dtype)) {
    v.dtype = *t;
    v.element_size = bits >= 8 ? bits / 8 : 1;
    // A packed sub-byte dtype holds 8/bits values per element.
    if (bits < 8 && (info.shape.empty() || info.shape.back() % (8 / bits) != 0))
      throw Error(ErrorCode::UnsupportedDtype, s.source->path(), info.name,
                  std::string(dtype_name(info.dtype)) +
                      " needs an even last dimension to map to a packed torch dtype");
    return v;
  }
  if (!s.options.unsupported_as_bytes()) {
    std::string since = torch_version_with(info.dtype);
    throw Error(ErrorCode::UnsupportedDtype, s.source->path(), info.name,
                "dtype " + std::string(dtype_name(info.dtype)) +
                    (since == "none" ? std::string(" has no torch dtype in any LibTorch")
                                     : " needs LibTorch " + since + " or newer") +
                    " (this library was built against LibTorch " + torch_version() +
                    "); LoadOptions().unsupported_as_bytes(true) reads its raw bytes");
  }
  v.dtype = c10::ScalarType::Byte;
  v.element_size = 1;
  if (bits > 8) {
    v.shape.push_back(bits / 8);
  } else if (bits < 8) {
    // Pack the last dimension into bytes where it divides; otherwise flatten.
    const std::uint64_t last_bits = info.shape.empty() ? 0 : info.shape.back() * bits;
    if (!info.shape.empty() && last_bits % 8 == 0) {
      v.shape.back() = static_cast<std::int64_t>(last_bits / 8);
    } else {
      v.shape = {static_cast<std::int64_t>(info.nbytes())};
    }
  }
  return v;
}

// An uninitialised tensor of the file's dtype and (torch) shape on `device`:
// what the staging ring uploads into.
at::Tensor empty_for(const TorchView& v, c10::Device device) {
  return at::empty(v.shape, at::TensorOptions().dtype(v.dtype).device(device));
}

// Applies LoadOptions::dtype and ::device to a CPU tensor.
at::Tensor finish(at::Tensor t, const LoadOptions& options) {
  if (options.dtype() && c10::isFloatingType(t.scalar_type()) &&
      t.scalar_type() != *options.dtype())
    t = t.to(*options.dtype());
  if (options.device() != t.device()) t = t.to(options.device());
  return t;
}

// A tensor of the file made without a staging ring, before `finish`: a view
// of the mapping, or owned memory that `read` still has to fill.
struct Unfinished {
  at::Tensor tensor;
  std::optional<detail::Read> read;
};

Unfinished unfinished_tensor(const std::shared_ptr<const State>& state, const TensorInfo& info) {
  const State& s = *state;
  TorchView v = torch_view(s, info);
  const std::uint64_t offset = s.header.data_offset() + info.begin;
  const std::size_t nbytes = static_cast<std::size_t>(info.nbytes());
  std::byte* base = s.source->data();
  // A view of the mapping serves zero-copy loads, and conversions or device
  // copies that make new memory anyway; a plain copy is a parallel read.
  const bool converts =
      !s.options.device().is_cpu() ||
      (s.options.dtype() && c10::isFloatingType(v.dtype) && *s.options.dtype() != v.dtype);
  if (base != nullptr && nbytes > 0 && (!s.options.copy() || converts)) {
    std::byte* p = base + offset;
    if (reinterpret_cast<std::uintptr_t>(p) % v.element_size == 0) {
      // The tensor keeps the mapping alive: its context owns a reference
      // (one allocation, where a std::function deleter takes two).
      using Keep = std::shared_ptr<Source>;
      return {at::for_blob(p, v.shape)
                  .context(new Keep(s.source), [](void* keep) { delete static_cast<Keep*>(keep); })
                  .options(at::TensorOptions().dtype(v.dtype))
                  .make_tensor(),
              std::nullopt};
    }
  }
  // Owned memory: copy mode, the pread backend, or unaligned data.
  at::Tensor t = detail::empty_cpu(v.shape, v.dtype, s.options.huge_pages());
  void* dst = t.data_ptr();
  return {std::move(t), detail::Read{offset, dst, nbytes}};
}

at::Tensor make_tensor(const std::shared_ptr<const State>& state, const TensorInfo& info) {
  const State& s = *state;
  // To a GPU: through pinned staging buffers, reads overlapped with copies.
  if (detail::stages_to(s.options.device()) && info.nbytes() > 0) {
    at::Tensor t = empty_for(torch_view(s, info), s.options.device());
    detail::upload(*s.source, {detail::Upload{s.header.data_offset() + info.begin, t}}, s.options.staging());
    return finish(std::move(t), s.options);
  }
  Unfinished u = unfinished_tensor(state, info);
  if (u.read) read_parallel(*s.source, {*u.read});
  return finish(std::move(u.tensor), s.options);
}

// Whether any two of the tensors share memory.
bool overlapping(const std::vector<std::pair<std::string, at::Tensor>>& targets) {
  std::vector<detail::Extent> extents;
  extents.reserve(targets.size());
  for (const auto& target : targets)
    if (auto e = detail::extent_of(target.second)) extents.push_back(*e);
  std::sort(extents.begin(), extents.end(),
            [](const auto& a, const auto& b) { return std::tie(a.device, a.begin) < std::tie(b.device, b.begin); });
  for (std::size_t i = 1; i < extents.size(); ++i)
    if (extents[i].device == extents[i - 1].device && extents[i - 1].end > extents[i].begin) return true;
  return false;
}

const TensorInfo& lookup(const State& s, const std::string& name) {
  const TensorInfo* info = s.header.find(name);
  if (!info)
    throw Error(ErrorCode::TensorNotFound, s.source->path(), name,
                "the file does not contain this tensor");
  return *info;
}

template <class T>
std::int64_t as_int(const T& v) {
  if constexpr (std::is_integral_v<T>) {
    return v;
  } else {
    return v.expect_int();  // c10::SymInt (LibTorch 2.x)
  }
}

}  // namespace

std::vector<std::int64_t> detail::torch_dims(const TensorInfo& info, const std::string& file) {
  std::vector<std::int64_t> dims;
  dims.reserve(info.shape.size());
  for (std::uint64_t d : info.shape) {
    if (d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      throw Error(ErrorCode::LimitExceeded, file, info.name,
                  "dimension " + std::to_string(d) + " does not fit a torch size (int64)");
    dims.push_back(static_cast<std::int64_t>(d));
  }
  return dims;
}

std::vector<std::int64_t> detail::torch_shape(const TensorInfo& info, const std::string& file) {
  std::vector<std::int64_t> shape = torch_dims(info, file);
  const unsigned bits = dtype_bits(info.dtype);
  if (bits < 8 && !shape.empty()) shape.back() /= 8 / bits;
  return shape;
}

// ---------------------------------------------------------------------------
// SafeOpen

SafeOpen::SafeOpen(const std::string& path, LoadOptions options)
    : SafeOpen(open_file(path, options.backend().value_or(options.copy() ? Backend::Pread : Backend::Mmap)),
               std::move(options)) {}

SafeOpen::SafeOpen(std::shared_ptr<Source> source, LoadOptions options) {
  if (!source) throw Error(ErrorCode::InvalidArgument, "", "", "SafeOpen over a null source");
  Header header = read_header(*source);
  state_ = std::make_shared<const State>(State{std::move(source), std::move(header), std::move(options)});
}

const std::string& SafeOpen::path() const& noexcept { return state_->source->path(); }
const LoadOptions& SafeOpen::options() const& noexcept { return state_->options; }
const Header& SafeOpen::header() const& noexcept { return state_->header; }
const Metadata& SafeOpen::metadata() const& noexcept { return state_->header.metadata(); }
std::size_t SafeOpen::size() const noexcept { return state_->header.tensors().size(); }
bool SafeOpen::contains(const std::string& name) const { return state_->header.find(name); }
const TensorInfo& SafeOpen::info(const std::string& name) const& { return lookup(*state_, name); }

std::vector<std::string> SafeOpen::keys() const {
  std::vector<std::string> names;
  names.reserve(size());
  for (const TensorInfo& t : state_->header.tensors()) names.push_back(t.name);
  return names;
}

at::Tensor SafeOpen::get_tensor(const std::string& name) const {
  return make_tensor(state_, lookup(*state_, name));
}

void SafeOpen::read_into(const std::string& name, const at::Tensor& dst) const {
  read_into({{name, dst}});
}

namespace {

// A checked destination of read_into.
struct Into {
  const at::Tensor* dst;
  const TensorInfo* info;
  TorchView view;
};

// Writes every destination; they do not overlap. CPU memory of the file's
// dtype is read into directly; GPU memory through the staging ring (all such
// tensors in one pass, so small ones share reads), converted on the device
// when the dtype differs; anything else (other layouts and devices,
// conversions on the CPU) takes a copy_.
void write_into(const std::shared_ptr<const State>& state, const std::vector<Into>& into) {
  const State& s = *state;
  std::vector<detail::Upload> uploads;
  std::vector<std::pair<at::Tensor, at::Tensor>> convert_after;  // (dst, uploaded)
  std::vector<detail::Read> direct;                               // CPU destinations
  for (const Into& i : into) {
    const at::Tensor& dst = *i.dst;
    const std::uint64_t offset = s.header.data_offset() + i.info->begin;
    const bool plain = dst.layout() == c10::kStrided && !dst.is_conj() && !dst.is_neg();
    const bool same = plain && dst.is_contiguous() && dst.scalar_type() == i.view.dtype;
    if (same && dst.device().is_cpu() && !detail::stages_to(dst.device())) {
      direct.push_back(detail::Read{offset, dst.data_ptr(), static_cast<std::size_t>(i.info->nbytes())});
      dst.unsafeGetTensorImpl()->bump_version();  // as copy_ would: autograd sees the write
    } else if (same && detail::stages_to(dst.device())) {
      uploads.push_back(detail::Upload{offset, dst});
    } else if (plain && detail::stages_to(dst.device())) {
      at::Tensor raw = empty_for(i.view, dst.device());
      uploads.push_back(detail::Upload{offset, raw});
      convert_after.emplace_back(dst, raw);
    } else {
      dst.copy_(make_tensor(state, *i.info));
    }
  }
  read_parallel(*s.source, direct);
  if (uploads.empty()) return;
  detail::upload(*s.source, uploads, s.options.staging());
  for (const detail::Upload& u : uploads) u.dst.unsafeGetTensorImpl()->bump_version();
  uploads.clear();
  for (auto& [dst, raw] : convert_after) {
    dst.copy_(raw);
    raw = at::Tensor();
  }
}

}  // namespace

void SafeOpen::read_into(const std::vector<std::pair<std::string, at::Tensor>>& targets) const {
  const State& s = *state_;
  // Every destination is checked before anything is written.
  std::vector<Into> into;
  into.reserve(targets.size());
  for (const auto& [name, dst] : targets) {
    const TensorInfo& info = lookup(s, name);
    TorchView v = torch_view(s, info);
    if (!dst.defined() || dst.sizes() != c10::IntArrayRef(v.shape)) {
      throw Error(ErrorCode::InvalidArgument, s.source->path(), name,
                  "cannot read a tensor of shape " + detail::shape_text(v.shape) + " into " +
                      (dst.defined() ? "one of shape " + c10::str(dst.sizes()) : std::string("an undefined tensor")));
    }
    if (dst.requires_grad() && at::GradMode::is_enabled())
      throw Error(ErrorCode::InvalidArgument, s.source->path(), name,
                  "cannot write in place into a tensor that requires grad while grad mode is on; "
                  "read under torch::NoGradGuard, as load_state_dict does");
    into.push_back(Into{&dst, &info, std::move(v)});
  }
  // Destinations that overlap (a parameter tied under two names, a view of
  // another) are written one after another, in order, as separate calls would.
  if (overlapping(targets)) {
    for (const Into& i : into) write_into(state_, {i});
  } else {
    write_into(state_, into);
  }
}

TensorSlice SafeOpen::get_slice(const std::string& name) const {
  return TensorSlice(state_, &lookup(*state_, name));
}

TensorDict SafeOpen::tensors() const {
  TensorDict out;
  out.reserve(size());
  const State& s = *state_;
  if (detail::stages_to(s.options.device())) {
    // One pass through the staging ring for the whole file.
    std::vector<detail::Upload> uploads;
    uploads.reserve(size());
    for (const TensorInfo& t : s.header.tensors())
      uploads.push_back(detail::Upload{s.header.data_offset() + t.begin, empty_for(torch_view(s, t), s.options.device())});
    detail::upload(*s.source, uploads, s.options.staging());
    std::size_t i = 0;
    for (const TensorInfo& t : s.header.tensors()) out.insert(t.name, finish(std::move(uploads[i++].dst), s.options));
    return out;
  }
  // Owned tensors are all allocated first, then read in one parallel pass,
  // so that small tensors share the threads as well as large ones.
  std::vector<at::Tensor> made;
  std::vector<detail::Read> reads;
  made.reserve(size());
  for (const TensorInfo& t : s.header.tensors()) {
    Unfinished u = unfinished_tensor(state_, t);
    made.push_back(std::move(u.tensor));
    if (u.read) reads.push_back(*u.read);
  }
  read_parallel(*s.source, reads);
  std::size_t i = 0;
  for (const TensorInfo& t : s.header.tensors()) out.insert(t.name, finish(std::move(made[i++]), s.options));
  return out;
}

// ---------------------------------------------------------------------------
// TensorSlice: resolve the indices, plan the runs of bytes they select, gather.

namespace {

// What an index selects of one stored dimension: `count` elements from
// `start`, `step` apart; `keep` is false for an integer, which drops it.
struct SelectedDim {
  std::int64_t start = 0, count = 0, step = 1;
  bool keep = true;
};

// A resolved index.
struct Selection {
  std::vector<SelectedDim> dims;       // one per stored dimension
  std::vector<std::int64_t> out_shape;  // the kept counts, with a 1 at each None
  std::int64_t total = 1;               // elements selected: the product of the counts
};

// Resolves `indices` (integers, Slice, Ellipsis and None, as torch reads them)
// against `shape`, the stored tensor's torch shape, of which the first
// `indexable` dimensions are the file's (a raw-bytes view adds a trailing one,
// always taken whole). Negative positions count from the end; slices are
// clamped to the dimension. Throws InvalidSlice naming `file` and `name` for
// anything else: another kind of index, two ellipses, more indices than
// dimensions, an integer out of range, a step that is not positive.
Selection resolve_indices(at::ArrayRef<at::indexing::TensorIndex> indices, const std::vector<std::int64_t>& shape,
                          std::size_t indexable, const std::string& file, const std::string& name) {
  auto fail = [&](const std::string& detail) { return Error(ErrorCode::InvalidSlice, file, name, detail); };
  const std::size_t rank = shape.size();
  std::size_t consuming = 0;
  bool ellipsis = false;
  for (const auto& index : indices) {
    if (index.is_integer() || index.is_slice()) {
      ++consuming;
    } else if (index.is_ellipsis()) {
      if (ellipsis) throw fail("an index can only have a single ellipsis");
      ellipsis = true;
    } else if (!index.is_none()) {
      throw fail("only integers, Slice, Ellipsis and None are supported");
    }
  }
  if (consuming > indexable)
    throw fail("too many indices (" + std::to_string(consuming) + ") for a tensor of rank " +
               std::to_string(indexable));
  Selection sel;
  sel.dims.resize(rank);
  for (std::size_t d = 0; d < rank; ++d) sel.dims[d] = SelectedDim{0, shape[d], 1, true};
  std::vector<std::size_t> new_axes;  // output positions of None
  std::size_t d = 0;
  std::size_t out_rank = 0;
  for (const auto& index : indices) {
    if (index.is_none()) {
      new_axes.push_back(out_rank++);
    } else if (index.is_ellipsis()) {
      std::size_t skip = indexable - consuming;
      d += skip;
      out_rank += skip;
    } else if (index.is_integer()) {
      std::int64_t size = shape[d];
      std::int64_t i = as_int(index.integer());
      if (i < -size || i >= size)
        throw fail("index " + std::to_string(i) + " is out of range for dimension " +
                   std::to_string(d) + " of size " + std::to_string(size));
      if (i < 0) i += size;
      sel.dims[d++] = SelectedDim{i, 1, 1, false};
    } else {
      const auto& sl = index.slice();
      std::int64_t size = shape[d];
      std::int64_t step = as_int(sl.step());
      if (step <= 0) throw fail("slice step must be positive");
      auto clamp = [size](std::int64_t x) {
        if (x < 0) x = x < -size ? 0 : x + size;
        return std::min(x, size);
      };
      std::int64_t start = clamp(as_int(sl.start()));
      std::int64_t stop = clamp(as_int(sl.stop()));
      // Not (stop - start + step - 1) / step: that overflows for steps near 2^63.
      std::int64_t count = stop > start ? (stop - start - 1) / step + 1 : 0;
      sel.dims[d++] = SelectedDim{start, count, step, true};
      ++out_rank;
    }
  }
  for (const SelectedDim& dim : sel.dims) {
    if (dim.keep) sel.out_shape.push_back(dim.count);
    sel.total *= dim.count;
  }
  for (std::size_t axis : new_axes) sel.out_shape.insert(sel.out_shape.begin() + axis, 1);
  return sel;
}

// Where the selected elements lie in the stored tensor: equal contiguous runs
// of `run` elements, one for each position of an odometer over the dimensions
// [0, outer), in row-major order.
struct RunPlan {
  std::vector<std::uint64_t> stride;  // row-major strides of the stored tensor, in elements
  std::size_t outer = 0;
  std::uint64_t run = 1;
  std::uint64_t fixed = 0;  // element offset of every run contributed by the dimensions >= outer
};

// Plans the runs of a selection of at least one element of a tensor of
// `shape`: the innermost run takes the trailing dimensions selected whole,
// then one selected with step 1; the odometer walks the dimensions before it,
// and the one it stopped at when that one is strided.
RunPlan plan_runs(const Selection& sel, const std::vector<std::int64_t>& shape) {
  const std::vector<SelectedDim>& dims = sel.dims;
  const std::size_t rank = shape.size();
  RunPlan plan;
  plan.stride.assign(rank, 1);
  for (std::size_t k = rank; k-- > 1;) plan.stride[k - 1] = plan.stride[k] * static_cast<std::uint64_t>(shape[k]);
  std::size_t k = rank;
  while (k > 0 && dims[k - 1].start == 0 && dims[k - 1].count == shape[k - 1] && dims[k - 1].step == 1) {
    plan.run *= static_cast<std::uint64_t>(shape[k - 1]);
    --k;
  }
  if (k > 0 && dims[k - 1].step == 1) {
    plan.run *= static_cast<std::uint64_t>(dims[k - 1].count);
    --k;
  }
  plan.outer = k < rank && dims[k].step != 1 ? k + 1 : k;
  for (std::size_t j = plan.outer; j < rank; ++j)
    plan.fixed += static_cast<std::uint64_t>(dims[j].start) * plan.stride[j];
  return plan;
}

// Copies every run of `plan` (elements of `esize` bytes; the tensor's data at
// file offset `base` of `source`) to `dst`, end to end, in odometer order:
// `sel.total * esize` bytes. Reads a mapping or buffer in place; with pread,
// many small runs are read as their whole span at once when that reads little
// more than the runs themselves (a rank's columns of a large matrix must cost
// about its share of the bytes, not the whole span), else one read per run.
void gather_runs(const Source& source, std::uint64_t base, std::uint64_t esize, const Selection& sel,
                 const RunPlan& plan, char* dst) {
  const std::vector<SelectedDim>& dims = sel.dims;
  const std::size_t outer = plan.outer;
  const std::uint64_t run_bytes = plan.run * esize;
  std::string span_buffer;
  std::uint64_t span_begin = 0;
  const std::byte* memory = source.data();  // byte 0 of the file, or null
  if (!memory) {
    std::uint64_t first = 0, last = 0;
    for (std::size_t j = 0; j < outer; ++j) {
      first += static_cast<std::uint64_t>(dims[j].start) * plan.stride[j];
      last += static_cast<std::uint64_t>(dims[j].start + (dims[j].count - 1) * dims[j].step) * plan.stride[j];
    }
    const std::uint64_t span_bytes = (last - first + plan.run) * esize;
    const std::uint64_t useful = static_cast<std::uint64_t>(sel.total) * esize;
    const std::uint64_t runs = useful / run_bytes;
    const std::uint64_t waste_allowed = std::max<std::uint64_t>(useful / 4, 256u << 10);
    if (runs > 1 && run_bytes < (64u << 10) && span_bytes - useful <= waste_allowed) {
      span_begin = base + (first + plan.fixed) * esize;
      span_buffer.resize(static_cast<std::size_t>(span_bytes));
      source.read(span_begin, span_buffer.data(), span_buffer.size());
    }
  }
  const auto* span =
      span_buffer.empty() ? nullptr : reinterpret_cast<const std::byte*>(span_buffer.data());
  std::vector<std::int64_t> counter(outer, 0);
  for (;;) {
    std::uint64_t off = plan.fixed;
    for (std::size_t j = 0; j < outer; ++j)
      off += static_cast<std::uint64_t>(dims[j].start + counter[j] * dims[j].step) * plan.stride[j];
    const std::uint64_t at = base + off * esize;
    if (memory) {
      std::memcpy(dst, memory + at, static_cast<std::size_t>(run_bytes));
    } else if (span) {
      std::memcpy(dst, span + (at - span_begin), static_cast<std::size_t>(run_bytes));
    } else {
      source.read(at, dst, static_cast<std::size_t>(run_bytes));
    }
    dst += run_bytes;
    std::size_t j = outer;
    while (j > 0 && ++counter[j - 1] == dims[j - 1].count) counter[--j] = 0;
    if (j == 0) break;
  }
}

}  // namespace

std::vector<std::int64_t> TensorSlice::shape() const {
  return detail::torch_dims(*info_, state_->source->path());
}

at::Tensor TensorSlice::operator()(at::ArrayRef<at::indexing::TensorIndex> indices) const {
  const State& s = *state_;
  const TensorInfo& info = *info_;
  if (dtype_bits(info.dtype) < 8)
    throw Error(ErrorCode::InvalidSlice, s.source->path(), info.name,
                "slicing a packed " + std::string(dtype_name(info.dtype)) +
                    " tensor is not supported; use get_tensor");
  const TorchView v = torch_view(s, info);  // raw-bytes views add one whole trailing dim
  const Selection sel = resolve_indices(indices, v.shape, info.shape.size(), s.source->path(), info.name);
  at::Tensor out = detail::empty_cpu(sel.out_shape, v.dtype, s.options.huge_pages());
  if (sel.total == 0) return finish(std::move(out), s.options);
  gather_runs(*s.source, s.header.data_offset() + info.begin, v.element_size, sel, plan_runs(sel, v.shape),
              static_cast<char*>(out.data_ptr()));
  return finish(std::move(out), s.options);
}

// ---------------------------------------------------------------------------

TensorDict load_file(const std::string& path, const LoadOptions& options) {
  return SafeOpen(path, options).tensors();
}

TensorDict load(const void* data, std::size_t size, const LoadOptions& options) {
  return SafeOpen(copy_buffer(data, size), options).tensors();
}

Metadata load_metadata(const std::string& path) {
  return SafeOpen(path, LoadOptions().backend(Backend::Pread)).metadata();
}

}  // namespace safetensors
