// The torch-free writer: a plan that reproduces the reference writer's bytes,
// and the sink that puts them in memory (the one into a file: durable.cpp).

#include "safetensors/writer.hpp"

#include <algorithm>
#include <cstdio>

#include "safetensors/error.hpp"
#include "checked.hpp"
#include "detail/sink.hpp"
#include "detail/text.hpp"

namespace safetensors {

using detail::append_json_string;
using detail::is_valid_utf8;

void detail::append_json_string(std::string& out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  out += '"';
  std::size_t run = 0;  // start of the pending unescaped run
  for (std::size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 0xF];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

WritePlan plan_write(const std::vector<EntrySpec>& entries, const std::optional<Metadata>& metadata,
                     const std::string& file) {
  WritePlan plan;
  const std::size_t n = entries.size();

  std::vector<std::uint64_t> sizes(n);
  for (std::size_t i = 0; i < n; ++i) {
    const EntrySpec& e = entries[i];
    if (e.name == kMetadataKey)
      throw Error(ErrorCode::ReservedName, file, e.name,
                  "\"__metadata__\" is reserved for the metadata and cannot name a tensor");
    if (!is_valid_utf8(e.name))
      throw Error(ErrorCode::InvalidArgument, file, e.name, "tensor name is not valid UTF-8");
    if (e.shape.size() > kMaxRank)
      throw Error(ErrorCode::LimitExceeded, file, e.name,
                  "rank " + std::to_string(e.shape.size()) + " above the limit of " +
                      std::to_string(kMaxRank));
    std::uint64_t bits = 0;
    if (!checked_numel_bits(e.shape, dtype_bits(e.dtype), bits))
      throw Error(ErrorCode::ValidationOverflow, file, e.name, "size of the shape overflows 64 bits");
    if (bits % 8 != 0)
      throw Error(ErrorCode::MisalignedSlice, file, e.name,
                  std::to_string(bits) + " bits of " + std::string(dtype_name(e.dtype)) +
                      " are not a whole number of bytes");
    sizes[i] = bits / 8;
  }
  if (metadata)
    for (const auto& [key, value] : *metadata)
      if (!is_valid_utf8(key) || !is_valid_utf8(value))
        throw Error(ErrorCode::InvalidArgument, file, "",
                    "metadata key or value is not valid UTF-8 (key \"" + key + "\")");

  // The reference's order: dtype descending (declaration order), then name.
  plan.order.resize(n);
  for (std::size_t i = 0; i < n; ++i) plan.order[i] = i;
  std::sort(plan.order.begin(), plan.order.end(), [&](std::size_t a, std::size_t b) {
    if (entries[a].dtype != entries[b].dtype) return entries[a].dtype > entries[b].dtype;
    return entries[a].name < entries[b].name;
  });
  // Names are unique.
  {
    std::vector<std::string_view> names;
    names.reserve(n);
    for (const EntrySpec& e : entries) names.emplace_back(e.name);
    std::sort(names.begin(), names.end());
    auto dup = std::adjacent_find(names.begin(), names.end());
    if (dup != names.end())
      throw Error(ErrorCode::DuplicateKey, file, std::string(*dup), "two tensors have this name");
  }

  plan.offsets.resize(n);
  std::uint64_t offset = 0;
  for (std::size_t i : plan.order) {
    std::uint64_t end;
    if (__builtin_add_overflow(offset, sizes[i], &end))
      throw Error(ErrorCode::ValidationOverflow, file, entries[i].name,
                  "total size overflows 64 bits");
    plan.offsets[i] = {offset, end};
    offset = end;
  }
  plan.data_size = offset;

  std::string& h = plan.header;
  h.assign(kHeaderPrefixSize, '\0');
  h += '{';
  bool first = true;
  if (metadata) {
    h += "\"__metadata__\":{";
    bool first_kv = true;
    for (const auto& [key, value] : *metadata) {
      if (!first_kv) h += ',';
      first_kv = false;
      append_json_string(h, key);
      h += ':';
      append_json_string(h, value);
    }
    h += '}';
    first = false;
  }
  char num[24];
  auto append_u64 = [&](std::uint64_t v) {
    int len = std::snprintf(num, sizeof num, "%llu", static_cast<unsigned long long>(v));
    h.append(num, static_cast<std::size_t>(len));
  };
  for (std::size_t i : plan.order) {
    const EntrySpec& e = entries[i];
    if (!first) h += ',';
    first = false;
    append_json_string(h, e.name);
    h += ":{\"dtype\":\"";
    h += dtype_name(e.dtype);
    h += "\",\"shape\":[";
    for (std::size_t d = 0; d < e.shape.size(); ++d) {
      if (d) h += ',';
      append_u64(e.shape[d]);
    }
    h += "],\"data_offsets\":[";
    append_u64(plan.offsets[i].first);
    h += ',';
    append_u64(plan.offsets[i].second);
    h += "]}";
    if (h.size() > kHeaderPrefixSize + kMaxHeaderSize) break;  // reported below
  }
  h += '}';
  // Pad with spaces so the data starts 8-aligned.
  std::size_t json_len = h.size() - kHeaderPrefixSize;
  std::size_t padded = (json_len + 7) / 8 * 8;
  if (padded > kMaxHeaderSize)
    throw Error(ErrorCode::HeaderTooLarge, file, "",
                "header would exceed the limit of " + std::to_string(kMaxHeaderSize) + " bytes");
  h.append(padded - json_len, ' ');
  for (int b = 0; b < 8; ++b) h[b] = static_cast<char>((static_cast<std::uint64_t>(padded) >> (8 * b)) & 0xFF);
  return plan;
}

void detail::BufferSink::write(const void* data, std::size_t n) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  bytes_.insert(bytes_.end(), p, p + n);
}

}  // namespace safetensors
