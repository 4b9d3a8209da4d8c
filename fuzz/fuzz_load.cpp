// Fuzz target: the whole load path, bytes to tensors. The input is a file; it
// is opened from memory, and through a memfd with the mmap and the pread
// backends. Every tensor is loaded and sliced with indices taken from the data
// buffer (mutating it keeps the file valid); each slice must equal torch's own
// indexing of the whole tensor, and all three sources must agree bit for bit.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "memfile.hpp"
#include "safetensors/load.hpp"

namespace st = safetensors;
using at::indexing::TensorIndex;

namespace {

// Bounds the work per input; the library's cost is linear in what is read.
constexpr std::size_t kMaxTensors = 32;
constexpr int kSlicesPerTensor = 4;

[[noreturn]] void fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz_load: %s %s\n", what, detail.c_str());
  std::abort();
}

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;  // data_ptr() may be null
  at::Tensor ac = a.contiguous(), bc = b.contiguous();
  return std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0;
}

// Against torch's indexing: the same, except that a BOOL byte other than 0 or 1
// (which files may hold, and which we hand back as stored) counts as true,
// because torch's copy of a strided bool view stores 0/1.
bool same_values(const at::Tensor& ours, const at::Tensor& torch_result) {
  if (ours.scalar_type() != at::kBool) return bitwise_equal(ours, torch_result);
  if (torch_result.scalar_type() != at::kBool || ours.sizes() != torch_result.sizes()) return false;
  if (ours.numel() == 0) return true;
  at::Tensor a = ours.contiguous(), b = torch_result.contiguous();
  const auto* pa = static_cast<const std::uint8_t*>(a.data_ptr());
  const auto* pb = static_cast<const std::uint8_t*>(b.data_ptr());
  for (std::int64_t i = 0; i < a.numel(); ++i)
    if ((pa[i] != 0) != (pb[i] != 0)) return false;
  return true;
}

// Cycles over some bytes of the input; zeros when there are none.
class Bytes {
 public:
  Bytes(const std::uint8_t* p, std::size_t n) : p_(p), n_(n) {}
  std::uint8_t next() { return n_ ? p_[i_++ % n_] : 0; }
  std::int64_t index() {
    const std::uint8_t b = next();
    switch (b >> 5) {
      case 0: return std::numeric_limits<std::int64_t>::max();
      case 1: return std::numeric_limits<std::int64_t>::min();
      default: return static_cast<std::int8_t>(next());  // small, either sign
    }
  }

 private:
  const std::uint8_t* p_;
  std::size_t n_;
  std::size_t i_ = 0;
};

std::vector<TensorIndex> make_indices(Bytes& in, std::size_t rank) {
  std::vector<TensorIndex> out;
  const std::size_t count = in.next() % (rank + 2);
  for (std::size_t k = 0; k < count; ++k) {
    switch (in.next() % 8) {
      case 0: out.emplace_back(in.index()); break;
      case 1: out.emplace_back(at::indexing::None); break;
      case 2: out.emplace_back(at::indexing::Ellipsis); break;
      case 3: out.emplace_back(at::indexing::Slice()); break;
      default: {
        const std::int64_t start = in.index(), stop = in.index();
        std::int64_t step = in.index();
        if (step <= 0) step = 1 + (in.next() % 4);  // torch asserts on steps <= 0
        out.emplace_back(at::indexing::Slice(start, stop, step));
      }
    }
  }
  return out;
}

// The same selection as torch must be asked for it.
std::vector<TensorIndex> for_torch(const std::vector<TensorIndex>& indices, bool byte_dim) {
  std::vector<TensorIndex> out;
  bool ellipsis = false;
  for (const TensorIndex& index : indices) {
    ellipsis |= index.is_ellipsis();
    if (!index.is_slice()) {
      out.push_back(index);
      continue;
    }
    // LibTorch 1.13 computes (stop - start + step - 1) / step, which overflows
    // for steps near 2^63, and takes integers below -2^62 for symbolic ones.
    // Within dimensions below 2^62 (the caller checks) these select the same.
    const auto& s = index.slice();
    static constexpr std::int64_t kBig = std::int64_t{1} << 62;
    auto clamp = [](std::int64_t x) { return std::clamp(x, -kBig, kBig); };
    const std::int64_t step = std::min<std::int64_t>(s.step(), std::int64_t{1} << 32);
    out.emplace_back(at::indexing::Slice(clamp(s.start()), clamp(s.stop()), step));
  }
  // Raw bytes of a dtype this LibTorch lacks carry a trailing byte dimension
  // that our slices leave whole: torch's ellipsis must not cover it.
  if (byte_dim && ellipsis) out.emplace_back(at::indexing::Slice());
  return out;
}

