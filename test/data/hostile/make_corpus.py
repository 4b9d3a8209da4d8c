#!/usr/bin/env python3
"""Writes this folder, test/data/hostile/: files that break the format's rules, one at a time
and several at once, each with the error code a reader must refuse it with
(expected.tsv: file, code, what it breaks). Python standard library only.

Also hostile checkpoints for the migration readers (checkpoints.tsv: file, the
error code or "accepted", what it does): a TorchScript archive whose
__setstate__ never returns, pickles that repeat a 1 MiB name through the memo,
a stride-0 view of 2^40 bytes, and zip entries that share their bytes.

The huge cases (a million nesting levels, a million tensors, keys of many
megabytes) are made by test/hostile_test.cpp at run time instead of stored.

    python3 test/data/hostile/make_corpus.py [OUT_DIR]       (default: its own folder)
    python3 test/data/hostile/make_corpus.py --fuzz-seeds DIR    (smaller hostile checkpoints, for fuzzing)
"""
import io
import json
import os
import struct
import sys
import zipfile

U64_MAX = 2**64 - 1


def file_of(header, data=b""):
    """8-byte little-endian length, the header (str or bytes), the data."""
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header)) + header + data


def entry(dtype, shape, begin, end, **extra):
    return dict(dtype=dtype, shape=shape, data_offsets=[begin, end], **extra)


def js(obj):
    return json.dumps(obj, separators=(",", ":"))


def tensors(**entries):
    return js(entries)


F32_2 = entry("F32", [2], 0, 8)  # a valid tensor of 8 bytes
OK = tensors(w=F32_2)

CASES = []


def case(name, code, why, content):
    CASES.append((name, code, why, content))


# --- the header length
case("empty", "HeaderTooSmall", "no bytes at all", b"")
case("seven_bytes", "HeaderTooSmall", "7 bytes: no room for the length", b"\x08\0\0\0\0\0\0")
case("length_2p63", "HeaderTooLarge", "length 2^63", struct.pack("<Q", 2**63) + b"{}")
case("length_u64_max", "HeaderTooLarge", "length 2^64-1", struct.pack("<Q", U64_MAX) + b"{}")
case("length_limit_plus_one", "HeaderTooLarge", "length 100,000,001",
     struct.pack("<Q", 100_000_001) + b"{}")
case("length_past_end", "InvalidHeaderLength", "length 1000, 2 bytes follow",
     struct.pack("<Q", 1000) + b"{}")
case("length_one_past_end", "InvalidHeaderLength", "length one more than what follows",
     struct.pack("<Q", 3) + b"{}")
case("length_at_limit_past_end", "InvalidHeaderLength", "length 100,000,000 in a tiny file",
     struct.pack("<Q", 100_000_000) + b"{}")
case("git_lfs_pointer", "HeaderTooLarge", "a Git LFS pointer saved as the model",
     b"version https://git-lfs.github.com/spec/v1\n"
     b"oid sha256:4d7a1d1f3e2c5b6a79880d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c\n"
     b"size 548105171\n")
case("html_page", "HeaderTooLarge", "an HTML error page saved as the model",
     b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
     b"<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n")
case("json_without_length", "HeaderTooLarge", "a bare JSON header, no length prefix",
     OK.encode() + b"\0" * 8)

# --- the header text
case("utf8_invalid_byte", "InvalidHeader", "0xFF in a name", file_of(b'{"\xff":1}'))
case("utf8_overlong_slash", "InvalidHeader", "C0 AF: overlong '/'", file_of(b'{"\xc0\xaf":{}}'))
case("utf8_overlong_nul", "InvalidHeader", "C0 80: overlong NUL", file_of(b'{"a\xc0\x80":{}}'))
case("utf8_overlong_3byte", "InvalidHeader", "E0 80 AF: overlong '/'",
     file_of(b'{"\xe0\x80\xaf":{}}'))
case("utf8_overlong_4byte", "InvalidHeader", "F0 82 82 AC: overlong euro sign",
     file_of(b'{"\xf0\x82\x82\xac":{}}'))
