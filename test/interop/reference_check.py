#!/usr/bin/env python3
"""The reference implementation's side of the interop checks: files our library
re-saved (test/interop/interop_test.cpp) must be byte-identical to the
reference's, and the reference must load them with the expected values and
metadata. With --cli, the command-line tool must verify every reference file,
describe it in `inspect --json` as its header does, and `convert` it back to the
same bytes.

    python3 reference_check.py DIR [--ours DIR/ours] [--cli PATH]

DIR is what reference_write.py wrote. Prints one line per failure and a
closing `reference_check: N passed, M failed`; exits 1 on any failure.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open


def tensor_raw(t):
    same_size = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return np.ascontiguousarray(t.view(same_size).numpy()).tobytes()


def read_header(path):
    """The header as Python's own JSON parser reads it: an independent view."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n).decode("utf-8"))


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, what, problem):
        """problem: None when the check passed, else what went wrong."""
        if problem is None:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what}: {problem}")

    def run(self, what, fn):
        try:
            self.check(what, fn())
        except Exception as e:  # noqa: BLE001 - a crash is one failed check
            self.check(what, f"{type(e).__name__}: {e}")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def same_bytes(ours, reference):
    a = read(ours)
    b = read(reference)
    if a == b:
        return None
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{len(a)} bytes vs the reference's {len(b)}, first difference at byte {at}"


def reference_loads(path, entry, expected):
    """The reference reads `path` with the manifest's metadata, dtypes, shapes and bytes."""
    with safe_open(path, framework="pt") as f:
        if f.metadata() != entry["metadata"]:
            return f"metadata {f.metadata()!r}, expected {entry['metadata']!r}"
        names = sorted(t["name"] for t in entry["tensors"])
        if sorted(f.keys()) != names:
            return f"names {sorted(f.keys())!r}, expected {names!r}"
        for t in entry["tensors"]:
            s = f.get_slice(t["name"])
            if s.get_dtype() != t["dtype"] or list(s.get_shape()) != t["shape"]:
                return f"{t['name']!r}: {s.get_dtype()} {s.get_shape()}, expected {t['dtype']} {t['shape']}"
            want = expected[t["offset"]:t["offset"] + t["nbytes"]]
            if tensor_raw(f.get_tensor(t["name"])) != want:
                return f"{t['name']!r}: values differ"
    return None


def cli_verify(cli, path):
    r = subprocess.run([cli, "verify", path], capture_output=True, text=True)
    return None if r.returncode == 0 else f"exit {r.returncode}: {(r.stdout + r.stderr).strip()}"


def cli_inspect(cli, path):
    r = subprocess.run([cli, "inspect", "--json", path], capture_output=True)
    if r.returncode != 0:
        return f"exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}"
    got = json.loads(r.stdout)
    header = read_header(path)
    metadata = header.pop("__metadata__", None)
    if got["metadata"] != metadata:
        return f"metadata {got['metadata']!r}, header has {metadata!r}"
    listed = {t["name"]: {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": t["data_offsets"]}
              for t in got["tensors"]}
    if listed != header:
        return "tensors differ from the header"
    offsets = [t["data_offsets"][0] for t in got["tensors"]]
    if offsets != sorted(offsets):
        return "tensors not listed in file order"
    return None


def cli_convert(cli, path, scratch):
    out = os.path.join(scratch, "converted.safetensors")
    r = subprocess.run([cli, "convert", path, out], capture_output=True, text=True)
    if r.returncode != 0:
        return f"exit {r.returncode}: {(r.stdout + r.stderr).strip()}"
    return same_bytes(out, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir")
    parser.add_argument("--ours", help="folder of our re-saved files (default DIR/ours)")
    parser.add_argument("--cli", help="the safetensors-torch executable")
    args = parser.parse_args()
    ours_dir = args.ours or os.path.join(args.dir, "ours")

    manifest = json.loads(read(os.path.join(args.dir, "manifest.json")))
    expected = read(os.path.join(args.dir, "expected.bin"))
    checks = Checks()
    with tempfile.TemporaryDirectory() as scratch:
        for entry in manifest["files"]:
            file = entry["file"]
            reference = os.path.join(args.dir, file)
            ours = os.path.join(ours_dir, file)
            if not os.path.exists(ours):
                checks.check(f"{file}: re-saved", "our library wrote no such file")
                continue
            checks.run(f"{file}: same bytes as the reference", lambda: same_bytes(ours, reference))
            checks.run(f"{file}: the reference loads ours", lambda: reference_loads(ours, entry, expected))
            if args.cli:
                checks.run(f"{file}: cli verify", lambda: cli_verify(args.cli, reference))
                checks.run(f"{file}: cli inspect --json", lambda: cli_inspect(args.cli, reference))
                checks.run(f"{file}: cli convert", lambda: cli_convert(args.cli, reference, scratch))
    print(f"reference_check: {checks.passed} passed, {checks.failed} failed")
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