// Everything a load produces, or the error code.
struct Outcome {
  std::optional<st::ErrorCode> error;
  std::vector<at::Tensor> tensors;  // whole tensors, then slices, in a fixed order
};

Outcome run(const st::SafeOpen& f, const std::uint8_t* data) {
  Outcome out;
  const auto& tensors = f.header().tensors();
  const std::uint64_t data_begin = f.header().data_offset();
  Bytes params(data + data_begin, static_cast<std::size_t>(f.header().data_size()));
  for (std::size_t i = 0; i < tensors.size() && i < kMaxTensors; ++i) {
    const st::TensorInfo& info = tensors[i];
    at::Tensor whole;
    try {
      whole = f.get_tensor(info.name);
    } catch (const st::Error&) {
      out.tensors.emplace_back();
      continue;
    }
    out.tensors.push_back(whole);
    bool huge_dim = false;  // beyond what torch's own indexing handles
    for (std::int64_t d : whole.sizes()) huge_dim |= d >= (std::int64_t{1} << 62);
    const bool byte_dim = static_cast<std::size_t>(whole.dim()) > info.shape.size();
    if (st::dtype_bits(info.dtype) < 8) continue;  // packed dtypes are not sliceable
    const st::TensorSlice slice = f.get_slice(info.name);
    if (!bitwise_equal(slice.all(), whole)) fail("slice.all() differs from get_tensor:", info.name);
    for (int s = 0; s < kSlicesPerTensor; ++s) {
      const std::vector<TensorIndex> indices = make_indices(params, info.shape.size());
      at::Tensor ours;
      try {
        ours = slice(indices);
      } catch (const st::Error& e) {
        if (e.code() != st::ErrorCode::InvalidSlice) fail("slice failed:", e.what());
        out.tensors.emplace_back();
        continue;
      }
      if (huge_dim) {
        out.tensors.push_back(ours);
        continue;
      }
      at::Tensor expected;
      try {
        const std::vector<TensorIndex> theirs = for_torch(indices, byte_dim);
        // Tensor::index refuses an empty list; it means the whole tensor.
        expected = theirs.empty() ? whole : whole.index(theirs);
      } catch (const c10::Error& e) {
        fail("a slice torch refuses was accepted:", e.what_without_backtrace());
      }
      if (!same_values(ours, expected)) {
        std::ostringstream os;
        os << info.name << " indexed with";
        for (const TensorIndex& index : indices) os << " " << index;
        os << ": ours " << ours.sizes() << ", torch " << expected.sizes();
        fail("slice differs from torch's indexing:", os.str());
      }
      out.tensors.push_back(ours);
    }
  }
  return out;
}

Outcome load(std::shared_ptr<st::Source> source, const std::uint8_t* data) {
  try {
    st::SafeOpen f(std::move(source), st::LoadOptions().unsupported_as_bytes(true));
    return run(f, data);
  } catch (const st::Error& e) {
    return Outcome{e.code(), {}};
  }
}

bool same(const Outcome& a, const Outcome& b) {
  if (a.error != b.error || a.tensors.size() != b.tensors.size()) return false;
  for (std::size_t i = 0; i < a.tensors.size(); ++i) {
    if (a.tensors[i].defined() != b.tensors[i].defined()) return false;
    if (a.tensors[i].defined() && !bitwise_equal(a.tensors[i], b.tensors[i])) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);  // deterministic and cheap: one input at a time
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const Outcome memory = load(st::copy_buffer(data, size), data);
  MemFile file(data, size);
  for (st::Backend backend : {st::Backend::Mmap, st::Backend::Pread}) {
    const Outcome other = load(st::open_file(file.path(), backend), data);
    if (!same(memory, other))
      fail(backend == st::Backend::Mmap ? "mmap differs from memory" : "pread differs from memory");
  }
  return 0;
}