case("utf8_surrogate", "InvalidHeader", "ED A0 80: a UTF-16 surrogate",
     file_of(b'{"\xed\xa0\x80":{}}'))
case("utf8_above_10ffff", "InvalidHeader", "F4 90 80 80: above U+10FFFF",
     file_of(b'{"\xf4\x90\x80\x80":{}}'))
case("utf8_truncated", "InvalidHeader", "E2 82 then a quote", file_of(b'{"\xe2\x82":{}}'))
case("utf8_lone_continuation", "InvalidHeader", "0x80 alone", file_of(b'{"\x80":{}}'))
case("bom", "InvalidHeader", "UTF-8 byte-order mark before the object",
     file_of(b"\xef\xbb\xbf" + OK.encode(), b"\0" * 8))
case("nul_padding", "InvalidHeaderDeserialization", "padded with NUL, not spaces",
     file_of(OK.encode() + b"\0" * 6, b"\0" * 8))
case("nul_hiding_garbage", "InvalidHeaderDeserialization", "a NUL, then more JSON",
     file_of(b'{}\0{"a":1}'))
case("not_json", "InvalidHeaderDeserialization", "plain text", file_of("hello, world"))
case("json_array", "InvalidHeaderDeserialization", "an array, not an object", file_of("[]"))
case("json_null", "InvalidHeaderDeserialization", "null", file_of("null"))
case("json_empty", "InvalidHeaderDeserialization", "zero-length header", file_of(""))
case("json_spaces_only", "InvalidHeaderDeserialization", "only spaces", file_of(" " * 8))
case("json_truncated", "InvalidHeaderDeserialization", "object cut short",
     file_of(OK[:-5], b"\0" * 8))
case("json_two_objects", "InvalidHeaderDeserialization", "two objects", file_of("{} {}"))
case("json_comment", "InvalidHeaderDeserialization", "a comment",
     file_of("{/* c */}"))
case("json_single_quotes", "InvalidHeaderDeserialization", "single quotes", file_of("{'a':1}"))
case("json_trailing_comma", "InvalidHeaderDeserialization", "trailing comma",
     file_of('{"w":%s,}' % js(F32_2), b"\0" * 8))
case("json_escaped_surrogate", "InvalidHeaderDeserialization", "\\ud800 alone in a name",
     file_of('{"\\ud800":%s}' % js(F32_2), b"\0" * 8))

# --- the JSON shape
case("entry_not_object", "InvalidHeaderDeserialization", "a tensor entry that is a number",
     file_of('{"w":1}'))
case("entry_array", "InvalidHeaderDeserialization", "a tensor entry that is an array",
     file_of('{"w":[1,2]}'))
for field in ("dtype", "shape", "data_offsets"):
    e = dict(F32_2)
    del e[field]
    case("missing_" + field, "InvalidHeaderDeserialization", "no " + field,
         file_of(tensors(w=e), b"\0" * 8))
case("dtype_unknown", "InvalidHeaderDeserialization", "dtype F128",
     file_of(tensors(w=entry("F128", [2], 0, 8)), b"\0" * 8))
case("dtype_lowercase", "InvalidHeaderDeserialization", "dtype f32",
     file_of(tensors(w=entry("f32", [2], 0, 8)), b"\0" * 8))
case("dtype_number", "InvalidHeaderDeserialization", "dtype 32",
     file_of(tensors(w=entry(32, [2], 0, 8)), b"\0" * 8))
case("shape_negative", "InvalidHeaderDeserialization", "shape [-2]",
     file_of(tensors(w=entry("F32", [-2], 0, 8)), b"\0" * 8))
case("shape_float", "InvalidHeaderDeserialization", "shape [2.0]",
     file_of('{"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', b"\0" * 8))
case("shape_2p64", "InvalidHeaderDeserialization", "a dimension of 2^64",
     file_of(tensors(w=entry("F32", [2**64], 0, 8)), b"\0" * 8))
