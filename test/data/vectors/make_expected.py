#!/usr/bin/env python3
"""Writes expected.json: what vectors_test.cpp must find in every file here.

A reader written from the format specification with the standard library only,
so the expectations do not come from the code under test (nor from numpy,
torch or the safetensors package). It first checks every file listed in
MANIFEST.tsv against its recorded sha256, and fails if any differs.

For each *.safetensors file (path relative to this folder, '/'-separated):
  {"metadata": {...} or null,
   "tensors": [{"name", "dtype", "shape", "data_offsets",
                "fnv1a64": 16 hex digits over the tensor's bytes,
                "head": first <=16 values, "tail": last <=16 values}, ...]}
with tensors in file order (by data_offsets; ties keep header order). Values
are numbers (BOOL as 0/1); NaN and infinities are the strings "nan", "inf",
"-inf". Files under malformed/ must fail to parse; they are recorded as
{"malformed": true, "error": NAME}, NAME being the ErrorCode the library must
report.

Usage: python3 make_expected.py
"""

import hashlib
import json
import math
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_HEADER_SIZE = 100_000_000
EDGE = 16  # values recorded at each end of a tensor

FNV_OFFSET_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


class FormatError(Exception):
    """A file breaks a format rule; `code` is the library's ErrorCode name."""

    def __init__(self, code, detail):
        super().__init__(f"{detail} [{code}]")
        self.code = code


def fnv1a64(data):
    h = FNV_OFFSET_BASIS
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def f8_e4m3fn(b):
    # Bias 7; no infinities; S.1111.111 is the only NaN.
    sign = -1.0 if b & 0x80 else 1.0
    exp, man = (b >> 3) & 0xF, b & 0x7
    if exp == 0xF and man == 0x7:
        return math.nan
    if exp == 0:
        return sign * man * 2.0 ** -9  # subnormal: man/8 * 2^(1-7)
    return sign * (1 + man / 8) * 2.0 ** (exp - 7)


def f8_e5m2(b):
    # Bias 15, IEEE-like: exponent all ones is inf (mantissa 0) or NaN.
    sign = -1.0 if b & 0x80 else 1.0
    exp, man = (b >> 2) & 0x1F, b & 0x3
    if exp == 0x1F:
        return sign * math.inf if man == 0 else math.nan
    if exp == 0:
        return sign * man * 2.0 ** -16  # subnormal: man/4 * 2^(1-15)
    return sign * (1 + man / 4) * 2.0 ** (exp - 15)


def bf16(v):
    # The upper half of an IEEE f32.
    return struct.unpack("<f", struct.pack("<I", v << 16))[0]


def bool8(b):
    if b > 1:
        raise ValueError(f"BOOL byte {b} is neither 0 nor 1")
    return b


# dtype -> (bytes per element, struct format of one element, decoder or None)
DTYPES = {
    "BOOL": (1, "B", bool8),
    "U8": (1, "B", None),
    "I8": (1, "b", None),
    "I16": (2, "h", None),
    "U16": (2, "H", None),
    "I32": (4, "i", None),
    "U32": (4, "I", None),
    "I64": (8, "q", None),
    "U64": (8, "Q", None),
    "F16": (2, "e", None),
    "BF16": (2, "H", bf16),
    "F32": (4, "f", None),
    "F64": (8, "d", None),
    "F8_E4M3": (1, "B", f8_e4m3fn),
    "F8_E5M2": (1, "B", f8_e5m2),
}


def to_json_number(x):
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
    return x


def decode(dtype, data):
    _, fmt, convert = DTYPES[dtype]
    values = [v for (v,) in struct.iter_unpack("<" + fmt, data)]
    if convert:
        values = [convert(v) for v in values]
    return [to_json_number(v) for v in values]


def reject_duplicates(pairs):
    # json.loads would silently keep the last of two equal keys.
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise FormatError("DuplicateKey", f"key {k!r} appears twice")
        seen.add(k)
    return dict(pairs)


