#pragma once
// Where the writer's bytes go: memory, or (AtomicFile, detail/durable.hpp) a
// file replaced crash-safely. Torch-free. Internal.

#include <cstddef>
#include <cstdint>
#include <vector>

namespace safetensors::detail {

/// Where bytes go.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual void write(const void* data, std::size_t n) = 0;
};

/// A sink into memory.
class BufferSink final : public Sink {
 public:
  void write(const void* data, std::size_t n) override;
  std::vector<std::uint8_t>& bytes() noexcept { return bytes_; }

 private:
  std::vector<std::uint8_t> bytes_;
};

}  // namespace safetensors::detail
