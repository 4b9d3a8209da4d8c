#!/usr/bin/env python3
"""Writes safetensors files with the reference implementation (the Python
`safetensors` package) for the interop checks, and records what each file must
hold.

    python3 reference_write.py OUT_DIR

The expectations come from the bytes the tensors were built from, never from
the files, so a reader is checked against values it cannot have influenced:

  OUT_DIR/expected.bin   every tensor's raw little-endian bytes, back to back
  OUT_DIR/manifest.json  {"files": [{"file", "framework", "metadata" (object or null),
                                     "tensors": [{"name", "dtype", "shape", "offset", "nbytes"}]}],
                          "slices": [{"file", "tensor", "index", "result_file", "result"}]}

An index is a list of items: an integer, {"slice": [start, stop, step]} (null
for omitted parts), "..." (Ellipsis) or null (None, a new axis). The
reference's get_slice results are saved as OUT_DIR/*.slices.safetensors (they
are listed under "files" too) and checked against numpy indexing of the
original bytes before they are recorded. Everything is seeded: two runs write
the same bytes.
"""

import hashlib
import importlib.metadata
import json
import math
import os
import subprocess
import sys

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import safe_open

# name -> (torch dtype or None, numpy dtype or None, bytes per element)
DTYPES = {
    "BOOL": (torch.bool, np.bool_, 1),
    "U8": (torch.uint8, np.uint8, 1),
    "I8": (torch.int8, np.int8, 1),
    "I16": (torch.int16, np.int16, 2),
    "U16": (torch.uint16, np.uint16, 2),
    "I32": (torch.int32, np.int32, 4),
    "U32": (torch.uint32, np.uint32, 4),
    "I64": (torch.int64, np.int64, 8),
    "U64": (torch.uint64, np.uint64, 8),
    "F16": (torch.float16, np.float16, 2),
    "BF16": (torch.bfloat16, None, 2),
    "F32": (torch.float32, np.float32, 4),
    "F64": (torch.float64, np.float64, 8),
    "F8_E4M3": (torch.float8_e4m3fn, None, 1),
    "F8_E5M2": (torch.float8_e5m2, None, 1),
    "C64": (torch.complex64, np.complex64, 8),
}

# Bit patterns planted at the start of float tensors: infinities, -0.0, quiet
# and signalling NaNs with payloads, negative NaN, the smallest subnormal.
SPECIALS = {
    "F16": [0x7C00, 0xFC00, 0x8000, 0x7E01, 0x7C01, 0xFE00, 0x0001],
    "BF16": [0x7F80, 0xFF80, 0x8000, 0x7FC1, 0x7F81, 0xFFC0, 0x0001],
    "F32": [0x7F800000, 0xFF800000, 0x80000000, 0x7FC12345, 0x7F800001, 0xFFC00000, 0x00000001],
    "F64": [0x7FF0 << 48, 0xFFF0 << 48, 1 << 63, 0x7FF8000000000123, 0x7FF0000000000001,
            0xFFF8 << 48, 1],
    "F8_E4M3": [0x7F, 0xFF, 0x80, 0x7E, 0x01],  # e4m3fn: no infinities, 0x7F is NaN
    "F8_E5M2": [0x7C, 0xFC, 0x80, 0x7D, 0x7E, 0xFF, 0x01],
    "C64": [0x7F800000, 0x80000000, 0x7FC12345, 0xFF800000],  # per float32 component
}


def can_save(name, framework):
    """Whether the installed reference writes this dtype from this framework."""
    torch_dtype, np_dtype, _ = DTYPES[name]
    try:
        if framework == "pt":
            safetensors.torch.save({"x": torch.zeros(1, dtype=torch_dtype)})
        else:
            if np_dtype is None:
                return False
            safetensors.numpy.save({"x": np.zeros(1, dtype=np_dtype)})
        return True
    except Exception:
        return False


