// Fuzz target: the header from raw bytes (length prefix, UTF-8, JSON, every
// validation rule). A header that parses is planned again with the writer and
// must parse back to the same tensors and metadata.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "safetensors/error.hpp"
#include "safetensors/header.hpp"
#include "safetensors/writer.hpp"

namespace st = safetensors;

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz_header: %s %s\n", what, detail.c_str());
  std::abort();
}

bool same(const st::TensorInfo& a, const st::TensorInfo& b) {
  return a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.nbytes() == b.nbytes();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::optional<st::Header> parsed;
  try {
    parsed.emplace(st::parse_header(data, size, "fuzz"));
  } catch (const st::Error&) {
    return 0;  // refused: the only acceptable failure
  }
  const st::Header& h = *parsed;

  // Invariants the loader relies on.
  std::uint64_t end = 0;
  for (const st::TensorInfo& t : h.tensors()) {
    if (t.begin != end || t.end < t.begin) fail("tensors are not back to back");
    if (t.shape.size() > st::kMaxRank) fail("rank above the limit");
    if (h.find(t.name) != &t) fail("find() does not return the tensor", t.name);
    end = t.end;
  }
  if (end != h.data_size() || h.file_size() != size) fail("data buffer not covered exactly");

  // Write the same tensors and metadata again and read them back.
  std::vector<st::EntrySpec> entries;
  for (const st::TensorInfo& t : h.tensors()) entries.push_back({t.name, t.dtype, t.shape});
  std::optional<st::Metadata> metadata;
  if (h.has_metadata()) metadata = h.metadata();
  st::WritePlan plan;
  try {
    plan = st::plan_write(entries, metadata, "fuzz");
  } catch (const st::Error& e) {
    fail("the writer refuses a header the reader accepts:", e.what());
  }
  if (plan.data_size != h.data_size()) fail("the writer's data size differs");
  std::string file = plan.header + std::string(plan.data_size, '\0');
  st::Header again;
  try {
    again = st::parse_header(file.data(), file.size(), "fuzz-rewritten");
  } catch (const st::Error& e) {
    fail("the reader refuses what the writer wrote:", e.what());
  }
  if (again.tensors().size() != h.tensors().size()) fail("tensor count differs after rewriting");
  for (const st::TensorInfo& t : h.tensors()) {
    const st::TensorInfo* u = again.find(t.name);
    if (!u || !same(t, *u)) fail("tensor differs after rewriting:", t.name);
  }
  if (again.metadata() != h.metadata() || again.has_metadata() != h.has_metadata())
    fail("metadata differs after rewriting");
  return 0;
}
