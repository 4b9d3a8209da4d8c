// The staging ring that loads to a GPU, exercised without one: CPU stand-ins
// for the device whose copies run late (at wait time, or on another thread
// after a random delay), so a slot refilled before its copies ended, a copy
// lost, or a buffer still in use after an error shows up as wrong bytes or a
// recorded violation. Then LibTorch's side of the ring with CPU tensors, and
// every load path that takes it.

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "detail/staging.hpp"
#include "upload.hpp"
#include "safetensors/load.hpp"
#include "safetensors/module.hpp"
#include "safetensors/save.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

using detail::kStagingMaxGap;
using detail::stage_transfers;
using detail::StagedTransfer;
using detail::StagingDevice;
using detail::StagingRead;
using test::error_code_of;

// A "device" whose copies happen only when their slot is waited for: a slot
// refilled before wait() would hand the wrong bytes to its destinations.
class LateDevice : public StagingDevice {
 public:
  LateDevice(std::vector<std::vector<std::uint8_t>>& targets, const StagingOptions& options)
      : targets_(targets), slots_(options.slots, Slot{std::vector<std::uint8_t>(options.chunk_bytes), {}, 0}) {}

  void* buffer(std::size_t slot) override {
    Slot& s = slots_.at(slot);
    if (!s.pending.empty()) violations.push_back("slot " + std::to_string(slot) + " handed out with copies pending");
    // A read is about to happen: record whether another slot is still busy.
    for (const Slot& other : slots_) overlapped += !other.pending.empty();
    return s.bytes.data();
  }
  void copy_async(std::size_t slot, std::size_t from, std::size_t target, std::uint64_t target_offset,
                  std::size_t size) override {
    Slot& s = slots_.at(slot);
    if (from + size > s.bytes.size()) violations.push_back("copy out of the slot's bounds");
    s.pending.push_back(Copy{from, target, target_offset, size});
    s.fenced = false;
    ++copies;
  }
  void fence(std::size_t slot) override { slots_.at(slot).fenced = true; }
  void wait(std::size_t slot) override {
    Slot& s = slots_.at(slot);
    if (!s.fenced && !s.pending.empty()) violations.push_back("wait on a slot that was not fenced");
    for (const Copy& c : s.pending) {
      std::vector<std::uint8_t>& t = targets_.at(c.target);
      if (c.target_offset + c.size > t.size()) {
        violations.push_back("copy past the end of a destination");
        continue;
      }
      std::memcpy(t.data() + c.target_offset, s.bytes.data() + c.from, c.size);
    }
    s.pending.clear();
  }
  std::size_t pending_slots() const {
    return static_cast<std::size_t>(
        std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return !s.pending.empty(); }));
  }

  std::vector<std::string> violations;
  std::size_t overlapped = 0;
  std::size_t copies = 0;

 private:
  struct Copy {
    std::size_t from, target;
    std::uint64_t target_offset;
    std::size_t size;
  };
  struct Slot {
    std::vector<std::uint8_t> bytes;
    std::vector<Copy> pending;
    bool fenced;
  };
  std::vector<std::vector<std::uint8_t>>& targets_;
  std::vector<Slot> slots_;
};

// A "device" with a copy engine of its own: a thread that performs the copies
// in order after a random delay, as a DMA engine does.
class ThreadedDevice : public StagingDevice {
 public:
  ThreadedDevice(std::vector<std::vector<std::uint8_t>>& targets, const StagingOptions& options)
      : targets_(targets), chunk_(options.chunk_bytes), ring_(options.chunk_bytes * options.slots),
        issued_(options.slots, 0), engine_([this] { run(); }) {}
  ~ThreadedDevice() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    engine_.join();
  }
  void* buffer(std::size_t slot) override { return ring_.data() + slot * chunk_; }
  void copy_async(std::size_t slot, std::size_t from, std::size_t target, std::uint64_t target_offset,
                  std::size_t size) override {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(Copy{slot, slot * chunk_ + from, target, target_offset, size, ++issued_count_});
    issued_[slot] = issued_count_;
    cv_.notify_all();
  }
  void fence(std::size_t) override {}
  void wait(std::size_t slot) override {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return completed_ >= issued_[slot]; });
  }

 private:
  struct Copy {
    std::size_t slot, from, target;
    std::uint64_t target_offset;
    std::size_t size;
    std::uint64_t sequence;
  };
  void run() {
    std::mt19937 rng(11);
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Copy c = queue_.front();
      queue_.pop_front();
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 50));
      std::memcpy(targets_[c.target].data() + c.target_offset, ring_.data() + c.from, c.size);
      lock.lock();
      completed_ = c.sequence;
      cv_.notify_all();
    }
  }
  std::vector<std::vector<std::uint8_t>>& targets_;
  std::size_t chunk_;
  std::vector<std::uint8_t> ring_;
  std::vector<std::uint64_t> issued_;
  std::uint64_t issued_count_ = 0, completed_ = 0;
  std::deque<Copy> queue_;
  bool stop_ = false;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::thread engine_;
};