def random_bytes(rng, name, shape):
    """Raw little-endian bytes for a tensor: random bits, specials first."""
    _, _, size = DTYPES[name]
    n = math.prod(shape)
    if name == "BOOL":  # torch bools must be 0 or 1
        return rng.integers(0, 2, n, dtype=np.uint8).tobytes()
    data = bytearray(rng.bytes(n * size))
    specials = SPECIALS.get(name, [])
    width = 4 if name == "C64" else size
    for i, bits in enumerate(specials[: len(data) // width]):
        data[i * width:(i + 1) * width] = bits.to_bytes(width, "little")
    return bytes(data)


def as_torch(raw, name, shape):
    torch_dtype = DTYPES[name][0]
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    return flat.view(torch_dtype).reshape(shape)


def as_numpy(raw, name, shape):
    return np.frombuffer(raw, dtype=np.dtype(DTYPES[name][1]).newbyteorder("<")).reshape(shape).copy()


def random_shape(rng, rank, max_numel=2048):
    if rank == 0:
        return []
    side = max(1, int(max_numel ** (1.0 / rank)))
    return [int(d) for d in rng.integers(1, side + 1, rank)]


def tensor_raw(t):
    """Raw bytes of a torch tensor or numpy array, as stored in a file."""
    if isinstance(t, np.ndarray):
        return np.ascontiguousarray(t).tobytes()
    # Through numpy, which takes any strides, as a same-sized integer type
    # (numpy has no bfloat16, float8 or, in torch, uint16/32/64 conversion).
    same_size = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return np.ascontiguousarray(t.view(same_size).numpy()).tobytes()


class Writer:
    def __init__(self, out):
        self.out = out
        self.files = []
        self.slices = []
        self.expected = open(os.path.join(out, "expected.bin"), "wb")
        self.offset = 0
        self.refused = {}  # reason -> count of indices the reference refused

    def record(self, raw):
        self.expected.write(raw)
        self.offset += len(raw)
        return self.offset - len(raw), len(raw)

    def write(self, file, framework, entries, metadata):
        """entries: [(name, dtype, shape, raw bytes)]; returns the path."""
        path = os.path.join(self.out, file)
        if framework == "pt":
            tensors = {n: as_torch(raw, d, s) for n, d, s, raw in entries}
            safetensors.torch.save_file(tensors, path, metadata=metadata)
        else:
            tensors = {n: as_numpy(raw, d, s) for n, d, s, raw in entries}
            safetensors.numpy.save_file(tensors, path, metadata=metadata)
        record = {"file": file, "framework": framework, "metadata": metadata, "tensors": []}
        for name, dtype, shape, raw in entries:
            offset, nbytes = self.record(raw)
            record["tensors"].append({"name": name, "dtype": dtype, "shape": shape,
                                      "offset": offset, "nbytes": nbytes})
        self.files.append(record)
        return path

    def add_slices(self, rng, file, framework, entries, per_tensor=3):
        """Random get_slice expressions over the file's tensors, answered by the reference."""
        results = []
        # Always through torch: the reference's numpy get_slice (0.5.2) ignores
        # slice steps and returns the unstepped range.
        with safe_open(os.path.join(self.out, file), framework="pt") as f:
            for name, dtype, shape, raw in entries:
                # Independent answer: numpy indexing over the bytes as [..., itemsize].
                size = DTYPES[dtype][2]
                grid = np.frombuffer(raw, dtype=np.uint8).reshape(list(shape) + [size])
                for _ in range(per_tensor):
                    index = random_index(rng, shape)
                    key = to_python(index)
                    try:
                        want = grid[key + (slice(None),) if Ellipsis in key else key]
                        got = f.get_slice(name)[key]
                    except Exception as e:  # noqa: BLE001 - any refusal is recorded, not fatal
                        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"
                        self.refused[reason] = self.refused.get(reason, 0) + 1
                        continue
                    got_raw = tensor_raw(got)
                    if list(got.shape) != list(want.shape[:-1]) or got_raw != want.tobytes():
                        raise SystemExit(f"reference get_slice disagrees with numpy: {file} {name!r} {index}")
                    result = str(len(results))
                    results.append((result, dtype, list(got.shape), got_raw))
                    self.slices.append({"file": file, "tensor": name, "index": index,
                                        "result_file": slices_file(file), "result": result})
        self.write(slices_file(file), framework, results, None)

    def finish(self):
        self.expected.close()
        manifest = {"reference": reference_versions(), "files": self.files, "slices": self.slices}
        with open(os.path.join(self.out, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)


def slices_file(file):
    return file.replace(".safetensors", ".slices.safetensors")


def random_index(rng, shape):
    """Integers (some negative), slices (bounds past either end, steps 1-3),
    at most one Ellipsis and the odd None, leading and/or trailing dims."""
    rank = len(shape)
    ellipsis = rank > 0 and rng.random() < 0.3
    lead = int(rng.integers(0, rank + 1))
    trail = int(rng.integers(0, rank - lead + 1)) if ellipsis else 0
    dims = list(range(lead)) + list(range(rank - trail, rank))
    items = []
    for d in dims:
        n = shape[d]
        if n > 0 and rng.random() < 0.3:
            items.append(int(rng.integers(-n, n)))
        else:
            bound = lambda: None if rng.random() < 0.25 else int(rng.integers(-n - 2, n + 3))
            step = None if rng.random() < 0.4 else int(rng.integers(1, 4))
            items.append({"slice": [bound(), bound(), step]})
    if ellipsis:
        items.insert(lead, "...")
    if rng.random() < 0.15:
        items.insert(int(rng.integers(0, len(items) + 1)), None)
    return items


def to_python(index):
    def item(x):
        if x is None:
            return None
        if x == "...":
            return Ellipsis
        if isinstance(x, dict):
            return slice(*x["slice"])
        return x
    return tuple(item(x) for x in index)


def reference_versions():
    # Debian's python3-safetensors 0.5.2 calls itself 0.4.5 in its Python
    # metadata: name the Debian package's version too where there is one.
    package = importlib.metadata.version("safetensors")
    try:
        debian = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-safetensors"],
                                capture_output=True, text=True, check=True).stdout
        package += f" (Debian package {debian})"
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"safetensors": package, "torch": torch.__version__, "numpy": np.__version__}


WEIRD_NAMES = [
    "ünïcødé.权重",
    "emoji.😀🚀.weight",
    'quote"d',
    "back\\slash",
    "control\x01\x08\x0c\x1f\x7f",
    "new\nline\ttab\rreturn",
    "",
    "space name",
    "line\u2028separator\u2029",
    "slash/dot.name",
    "__metadata",
    "x" * 300,
]


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: reference_write.py OUT_DIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    w = Writer(out)
    rng = np.random.default_rng(20250520)

    # Which framework writes each dtype: torch where the reference can, else numpy.
    framework = {}
    for name in DTYPES:
        if can_save(name, "pt"):
            framework[name] = "pt"
        elif can_save(name, "np"):
            framework[name] = "np"
    unsupported = [name for name in DTYPES if name not in framework]

    # One file per dtype: a scalar, zero-size tensors, ranks 1 to 8.
    for i, (dtype, fw) in enumerate(framework.items()):
        shapes = {"scalar": [], "empty": [0], "empty_middle": [2, 0, 3], "odd": [257]}
        shapes.update({f"rank{r}": random_shape(rng, r) for r in range(1, 9)})
        entries = [(n, dtype, s, random_bytes(rng, dtype, s)) for n, s in shapes.items()]
        file = f"dtype_{dtype}.safetensors"
        w.write(file, fw, entries, {"dtype": dtype} if i % 2 == 0 else None)
        w.add_slices(rng, file, fw, entries)

    # Every dtype a framework writes, in one file: checks the writer's order.
    for fw in ("pt", "np"):
        dtypes = [d for d in DTYPES if can_save(d, fw)]
        entries = []
        for dtype in dtypes:
            for k in range(2):
                shape = random_shape(rng, int(rng.integers(0, 4)), 64)
                entries.append((f"{dtype.lower()}.{k}", dtype, shape, random_bytes(rng, dtype, shape)))
        # Large enough that positional reads of slices take the span path.
        big = [512, 600]
        entries.append(("big", "F32", big, random_bytes(rng, "F32", big)))
        w.write(f"mixed_{fw}.safetensors", fw, entries, {"format": fw})
        w.write(f"mixed_{fw}_nometa.safetensors", fw, entries, None)
        w.add_slices(rng, f"mixed_{fw}.safetensors", fw, entries)

    w.write("empty.safetensors", "pt", [], None)
    w.write("empty_meta.safetensors", "pt", [], {"format": "pt"})

    # Many small tensors, in random dtypes.
    pt_dtypes = [d for d, fw in framework.items() if fw == "pt"]
    entries = []
    for i in range(1000):
        dtype = pt_dtypes[int(rng.integers(0, len(pt_dtypes)))]
        shape = [int(d) for d in rng.integers(0, 5, int(rng.integers(0, 4)))]
        entries.append((f"layers.{i}.weight", dtype, shape, random_bytes(rng, dtype, shape)))
    w.write("many.safetensors", "pt", entries, {"format": "pt"})
    sample = [entries[int(i)] for i in rng.choice(len(entries), 50, replace=False)]
    w.add_slices(rng, "many.safetensors", "pt", sample, per_tensor=2)

    # Names the JSON writer must escape (or must not), with metadata to match.
    entries = []
    for i, name in enumerate(WEIRD_NAMES):
        dtype = pt_dtypes[i % len(pt_dtypes)]
        shape = random_shape(rng, 2, 16)
        entries.append((name, dtype, shape, random_bytes(rng, dtype, shape)))
    w.write("names.safetensors", "pt", entries, {'ключ "q" \\ \n\x01': "значение 🎉\u2028"})
    w.add_slices(rng, "names.safetensors", "pt", entries, per_tensor=1)

    w.finish()
    digest = hashlib.sha256(open(os.path.join(out, "expected.bin"), "rb").read()).hexdigest()[:16]
    versions = reference_versions()
    print(f"reference_write: safetensors {versions['safetensors']}, torch {versions['torch']}: "
          f"{len(w.files)} files, {len(w.slices)} slices "
          f"({sum(w.refused.values())} refused by the reference), expected.bin {digest}; "
          f"dtypes via torch: {' '.join(d for d, f in framework.items() if f == 'pt')}; "
          f"via numpy: {' '.join(d for d, f in framework.items() if f == 'np') or '-'}; "
          f"not writable: {' '.join(unsupported) or '-'}")
    for reason, count in sorted(w.refused.items()):
        print(f"reference_write: get_slice refused {count}x: {reason}")


if __name__ == "__main__":
    main()
