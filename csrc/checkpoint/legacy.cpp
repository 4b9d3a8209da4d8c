// Legacy torch.save files (torch < 1.6, or _use_new_zipfile_serialization=False)
//
// Five pickles back to back: the magic number, the protocol version (1001),
// sys_info (byte order and C type sizes), the object (storages as persistent
// ids), and the list of storage keys; then each listed storage in that
// order: its element count as 8 little-endian bytes, then its elements.

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>

#include "checkpoint/checkpoint_internal.hpp"
#include "pickle/unpickler.hpp"
#include "safetensors/error.hpp"

namespace safetensors::detail {
namespace {

using pickle::Value;

// The first pickle of a legacy torch.save file: PROTO 2..5, a FRAME from
// protocol 4 on, then LONG1 of 10 bytes holding torch's magic number
// 0x1950a86a20f9469cfc6c, then STOP.
constexpr unsigned char kLegacyMagic[] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, '.'};
// The legacy format's protocol version (torch.serialization.PROTOCOL_VERSION).
constexpr std::int64_t kLegacyProtocolVersion = 1001;

}  // namespace

std::size_t legacy_magic_end(const Source& source) {
  unsigned char head[2 + 9 + sizeof kLegacyMagic];
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(source.size(), sizeof head));
  source.read(0, head, n);
  if (n < 2 || head[0] != 0x80 || head[1] < 2 || head[1] > 5) return 0;
  std::size_t at = 2;
  if (n > at && head[at] == 0x95) at += 9;  // FRAME and its 8-byte length
  if (n < at + sizeof kLegacyMagic || std::memcmp(head + at, kLegacyMagic, sizeof kLegacyMagic) != 0) return 0;
  return at + sizeof kLegacyMagic;
}

void read_torch_legacy(const std::shared_ptr<Source>& source, const CheckpointOptions& options, Checkpoint& out) {
  const std::string& file = source->path();
  auto bad = [&](const std::string& what) -> void {
    throw Error(ErrorCode::InvalidCheckpoint, file, "", "legacy torch.save file: " + what);
  };
  std::uint64_t offset = legacy_magic_end(*source);
  const pickle::Pickle version = pickle::unpickle(*source, offset);
  if (version.root->kind != Value::Kind::Int || version.root->integer != kLegacyProtocolVersion)
    bad("protocol version " +
        (version.root->kind == Value::Kind::Int ? std::to_string(version.root->integer)
                                                : "given as a " + pickle::describe(*version.root)) +
        ", not " + std::to_string(kLegacyProtocolVersion));
  const pickle::Pickle sys_info = pickle::unpickle(*source, offset);
  bool little_endian = false;
  if (sys_info.root->kind == Value::Kind::Dict)
    for (const auto& [key, value] : sys_info.root->entries)
      if (key->kind == Value::Kind::String && key->text == "little_endian" && value->kind == Value::Kind::Bool)
        little_endian = value->boolean;
  if (!little_endian)
    throw Error(ErrorCode::InvalidCheckpoint, file, "",
                "a big-endian checkpoint (or one that does not say); re-save it on a little-endian machine");
  const std::uint64_t object_start = offset;
  const pickle::Pickle p = pickle::unpickle(*source, offset);
  const std::uint64_t object_size = offset - object_start;
  const pickle::Pickle keys = pickle::unpickle(*source, offset);
  if (keys.root->kind != Value::Kind::List) bad("the storage key list is a " + pickle::describe(*keys.root));

  // Each storage's dtype and size, from its persistent ids (Storages checks
  // that they agree with each other).
  std::unordered_map<std::string, const pickle::StorageRef*> declared;
  for (const Value& v : p.arena)
    if (v.kind == Value::Kind::Storage) declared.emplace(v.storage->key, v.storage.get());
  std::unordered_map<std::string, Span> spans;
  for (const Value* key : keys.root->items) {
    if (key->kind != Value::Kind::String) bad("a storage key is a " + pickle::describe(*key));
    const auto found = declared.find(key->text);
    if (found == declared.end()) bad("storage '" + key->text + "' is listed but no tensor uses it");
    const pickle::StorageRef& ref = *found->second;
    if (source->size() - offset < 8) bad("the file ends before storage '" + key->text + "'");
    unsigned char le[8];
    source->read(offset, le, sizeof le);
    std::uint64_t count = 0;
    for (int i = 7; i >= 0; --i) count = (count << 8) | le[i];
    offset += 8;
    if (count != ref.numel)
      bad("storage '" + key->text + "' holds " + std::to_string(count) + " elements, its tensors say " +
          std::to_string(ref.numel));
    const std::uint64_t bytes = ref.numel * (dtype_bits(ref.dtype) / 8);  // bounded by the unpickler
    if (source->size() - offset < bytes)
      bad("the file ends inside storage '" + key->text + "' (" + std::to_string(bytes) + " bytes)");
    if (!spans.emplace(key->text, Span{offset, bytes}).second) bad("storage '" + key->text + "' is listed twice");
    offset += bytes;
  }
  const LocateStorage locate = [&](const std::string& key) -> std::optional<Span> {
    const auto it = spans.find(key);
    if (it == spans.end()) return std::nullopt;
    return it->second;
  };
  flatten(source, locate, object_size, *p.root, options, out);
}

}  // namespace safetensors::detail
