// The staging ring: see detail/staging.hpp. Torch-free.

#include "detail/staging.hpp"

#include <algorithm>
#include <exception>
#include <limits>
#include <string>

#include "safetensors/error.hpp"

namespace safetensors::detail {

namespace {

// A copy out of the slot being filled: `from` in the slot, `target_offset` in
// the destination.
struct Piece {
  std::size_t from;
  std::size_t target;
  std::uint64_t target_offset;
  std::size_t size;
};

void check(std::vector<StagedTransfer>& transfers, const StagingOptions& options) {
  if (options.chunk_bytes == 0 || options.slots == 0)
    throw Error(ErrorCode::InvalidArgument, "", "",
                "a staging ring needs at least one slot of at least one byte");
  transfers.erase(std::remove_if(transfers.begin(), transfers.end(),
                                 [](const StagedTransfer& t) { return t.size == 0; }),
                  transfers.end());
  std::stable_sort(transfers.begin(), transfers.end(),
                   [](const StagedTransfer& a, const StagedTransfer& b) { return a.offset < b.offset; });
  for (std::size_t i = 0; i < transfers.size(); ++i) {
    const StagedTransfer& t = transfers[i];
    if (t.size > std::numeric_limits<std::uint64_t>::max() - t.offset)
      throw Error(ErrorCode::InvalidArgument, "", "",
                  "a staged transfer ends past 2^64 (offset " + std::to_string(t.offset) + ")");
    if (i > 0 && transfers[i - 1].offset + transfers[i - 1].size > t.offset)
      throw Error(ErrorCode::InvalidArgument, "", "",
                  "staged transfers overlap at offset " + std::to_string(t.offset));
  }
}

}  // namespace

void stage_transfers(std::vector<StagedTransfer> transfers, const StagingRead& read,
                     StagingDevice& device, const StagingOptions& options) {
  check(transfers, options);
  const std::uint64_t chunk = options.chunk_bytes;
  // Slots whose copies may still run: each is waited for before it is
  // refilled, and all of them before returning, on success or failure.
  std::vector<char> busy(options.slots, 0);
  std::vector<Piece> pieces;
  try {
    std::size_t i = 0;        // the next transfer
    std::uint64_t done = 0;   // bytes of transfers[i] already staged
    std::size_t filled = 0;   // chunks so far
    while (i < transfers.size()) {
      const std::size_t slot = filled++ % options.slots;
      if (busy[slot]) {
        device.wait(slot);
        busy[slot] = 0;
      }
      // This chunk: the rest of transfers[i], then whole or partial following
      // transfers while they fit and their gap is small.
      const std::uint64_t start = transfers[i].offset + done;
      std::uint64_t end = start;
      pieces.clear();
      while (i < transfers.size()) {
        const StagedTransfer& t = transfers[i];
        const std::uint64_t begin = t.offset + done;
        if (begin - end > kStagingMaxGap || begin - start >= chunk) break;
        const std::uint64_t take = std::min(t.size - done, chunk - (begin - start));
        pieces.push_back(Piece{static_cast<std::size_t>(begin - start), t.target, done,
                               static_cast<std::size_t>(take)});
        end = begin + take;
        done += take;
        if (done < t.size) break;  // the chunk is full
        ++i;
        done = 0;
      }
      read(start, device.buffer(slot), static_cast<std::size_t>(end - start));
      busy[slot] = 1;
      for (const Piece& p : pieces) device.copy_async(slot, p.from, p.target, p.target_offset, p.size);
      device.fence(slot);
    }
    for (std::size_t slot = 0; slot < busy.size(); ++slot) {
      if (busy[slot]) {
        device.wait(slot);
        busy[slot] = 0;
      }
    }
  } catch (...) {
    // No copy may still read a buffer once we return; the first error wins.
    for (std::size_t slot = 0; slot < busy.size(); ++slot) {
      if (!busy[slot]) continue;
      try {
        device.fence(slot);
        device.wait(slot);
      } catch (...) {
      }
    }
    throw;
  }
}

}  // namespace safetensors::detail