case("shape_string", "InvalidHeaderDeserialization", 'shape "2"',
     file_of(tensors(w=entry("F32", "2", 0, 8)), b"\0" * 8))
case("shape_nested", "InvalidHeaderDeserialization", "shape [[2]]",
     file_of(tensors(w=entry("F32", [[2]], 0, 8)), b"\0" * 8))
case("offsets_three", "InvalidHeaderDeserialization", "three data_offsets",
     file_of('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}', b"\0" * 8))
case("offsets_one", "InvalidHeaderDeserialization", "one data_offset",
     file_of('{"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}}', b"\0" * 8))
case("offsets_negative", "InvalidHeaderDeserialization", "data_offsets [-8, 0]",
     file_of(tensors(w=entry("F32", [2], -8, 0)), b"\0" * 8))
case("offsets_2p64", "InvalidHeaderDeserialization", "an offset of 2^64",
     file_of(tensors(w=entry("F32", [2], 0, 2**64)), b"\0" * 8))
case("metadata_number", "InvalidHeaderDeserialization", "a metadata value that is a number",
     file_of('{"__metadata__":{"epoch":3},"w":%s}' % js(F32_2), b"\0" * 8))
case("metadata_nested", "InvalidHeaderDeserialization", "a metadata value that is an object",
     file_of('{"__metadata__":{"a":{"b":"c"}},"w":%s}' % js(F32_2), b"\0" * 8))
case("metadata_array", "InvalidHeaderDeserialization", "__metadata__ that is an array",
     file_of('{"__metadata__":["a"],"w":%s}' % js(F32_2), b"\0" * 8))
case("metadata_as_tensor", "InvalidHeaderDeserialization", "a tensor named __metadata__",
     file_of(js({"__metadata__": F32_2}), b"\0" * 8))
case("nesting_128", "InvalidHeaderDeserialization", "128 levels in an unknown field, one above the reference's",
     file_of('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":%s%s}}'
             % ("[" * 126, "]" * 126), b"\0" * 8))
case("rank_65", "LimitExceeded", "rank 65, above the limit of 64",
     file_of(tensors(w=entry("F32", [1] * 65, 0, 4)), b"\0" * 4))

# --- duplicates
case("duplicate_tensor", "DuplicateKey", "one name twice",
     file_of('{"w":%s,"w":%s}' % (js(F32_2), js(entry("F32", [2], 8, 16))), b"\0" * 16))
case("duplicate_metadata_key", "DuplicateKey", "one metadata key twice",
     file_of('{"__metadata__":{"a":"1","a":"2"}}'))
case("duplicate_metadata", "DuplicateKey", "__metadata__ twice",
     file_of('{"__metadata__":{},"__metadata__":null}'))
