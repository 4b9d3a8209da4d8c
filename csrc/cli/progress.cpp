#include "progress.hpp"

#include <unistd.h>

#include <cstdio>
#include <iterator>
#include <utility>

namespace safetensors::cli {

std::string human_bytes(std::uint64_t n) {
  constexpr const char* kUnits[] = {"kB", "MB", "GB", "TB", "PB"};
  if (n < 1000) return std::to_string(n) + " B";
  double value = static_cast<double>(n) / 1000;
  std::size_t unit = 0;
  while (value >= 1000 && unit + 1 < std::size(kUnits)) value /= 1000, ++unit;
  char text[32];
  std::snprintf(text, sizeof text, "%.1f %s", value, kUnits[unit]);
  return text;
}

ProgressLine::ProgressLine(std::string verb) : verb_(std::move(verb)), terminal_(isatty(STDERR_FILENO) == 1) {}

ProgressLine::~ProgressLine() {
  if (shown_) std::fputc('\n', stderr);
}

void ProgressLine::update(std::uint64_t done, std::uint64_t total) {
  if (!terminal_ || total <= kProgressThreshold) return;
  const int percent = static_cast<int>(static_cast<double>(done) / static_cast<double>(total) * 100);
  const Clock::time_point now = Clock::now();
  if (shown_ && percent == percent_ && now - drawn_ < std::chrono::milliseconds(100)) return;
  std::string line = "\r[" + verb_ + " " + human_bytes(done) + " / " + human_bytes(total) + ", " +
                     std::to_string(percent) + "%";
  const double seconds = std::chrono::duration<double>(now - start_).count();
  if (seconds >= 0.1 && done > 0) {
    const double rate = static_cast<double>(done) / seconds;
    line += ", " + human_bytes(static_cast<std::uint64_t>(rate)) + "/s";
    if (done < total) line += ", " + std::to_string(static_cast<long long>(static_cast<double>(total - done) / rate + 0.5)) + " s left";
  }
  line += "]\x1b[K";  // clears what a longer line drawn before left
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
  shown_ = true;
  percent_ = percent;
  drawn_ = now;
}

}  // namespace safetensors::cli