// A file of random bytes and transfers over it: random sizes (some empty),
// random gaps (some larger than a read may span), in shuffled order.
struct Layout {
  std::vector<std::uint8_t> file;
  std::vector<StagedTransfer> transfers;
};

Layout random_layout(std::mt19937& rng, int count, std::size_t max_size) {
  Layout l;
  std::uint64_t at = rng() % 100;
  for (int i = 0; i < count; ++i) {
    const std::uint64_t size = rng() % 7 == 0 ? 0 : rng() % (max_size + 1);
    l.transfers.push_back(StagedTransfer{at, size, static_cast<std::size_t>(i)});
    const std::uint64_t gap = rng() % 5 == 0 ? kStagingMaxGap + 1 + rng() % 1000 : rng() % 50;
    at += size + gap;
  }
  l.file.resize(at);
  for (auto& b : l.file) b = static_cast<std::uint8_t>(rng());
  std::shuffle(l.transfers.begin(), l.transfers.end(), rng);
  return l;
}

std::vector<std::vector<std::uint8_t>> destinations(const Layout& l) {
  std::vector<std::vector<std::uint8_t>> out(l.transfers.size());
  for (const StagedTransfer& t : l.transfers) out[t.target].assign(t.size, 0xEE);
  return out;
}

void expect_delivered(const Layout& l, const std::vector<std::vector<std::uint8_t>>& targets,
                      const std::string& context) {
  for (const StagedTransfer& t : l.transfers) {
    ASSERT_EQ(targets[t.target].size(), t.size) << context;
    EXPECT_TRUE(std::equal(targets[t.target].begin(), targets[t.target].end(), l.file.begin() + t.offset))
        << context << ": transfer " << t.target << " (" << t.size << " bytes at " << t.offset << ")";
  }
}

struct ReadLog {
  std::vector<std::pair<std::uint64_t, std::size_t>> reads;
  StagingRead reader(const Layout& l) {
    return [this, &l](std::uint64_t offset, void* dst, std::size_t n) {
      reads.emplace_back(offset, n);
      ASSERT_LE(offset + n, l.file.size());
      std::memcpy(dst, l.file.data() + offset, n);
    };
  }
};

TEST(Staging, DeliversEveryLayoutWhenCopiesRunLate) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 400; ++trial) {
    const StagingOptions options{1 + rng() % 300, 1 + rng() % 4};
    const Layout l = random_layout(rng, 1 + static_cast<int>(rng() % 30), 1000);
    auto targets = destinations(l);
    LateDevice device(targets, options);
    ReadLog log;
    stage_transfers(l.transfers, log.reader(l), device, options);
    const std::string context = "trial " + std::to_string(trial) + ", chunk " + std::to_string(options.chunk_bytes) +
                                ", slots " + std::to_string(options.slots);
    EXPECT_EQ(device.violations, std::vector<std::string>{}) << context;
    EXPECT_EQ(device.pending_slots(), 0u) << context << ": returned with copies pending";
    expect_delivered(l, targets, context);
    std::uint64_t wanted = 0;
    for (const StagedTransfer& t : l.transfers) wanted += t.size;
    std::uint64_t read = 0;
    for (const auto& [offset, n] : log.reads) {
      EXPECT_LE(n, options.chunk_bytes) << context;
      read += n;
    }
    // Only small gaps are read on top of what was asked.
    EXPECT_LE(read, wanted + kStagingMaxGap * l.transfers.size()) << context;
    EXPECT_TRUE(std::is_sorted(log.reads.begin(), log.reads.end())) << context << ": reads out of file order";
  }
}