case("duplicate_field", "DuplicateKey", "dtype twice in one entry",
     file_of('{"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8))

# --- offsets
two = lambda a, b: tensors(a=entry("F32", [2], *a), b=entry("F32", [2], *b))
case("offsets_gap", "InvalidOffset", "4 unused bytes between tensors",
     file_of(two((0, 8), (12, 20)), b"\0" * 20))
case("offsets_overlap", "InvalidOffset", "two tensors share 4 bytes",
     file_of(two((0, 8), (4, 12)), b"\0" * 12))
case("offsets_alias", "InvalidOffset", "two names, one byte range",
     file_of(two((0, 8), (0, 8)), b"\0" * 8))
case("offsets_reversed", "InvalidOffset", "data_offsets [8, 0]",
     file_of(tensors(w=entry("F32", [2], 8, 0)), b"\0" * 8))
case("offsets_not_from_zero", "InvalidOffset", "the first tensor starts at 8",
     file_of(tensors(w=entry("F32", [2], 8, 16)), b"\0" * 16))
case("offsets_near_2p64", "InvalidOffset", "a tensor at 2^64-9 .. 2^64-1",
     file_of(tensors(w=entry("U8", [8], U64_MAX - 8, U64_MAX)), b"\0" * 8))
case("offsets_end_2p64", "TensorInvalidInfo", "data_offsets [0, 2^64-1] for 8 bytes",
     file_of(tensors(w=entry("U8", [8], 0, U64_MAX)), b"\0" * 8))

# --- sizes
case("overflow_shape", "ValidationOverflow", "shape [2^32, 2^32, 2]",
     file_of(tensors(w=entry("U8", [2**32, 2**32, 2], 0, 8)), b"\0" * 8))
case("overflow_bits", "ValidationOverflow", "2^61 F32 elements: bits overflow",
     file_of(tensors(w=entry("F32", [2**61], 0, 8)), b"\0" * 8))
case("overflow_shape_wraps_to_8", "ValidationOverflow", "a shape whose product wraps to 8",
     file_of(tensors(w=entry("U8", [2**63 + 1, 8], 0, 8)), b"\0" * 8))
case("overflow_u64_max", "ValidationOverflow", "shape [2^64-1] of U8 at [0, 2^64-1]",
     file_of(tensors(w=entry("U8", [U64_MAX], 0, U64_MAX)), b"\0" * 8))
case("claims_2p61_bytes", "MetadataIncompleteBuffer", "2^61-1 bytes claimed, none there",
     file_of(tensors(w=entry("BOOL", [2**61 - 1], 0, 2**61 - 1))))
case("misaligned_f4", "MisalignedSlice", "3 F4 values: 12 bits",
     file_of(tensors(w=entry("F4", [3], 0, 2)), b"\0" * 2))
case("misaligned_f6", "MisalignedSlice", "1 F6_E2M3 value: 6 bits",
     file_of(tensors(w=entry("F6_E2M3", [1], 0, 1)), b"\0"))
case("size_mismatch", "TensorInvalidInfo", "F32 [2] over 4 bytes",
     file_of(tensors(w=entry("F32", [2], 0, 4)), b"\0" * 4))
case("zero_elements_with_bytes", "TensorInvalidInfo", "shape [0] over 4 bytes",
     file_of(tensors(w=entry("F32", [0], 0, 4)), b"\0" * 4))
case("trailing_bytes", "MetadataIncompleteBuffer", "a byte after the last tensor",
     file_of(OK, b"\0" * 9))
case("truncated_data", "MetadataIncompleteBuffer", "the data cut short",
     file_of(OK, b"\0" * 7))
case("polyglot_zip", "MetadataIncompleteBuffer", "a ZIP archive appended",
     file_of(OK, b"\0" * 8 + b"PK\x05\x06" + b"\0" * 18))
case("no_tensors_with_data", "MetadataIncompleteBuffer", "{} followed by data",
     file_of("{}", b"\0" * 8))

# --- several rules at once: the first in the documented order wins
case("combo_length_and_utf8", "InvalidHeaderLength", "length past the end, invalid UTF-8",
     struct.pack("<Q", 50) + b'{"\xff":1}')
case("combo_bom_and_nul", "InvalidHeader", "BOM and NUL padding",
     file_of(b"\xef\xbb\xbf{}\0\0\0"))
case("combo_utf8_and_duplicate", "InvalidHeader", "invalid UTF-8 and a duplicate name",
     file_of(b'{"\xff":1,"a":1,"a":1}'))
case("combo_dtype_and_gap", "InvalidHeaderDeserialization", "unknown dtype and a gap",
     file_of(tensors(a=entry("F32", [2], 0, 8), b=entry("X", [2], 12, 20)), b"\0" * 20))
case("combo_duplicate_and_overlap", "DuplicateKey", "a duplicate name and an overlap",
     file_of('{"a":%s,"a":%s}' % (js(entry("F32", [2], 0, 8)), js(entry("F32", [2], 4, 12))),
             b"\0" * 12))
case("combo_overflow_and_trailing", "ValidationOverflow", "shape overflow and trailing bytes",
     file_of(tensors(w=entry("U8", [2**32, 2**32], 0, 8)), b"\0" * 100))
case("combo_misaligned_and_truncated", "MisalignedSlice", "12-bit tensor, data cut short",
     file_of(tensors(w=entry("F4", [3], 0, 2))))
case("combo_every_offset_rule", "InvalidOffset", "gap, overlap and reversal",
     file_of(tensors(a=entry("F32", [2], 4, 12), b=entry("F32", [2], 8, 0),
                     c=entry("F32", [2], 100, 108)), b"\0" * 16))


# --- hostile checkpoints (torch.save and TorchScript zip archives, made by hand)

CHECKPOINTS = []


def checkpoint(name, expected, why, content):
    CHECKPOINTS.append((name, expected, why, content))


def binunicode(s):
    b = s.encode() if isinstance(s, str) else s
    return b"X" + struct.pack("<I", len(b)) + b


def binint(v):
    """BININT, or LONG1 of 8 bytes for what does not fit 32 bits."""
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    return b"\x8a\x08" + struct.pack("<q", v)


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def storage_pid(dtype, key, numel):
    """('storage', torch.<dtype>Storage, key, 'cpu', numel) BINPERSID, as torch writes it."""
    return (b"(" + binunicode("storage") + glob("torch", dtype + "Storage") + binunicode(key) +
            binunicode("cpu") + binint(numel) + b"tQ")


def rebuild_tensor(dtype, key, numel, offset, size, stride, requires_grad=False):
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())."""
    return (glob("torch._utils", "_rebuild_tensor_v2") + b"(" + storage_pid(dtype, key, numel) + binint(offset) +
            b"(" + b"".join(binint(v) for v in size) + b"t(" + b"".join(binint(v) for v in stride) + b"t" +
            (b"\x88" if requires_grad else b"\x89") + glob("collections", "OrderedDict") + b")Rt" + b"R")


def torch_zip(folder, entries):
    """A zip as torch writes it: stored entries, fixed dates; (name, bytes, deflate)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data, deflate in entries:
            info = zipfile.ZipInfo(folder + "/" + name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            z.writestr(info, data)
    return out.getvalue()


def torch_save(pickle, storages=()):
    return torch_zip("archive", [("data.pkl", pickle, False)] +
                     [("data/" + key, data, False) for key, data in storages] + [("version", b"3\n", False)])


# A TorchScript module whose __setstate__ loops forever, as torch.jit.save
# writes it (torch 1.13): torch.jit.load compiles code/__torch__.py and runs
# __setstate__ with the state BUILD gives; a reader that does hangs.
LOOP_CODE = b"""class Loop(Module):
  __parameters__ = ["w", ]
  __buffers__ = []
  w : Tensor
  training : bool
  _is_full_backward_hook : Optional[bool]
  def forward(self: __torch__.Loop,
    x: Tensor) -> Tensor:
    w = self.w
    return torch.mul(x, w)
  def __getstate__(self: __torch__.Loop) -> Tuple[Tensor, bool]:
    w = self.w
    training = self.training
    return (w, training)
  def __setstate__(self: __torch__.Loop,
    state: Tuple[Tensor, bool]) -> NoneType:
    self.w = (state)[0]
    self.training = (state)[1]
    i = 0
    _0 = True
    while _0:
      i0 = torch.add(i, 1)
      _0, i = torch.ge(i0, 0), i0
    return None
"""
checkpoint("torchscript_setstate_loop", "accepted",
           "a TorchScript module whose __setstate__ never returns: read as data, never run",
           torch_zip("loop", [
               ("data/0", struct.pack("<3f", 1, 1, 1), False),
               ("data.pkl", b"\x80\x02" + glob("__torch__", "Loop") + b")\x81" +
                rebuild_tensor("Float", "0", 3, 0, [3], [1], requires_grad=True) + b"\x88\x86b.", False),
               ("code/__torch__.py", LOOP_CODE, True),
               ("constants.pkl", b"\x80\x02).", False),
               ("version", b"3\n", False)]))
# 3 * 768614336404564651 = 2^61 + 1 elements of 8 bytes: 2^64 + 8 bytes, which
# wrap to 8 in 64 bits; stride 0 keeps the view inside its one element.
checkpoint("view_bytes_past_2p64", "LimitExceeded",
           "a stride-0 view of one double, sized [3, 768614336404564651]: 2^64 + 8 bytes, 8 once wrapped",
           torch_save(b"\x80\x02" + rebuild_tensor("Double", "0", 1, 0, [3, 768614336404564651], [0, 0]) + b".",
                      [("0", b"\0" * 8)]))


def nested_entries(kernel, count):
    """`count` stored entries data/0 .. data/count-1, each one's data holding
    the next entry's local header and data: one stretch of the file backs all."""
    names = [f"archive/data/{i}".encode() for i in range(count)]
    tail = kernel
    for name in reversed(names):
        tail = (struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, 0, len(tail), len(tail),
                            len(name), 0) + name + tail)
    return names, tail


def overlapping_entries(kernel_bytes):
    count, kernel = 4, bytes(kernel_bytes)
    pickle = (b"\x80\x02](" + b"".join(rebuild_tensor("Byte", str(i), kernel_bytes, 0, [kernel_bytes], [1])
                                      for i in range(count)) + b"e.")
    body = io.BytesIO()
    local, central = [], []
    for name, data in [(b"archive/data.pkl", pickle), (b"archive/version", b"3\n")]:
        local.append((name, body.tell(), len(data)))
        body.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, 0, len(data), len(data),
                               len(name), 0) + name + data)
    names, nested = nested_entries(kernel, count)
    at, offset = body.tell(), 0
    body.write(nested)
    for name in names:
        size = len(nested) - offset - 30 - len(name)
        local.append((name, at + offset, size))
        offset += 30 + len(name)
    directory = b"".join(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0x21, 0, size, size,
                                     len(name), 0, 0, 0, 0, 0, where) + name for name, where, size in local)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(local), len(local), len(directory), body.tell(), 0)
    return body.getvalue() + directory + end


