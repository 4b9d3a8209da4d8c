#pragma once
// The progress line of the commands that read or write much data (convert,
// verify, diff): "\r[verified 1.2 GB / 4.8 GB, 25%, 310.0 MB/s, 12 s left]" on
// stderr, redrawn in place. Only on a terminal, so that redirected output and
// logs stay one line per event, and only past kProgressThreshold bytes.

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace safetensors::cli {

/// Below this much data a command is over before a progress line would be
/// worth reading.
inline constexpr std::uint64_t kProgressThreshold = 256ull << 20;

/// "1.2 GB", "340.0 MB", "512 B": decimal units, as file managers show sizes.
std::string human_bytes(std::uint64_t n);

/// Redrawn when the percentage changes, or at most ten times a second, so that
/// many small tensors do not flood the terminal. The throughput and the time
/// left appear once a tenth of a second has passed. The destructor ends the
/// line, also when the command fails, so that the error starts a line of its
/// own.
class ProgressLine {
 public:
  /// `verb`: "converted", "verified", "compared".
  explicit ProgressLine(std::string verb);
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;
  ~ProgressLine();

  void update(std::uint64_t done, std::uint64_t total);
  std::function<void(std::uint64_t, std::uint64_t)> callback() {
    return [this](std::uint64_t done, std::uint64_t total) { update(done, total); };
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::string verb_;
  bool terminal_;
  bool shown_ = false;
  int percent_ = -1;
  Clock::time_point start_ = Clock::now();
  Clock::time_point drawn_{};
};

}  // namespace safetensors::cli