def is_count(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def parse(blob):
    """Returns (metadata or None, tensors in file order, data buffer)."""
    if len(blob) < 8:
        raise FormatError("HeaderTooSmall", "file shorter than 8 bytes")
    (n,) = struct.unpack_from("<Q", blob)
    if n > MAX_HEADER_SIZE:
        raise FormatError("HeaderTooLarge", f"header length {n}")
    if 8 + n > len(blob):
        raise FormatError("InvalidHeaderLength",
                          f"header length {n} runs past the end of a {len(blob)}-byte file")
    try:
        text = blob[8:8 + n].decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError("InvalidHeader", str(e)) from None
    if text.startswith("\ufeff"):
        raise FormatError("InvalidHeader", "header starts with a byte order mark")
    try:
        header = json.loads(text, object_pairs_hook=reject_duplicates)
    except json.JSONDecodeError as e:
        raise FormatError("InvalidHeaderDeserialization", str(e)) from None
    if not isinstance(header, dict):
        raise FormatError("InvalidHeaderDeserialization", "header is not a JSON object")

    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise FormatError("InvalidHeaderDeserialization", "__metadata__ is not string to string")

    tensors = []
    for name, entry in header.items():
        ok = (isinstance(entry, dict) and entry.get("dtype") in DTYPES
              and isinstance(entry.get("shape"), list) and all(map(is_count, entry["shape"]))
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(map(is_count, entry["data_offsets"])))
        if not ok:
            raise FormatError("InvalidHeaderDeserialization", f"bad or unsupported entry {name!r}")
        tensors.append({"name": name, "dtype": entry["dtype"], "shape": entry["shape"],
                        "data_offsets": entry["data_offsets"]})

    # Python's sort is stable: ties keep header order, as the library's does.
    tensors.sort(key=lambda t: tuple(t["data_offsets"]))
    data = blob[8 + n:]
    start = 0
    for t in tensors:
        begin, end = t["data_offsets"]
        if begin != start or end < begin:
            raise FormatError("InvalidOffset", f"tensor {t['name']!r}")
        if end - begin != math.prod(t["shape"]) * DTYPES[t["dtype"]][0]:
            raise FormatError("TensorInvalidInfo", f"tensor {t['name']!r}")
        start = end
    if start != len(data):
        raise FormatError("MetadataIncompleteBuffer",
                          f"tensors cover {start} of {len(data)} data bytes")
    return metadata, tensors, data


def describe(path):
    metadata, tensors, data = parse(path.read_bytes())
    for t in tensors:
        raw = data[t["data_offsets"][0]:t["data_offsets"][1]]
        values = decode(t["dtype"], raw)
        t["fnv1a64"] = fnv1a64(raw)
        t["head"] = values[:EDGE]
        t["tail"] = values[-EDGE:] if values else []
    return {"metadata": metadata, "tensors": tensors}


def render(expected):
    """JSON with one line per tensor, so that diffs show which tensor changed."""
    def dump(value):
        return json.dumps(value, ensure_ascii=False)

    files = []
    for rel, entry in expected.items():
        if "tensors" not in entry:
            files.append(f" {dump(rel)}: {dump(entry)}")
            continue
        tensors = ",\n".join(f"   {dump(t)}" for t in entry["tensors"])
        files.append(f" {dump(rel)}: {{\n  \"metadata\": {dump(entry['metadata'])},\n"
                     f"  \"tensors\": [\n{tensors}\n  ]\n }}")
    return "{\n" + ",\n".join(files) + "\n}\n"


def check_manifest():
    rows = (HERE / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()
    columns = rows[0].split("\t")
    name_col, sha_col = columns.index("local_name"), columns.index("sha256")
    listed = set()
    for row in rows[1:]:
        fields = row.split("\t")
        name, sha = fields[name_col], fields[sha_col]
        listed.add(name)
        actual = hashlib.sha256((HERE / name).read_bytes()).hexdigest()
        if actual != sha:
            sys.exit(f"{name}: sha256 {actual}, MANIFEST.tsv says {sha}")
    return listed


def main():
    listed = check_manifest()
    expected = {}
    for path in sorted(HERE.rglob("*.safetensors")):
        rel = path.relative_to(HERE).as_posix()
        if rel not in listed:
            sys.exit(f"{rel} is not listed in MANIFEST.tsv")
        malformed = rel.startswith("malformed/")
        try:
            expected[rel] = describe(path)
        except FormatError as e:
            if not malformed:
                sys.exit(f"{rel}: {e}")
            expected[rel] = {"malformed": True, "error": e.code}
            continue
        if malformed:
            sys.exit(f"{rel} is under malformed/ but parses")
    out = HERE / "expected.json"
    out.write_text(render(expected), encoding="utf-8")
    print(f"wrote {out.name}: {len(expected)} files, "
          f"{sum(len(e.get('tensors', [])) for e in expected.values())} tensors")


if __name__ == "__main__":
    main()