TEST(Staging, DeliversWhenACopyEngineRunsConcurrently) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 60; ++trial) {
    const StagingOptions options{64 + rng() % 4096, 1 + rng() % 4};
    const Layout l = random_layout(rng, 1 + static_cast<int>(rng() % 40), 20000);
    auto targets = destinations(l);
    {
      ThreadedDevice device(targets, options);
      ReadLog log;
      stage_transfers(l.transfers, log.reader(l), device, options);
    }
    expect_delivered(l, targets, "trial " + std::to_string(trial));
  }
}

// Reads of later chunks happen while earlier copies are in flight, and at most
// `slots` chunks are in flight.
TEST(Staging, ReadsOverlapCopiesOfEarlierChunks) {
  Layout l;
  l.file.resize(1 << 20);
  std::iota(l.file.begin(), l.file.end(), 0);
  l.transfers = {StagedTransfer{0, l.file.size(), 0}};
  auto targets = destinations(l);
  const StagingOptions options{64 << 10, 4};
  LateDevice device(targets, options);
  ReadLog log;
  stage_transfers(l.transfers, log.reader(l), device, options);
  expect_delivered(l, targets, "one large transfer");
  EXPECT_EQ(log.reads.size(), 16u);
  EXPECT_EQ(device.copies, 16u);
  // Each of the 16 reads after the first found the previous up to 3 slots
  // still copying: 0 + 1 + 2 + 3 + 3 * 12.
  EXPECT_EQ(device.overlapped, 42u);
}

// Small neighbouring tensors share reads; distant ones do not drag the gap in.
TEST(Staging, SmallNeighboursShareAReadAndFarOnesDoNot) {
  Layout l;
  l.file.resize(1000 + kStagingMaxGap + 2000);
  for (std::size_t i = 0; i < l.file.size(); ++i) l.file[i] = static_cast<std::uint8_t>(i * 7);
  for (std::size_t i = 0; i < 10; ++i) l.transfers.push_back(StagedTransfer{i * 100, 100, i});
  l.transfers.push_back(StagedTransfer{1000 + kStagingMaxGap + 1, 500, 10});
  auto targets = destinations(l);
  const StagingOptions options{1 << 20, 2};
  LateDevice device(targets, options);
  ReadLog log;
  stage_transfers(l.transfers, log.reader(l), device, options);
  expect_delivered(l, targets, "neighbours");
  const std::vector<std::pair<std::uint64_t, std::size_t>> expected = {{0, 1000}, {1000 + kStagingMaxGap + 1, 500}};
  EXPECT_EQ(log.reads, expected);
}

// A read that fails part way: the copies already started are waited for
// before the error reaches the caller, who may then free the buffers.
TEST(Staging, AFailedReadWaitsForStartedCopiesAndPropagates) {
  std::mt19937 rng(9);
  const Layout l = random_layout(rng, 20, 500);
  for (int fail_at = 0; fail_at < 6; ++fail_at) {
    auto targets = destinations(l);
    const StagingOptions options{100, 3};
    LateDevice device(targets, options);
    int reads = 0;
    const StagingRead read = [&](std::uint64_t offset, void* dst, std::size_t n) {
      if (reads++ == fail_at) throw Error(ErrorCode::FileChanged, "m.safetensors", "", "truncated");
      std::memcpy(dst, l.file.data() + offset, n);
    };
    EXPECT_EQ(error_code_of([&] { stage_transfers(l.transfers, read, device, options); }), ErrorCode::FileChanged);
    EXPECT_EQ(device.pending_slots(), 0u) << "fail_at " << fail_at;
    EXPECT_EQ(device.violations, std::vector<std::string>{}) << "fail_at " << fail_at;
  }
}