def mib(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def many_views(count, rank):
    """`count` views of rank `rank` of one byte, 16 pickle bytes each: the
    function, storage, size and stride tuples and hooks are memo references."""
    first = (glob("torch._utils", "_rebuild_tensor_v2") + b"q\x01(" + storage_pid("Byte", "0", 1) + b"q\x02" +
             binint(0) + b"(" + b"K\x01" * rank + b"tq\x03" + b"(" + b"K\x01" * rank + b"tq\x04\x89" +
             glob("collections", "OrderedDict") + b")Rq\x05tR")
    again = b"h\x01(h\x02K\x00h\x03h\x04\x89h\x05tR"
    return torch_save(b"\x80\x02]q\x00(" + first + again * (count - 1) + b"e.", [("0", b"\0")])


def amplifying(key_bytes, repeats, depth, storage_bytes, views, rank24_views):
    """The checkpoints that multiply a small file (name, code, why, bytes),
    at the scale of the corpus or, smaller, of fuzzing seeds."""
    key = binunicode("k" * key_bytes)
    expanded = 1 << 20 if storage_bytes >= 1 << 20 else 1 << 12
    return [
        ("repeated_key", "LimitExceeded",
         f"a dict whose {mib(key_bytes)} key is repeated {repeats:,} times through the memo",
         torch_save(b"\x80\x02}(" + key + b"q\x00N" + b"h\x00N" * (repeats - 1) + b"u.")),
        ("nested_key", "LimitExceeded",
         f"{depth} dicts nested under one {mib(key_bytes)} key: names of up to {depth} times its size",
         torch_save(b"\x80\x02}" + key + b"q\x00" + b"}h\x00" * (depth - 1) + b"N" + b"s" * depth + b".")),
        ("expand", "LimitExceeded",
         f"torch.zeros(1, dtype=torch.uint8).expand({expanded}, {expanded}): {expanded ** 2:,} bytes from a byte",
         torch_save(b"\x80\x02" + rebuild_tensor("Byte", "0", 1, 0, [expanded, expanded], [0, 0]) + b".",
                    [("0", b"\0")])),
        ("overlapping_views", "LimitExceeded",
         f"{views} views of one {mib(storage_bytes)} storage, each at another offset",
         torch_save(b"\x80\x02](" + b"".join(rebuild_tensor("Byte", "0", storage_bytes, i, [storage_bytes - views], [1])
                                             for i in range(views)) + b"e.",
                    [("0", bytes(storage_bytes))])),
        ("overlapping_entries", "InvalidCheckpoint",
         f"4 zip entries each holding the next: one {mib(storage_bytes // 16)} stretch backs 4 storages",
         overlapping_entries(storage_bytes // 16)),
        ("rank24_views", "LimitExceeded",
         f"{rank24_views:,} views of rank 24 of one byte, 16 pickle bytes each",
         many_views(rank24_views, 24)),
    ]


for name, code, why, content in amplifying(1 << 20, 300_000, 200, 1 << 20, 64, 100_000):
    checkpoint({"repeated_key": "repeated_key_1mib", "nested_key": "nested_key_1mib",
                "expand": "expand_2p40", "rank24_views": "rank24_views_100k"}.get(name, name), code, why, content)


def legacy_save(pickle, padding=0):
    """A legacy torch.save file: the magic number, protocol version and sys_info
    pickles, `pickle` (the object), an empty storage list, `padding` zeros."""
    sys_info = b"\x80\x02}" + binunicode("little_endian") + b"\x88s."
    return (b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19." + b"\x80\x02M\xe9\x03." + sys_info +
            pickle + b"\x80\x02]." + bytes(padding))


checkpoint("legacy_lists_400k", "LimitExceeded",
           "a legacy file: a pickle of 400,000 EMPTY_LIST dropped by POP_MARK, then 1 MiB of zeros that do not "
           "widen its memory budget",
           legacy_save(b"\x80\x02(" + b"]" * 400_000 + b"1N.", 1 << 20))


def tied_expand(names, rows, columns):
    """A dict of `names` entries that all refer, through the memo, to one
    stride-0 view of a byte: rows x columns bytes under every name."""
    view = rebuild_tensor("Byte", "0", 1, 0, [rows, columns], [0, 0])
    entries = b"".join(binunicode(f"w{i}") + (view + b"q\x00" if i == 0 else b"h\x00") for i in range(names))
    return torch_save(b"\x80\x02}(" + entries + b"u.", [("0", b"\0")])


checkpoint("tied_expand_20k", "accepted",
           "one 2 MiB stride-0 view of a byte under 20,000 names: compared once by diff, not 20,000 times",
           tied_expand(20_000, 1024, 2048))


def write_fuzz_seeds(out):
    """Smaller copies of the hostile checkpoints, within fuzz_checkpoint's -max_len."""
    os.makedirs(out, exist_ok=True)
    for name, _, _, content in amplifying(4 << 10, 4000, 16, 16 << 10, 16, 2000) + CHECKPOINTS[:1]:
        with open(os.path.join(out, "hostile-" + name + ".pt"), "wb") as f:
            f.write(content)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--fuzz-seeds":
        return write_fuzz_seeds(sys.argv[2])
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out, exist_ok=True)
    names = set()
    lines = ["# file\tcode\twhat it breaks (written by make_corpus.py)"]
    for name, code, why, content in CASES:
        assert name not in names, name
        names.add(name)
        with open(os.path.join(out, name + ".safetensors"), "wb") as f:
            f.write(content)
        lines.append(f"{name}.safetensors\t{code}\t{why}")
    with open(os.path.join(out, "expected.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    lines = ["# file\tcode or accepted\twhat it does (written by make_corpus.py)"]
    for name, expected, why, content in CHECKPOINTS:
        assert name not in names, name
        names.add(name)
        with open(os.path.join(out, name + ".pt"), "wb") as f:
            f.write(content)
        lines.append(f"{name}.pt\t{expected}\t{why}")
    with open(os.path.join(out, "checkpoints.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{len(CASES)} files and {len(CHECKPOINTS)} checkpoints in {out}")


if __name__ == "__main__":
    main()