TEST(Staging, RefusesOverlapsAndAnEmptyRing) {
  std::vector<std::vector<std::uint8_t>> targets(2, std::vector<std::uint8_t>(10));
  const StagingOptions options{16, 2};
  LateDevice device(targets, options);
  const StagingRead read = [](std::uint64_t, void*, std::size_t) {};
  EXPECT_EQ(error_code_of([&] { stage_transfers({{0, 10, 0}, {5, 10, 1}}, read, device, options); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { stage_transfers({{~std::uint64_t{0} - 3, 10, 0}}, read, device, options); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { stage_transfers({{0, 10, 0}}, read, device, StagingOptions{0, 2}); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { stage_transfers({{0, 10, 0}}, read, device, StagingOptions{16, 0}); }),
            ErrorCode::InvalidArgument);
  stage_transfers({}, read, device, options);  // nothing to do
  stage_transfers({{3, 0, 0}}, read, device, options);
}

// ------------------------------------------------------------ LibTorch's side, CPU stand-in

// detail::upload with CPU destinations runs the torch device class (byte views
// of the destinations, copies out of the ring) with synchronous copies.
TEST(Upload, FillsTensorsOfEveryDtypeAndSizeFromTheFile) {
  test::TempDir dir;
  const std::string path = dir.file("m.safetensors");
  std::mt19937 rng(1);
  NamedTensors tensors;
  std::vector<std::string> names;
  for (int i = 0; i < 40; ++i) {
    const std::int64_t n = i % 9 == 0 ? 0 : static_cast<std::int64_t>(rng() % 5000);
    const at::ScalarType dtype = std::vector<at::ScalarType>{at::kFloat, at::kHalf, at::kDouble, at::kByte, at::kLong}[i % 5];
    names.push_back("t" + std::to_string(i));
    tensors.add(names.back(), at::randn({n}).mul(100).to(dtype));
  }
  save_file(tensors, path);
  for (Backend backend : {Backend::Mmap, Backend::Pread}) {
    SafeOpen file(path, LoadOptions().backend(backend));
    std::vector<detail::Upload> uploads;
    for (const std::string& name : names) {
      const TensorInfo& info = file.info(name);
      at::Tensor dst = at::full_like(file.get_tensor(name), 7);
      uploads.push_back(detail::Upload{file.header().data_offset() + info.begin, dst});
    }
    detail::upload(*open_file(path, backend), uploads, StagingOptions{1000, 3});
    for (std::size_t i = 0; i < names.size(); ++i)
      EXPECT_TRUE(test::bitwise_equal(uploads[i].dst, file.get_tensor(names[i]))) << names[i];
  }
}

// The batch read_into checks every shape before writing anything.
TEST(Upload, BatchReadIntoChecksEveryShapeFirst) {
  test::TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_file({{"a", at::arange(4, at::kFloat)}, {"b", at::arange(6, at::kFloat)}}, path);
  SafeOpen file(path);
  at::Tensor a = at::zeros({4}), b = at::zeros({5});
  EXPECT_EQ(error_code_of([&] { file.read_into({{"a", a}, {"b", b}}); }), ErrorCode::InvalidArgument);
  EXPECT_TRUE(at::equal(a, at::zeros({4})));
  at::Tensor b6 = at::zeros({6}, at::kDouble);  // converted
  at::Tensor a_strided = at::zeros({4, 2}).select(1, 0);  // not contiguous
  file.read_into({{"a", a_strided}, {"b", b6}});
  EXPECT_TRUE(at::equal(a_strided, at::arange(4, at::kFloat)));
  EXPECT_TRUE(at::equal(b6, at::arange(6, at::kDouble)));
}

using detail::StageCpuLoads;

// Every load path that a CUDA device takes (get_tensor, load_file, a dtype
// converted after the upload, batch read_into with direct, converted and
// strided destinations), over both backends and a tensor larger than the
// ring, gives the tensors a plain load gives.
TEST(Upload, EveryLoadPathThroughTheRingGivesThePlainLoadsTensors) {
  test::TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_file({{"big", at::randn({24 << 20})},  // 96 MiB: six chunks, so the ring wraps
             {"half", at::randn({3, 5}).to(at::kHalf)},
             {"bf16", at::randn({7}).to(at::kBFloat16)},
             {"flags", at::rand({9}) > 0.5},
             {"ids", at::arange(11, at::kLong)},
             {"empty", at::zeros({0, 4})},
             {"scalar", at::scalar_tensor(3.5)}},
            path);
  const TensorDict expected = load_file(path, LoadOptions().copy(true));
  StageCpuLoads staged;
  for (Backend backend : {Backend::Mmap, Backend::Pread}) {
    const TensorDict all = load_file(path, LoadOptions().backend(backend));
    ASSERT_EQ(all.keys(), expected.keys());
    SafeOpen file(path, LoadOptions().backend(backend));
    for (const auto& item : expected) {
      EXPECT_TRUE(test::bitwise_equal(all[item.key()], item.value())) << item.key();
      EXPECT_TRUE(test::bitwise_equal(file.get_tensor(item.key()), item.value())) << item.key();
    }
    // The ring's size is the caller's: a small one gives the same tensors,
    // an empty one is refused.
    const TensorDict small_ring = load_file(path, LoadOptions().backend(backend).staging(StagingOptions{4096, 2}));
    for (const auto& item : expected) EXPECT_TRUE(test::bitwise_equal(small_ring[item.key()], item.value())) << item.key();
    EXPECT_EQ(error_code_of([&] { load_file(path, LoadOptions().backend(backend).staging(StagingOptions{0, 2})); }),
              ErrorCode::InvalidArgument);
    // Floating tensors converted after the upload, the others left alone.
    const TensorDict halves = load_file(path, LoadOptions().backend(backend).dtype(at::kHalf));
    EXPECT_TRUE(at::equal(halves["big"], expected["big"].to(at::kHalf)));
    EXPECT_TRUE(at::equal(halves["bf16"], expected["bf16"].to(at::kHalf)));
    EXPECT_TRUE(test::bitwise_equal(halves["ids"], expected["ids"]));

    at::Tensor big = at::empty({24 << 20});
    at::Tensor ids_f64 = at::empty({11}, at::kDouble);  // converted after its upload
    at::Tensor half_t = at::empty({5, 3}, at::kHalf).t();  // not contiguous: copy_
    at::Tensor empty = at::empty({0, 4});
    file.read_into({{"big", big}, {"ids", ids_f64}, {"half", half_t}, {"empty", empty}});
    EXPECT_TRUE(test::bitwise_equal(big, expected["big"]));
    EXPECT_TRUE(at::equal(ids_f64, expected["ids"].to(at::kDouble)));
    EXPECT_TRUE(at::equal(half_t, expected["half"]));
  }
}

// load_state_dict's copy mode gathers the parameters of one shard into one
// pass through the ring, converting where the module's dtype differs.
TEST(Upload, LoadStateDictFillsAModuleThroughTheRing) {
  test::TempDir dir;
  const std::string path = dir.file("m.safetensors");
  torch::nn::Sequential saved(torch::nn::Linear(64, 32), torch::nn::BatchNorm1d(32), torch::nn::Linear(32, 8));
  saved->named_buffers()["1.running_mean"].normal_();
  save_state_dict(*saved, path);
  torch::nn::Sequential loaded(torch::nn::Linear(64, 32), torch::nn::BatchNorm1d(32), torch::nn::Linear(32, 8));
  for (auto& p : loaded->parameters()) p.set_data(p.detach().to(at::kDouble));  // buffers keep theirs
  {
    StageCpuLoads staged;
    load_state_dict(*loaded, path, StateDictLoadOptions().convert_dtype(true));
  }
  for (const auto& p : saved->named_parameters()) {
    const at::Tensor got = loaded->named_parameters()[p.key()];
    EXPECT_EQ(got.scalar_type(), at::kDouble) << p.key();
    EXPECT_TRUE(at::equal(got, p.value().to(at::kDouble))) << p.key();
  }
  for (const auto& b : saved->named_buffers())
    EXPECT_TRUE(at::equal(loaded->named_buffers()[b.key()].to(b.value().scalar_type()), b.value())) << b.key();
}

// ---------------------------------------------------------------------------
// read_parallel: the CPU reads of eager loads and of each staging chunk.

// A source over bytes that records every read it serves.
class RecordingSource : public Source {
 public:
  explicit RecordingSource(std::vector<std::uint8_t> bytes)
      : Source("", bytes.size(), nullptr), bytes_(std::move(bytes)) {}
  void read(std::uint64_t offset, void* dst, std::size_t n) const override {
    ASSERT_LE(offset + n, bytes_.size());
    std::memcpy(dst, bytes_.data() + offset, n);
    std::lock_guard<std::mutex> lock(mutex_);
    calls_.emplace_back(offset, n);
    threads_.insert(std::this_thread::get_id());
  }
  std::size_t threads_seen() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(threads_, {}).size();
  }
  const std::vector<std::uint8_t>& bytes() const { return bytes_; }
  std::vector<std::pair<std::uint64_t, std::size_t>> take_calls() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(calls_, {});
  }

 private:
  std::vector<std::uint8_t> bytes_;
  mutable std::mutex mutex_;
  mutable std::vector<std::pair<std::uint64_t, std::size_t>> calls_;
  mutable std::set<std::thread::id> threads_;
};

class Threads {
 public:
  explicit Threads(int n) : before_(at::get_num_threads()) { at::set_num_threads(n); }
  ~Threads() { at::set_num_threads(before_); }

 private:
  int before_;
};

// Reads of any sizes (empty ones, ones of a few bytes, ones of megabytes) land
// exactly, split only where one thread's equal share of the bytes ends: at
// most threads - 1 extra reads, each thread's share within a byte of the rest.
TEST(ReadParallel, SplitsTheBytesEvenlyAndExactly) {
  std::mt19937 rng(7);
  std::vector<std::uint8_t> file(6 << 20);
  for (auto& b : file) b = static_cast<std::uint8_t>(rng());
  const RecordingSource source(file);
  for (int threads : {1, 2, 3, 5}) {
    Threads set(threads);
    for (int round = 0; round < 40; ++round) {
      // Up to 12 reads of random ranges, laid out in one buffer with guard bytes between.
      std::vector<detail::Read> reads;
      std::vector<std::size_t> at;
      std::size_t used = 0, total = 0;
      const int count = std::uniform_int_distribution<int>(1, 12)(rng);
      for (int i = 0; i < count; ++i) {
        const int kind = std::uniform_int_distribution<int>(0, 3)(rng);
        const std::size_t n = kind == 0 ? 0 : kind == 1 ? rng() % 64 : rng() % (std::size_t{2} << 20);
        const std::uint64_t offset = rng() % (file.size() - n + 1);
        reads.push_back(detail::Read{offset, nullptr, n});
        at.push_back(used);
        used += n + 16;
        total += n;
      }
      std::vector<std::uint8_t> out(used, 0xEE);
      for (std::size_t i = 0; i < reads.size(); ++i) reads[i].dst = out.data() + at[i];
      source.take_calls();
      source.threads_seen();
      detail::read_parallel(source, reads);
      for (std::size_t i = 0; i < reads.size(); ++i) {
        ASSERT_TRUE(std::equal(file.begin() + reads[i].offset, file.begin() + reads[i].offset + reads[i].n,
                               out.begin() + at[i]))
            << "read " << i << " of " << reads[i].n << " bytes, " << threads << " threads";
        for (std::size_t g = 0; g < 16; ++g) ASSERT_EQ(out[at[i] + reads[i].n + g], 0xEE) << "guard overwritten";
      }
      const auto calls = source.take_calls();
      std::size_t nonempty = 0, read_bytes = 0;
      for (const detail::Read& r : reads) nonempty += r.n > 0;
      for (const auto& call : calls) read_bytes += call.second;
      EXPECT_EQ(read_bytes, total);
      const bool parallel = threads > 1 && total >= (std::size_t{1} << 20);
      EXPECT_LE(calls.size(), nonempty + (parallel ? threads - 1 : 0));
      if (parallel) {
        EXPECT_GE(calls.size(), static_cast<std::size_t>(threads)) << "every thread reads";
      }
      if (parallel && detail::reads_can_run_in_parallel()) {
        EXPECT_GE(source.threads_seen(), 2u);
      }
    }
  }
}

// A tied parameter filled under two names (overlapping destinations) takes
// the reads in order, like separate calls. The batch is laid out so that a
// parallel pass would write the earlier name last: thread 0's share ends with
// it, thread 1's begins with the later one.
TEST(ReadParallel, OverlappingDestinationsOfABatchAreFilledInOrder) {
  test::TempDir dir;
  const std::string path = dir.file("tied.safetensors");
  const at::Tensor big = at::randn({4 << 20});  // 16 MiB
  const at::Tensor first = at::full({1 << 19}, 1.0f), second = at::full({1 << 19}, 2.0f);
  save_file({{"big1", big}, {"first", first}, {"second", second}, {"big2", big.clone()}}, path);
  Threads set(2);
  at::Tensor shared = at::zeros({1 << 19}), other1 = at::empty_like(big), other2 = at::empty_like(big);
  const SafeOpen file(path);
  file.read_into({{"big1", other1}, {"first", shared}, {"second", shared}, {"big2", other2}});
  EXPECT_TRUE(at::equal(shared, second));
  file.read_into({{"big1", other1}, {"second", shared}, {"first", shared}, {"big2", other2}});
  EXPECT_TRUE(at::equal(shared, first));
  EXPECT_TRUE(at::equal(other1, big));
  EXPECT_TRUE(at::equal(other2, big));
}

}  // namespace
}  // namespace safetensors
