"""Times the Python reference implementation on the benchmark workloads and
sets our figures (from `bench --file`, built against the same LibTorch) beside
them. Runs in the Debian 13 root (tools/bench-reference.sh).

    python3 bench/reference_bench.py BENCH_BINARY WORK_DIR [REPS] [--cold]

With --cold: GPT-2 F32 loads, each in a fresh process with the file's pages
dropped just before (posix_fadvise DONTNEED), rounds interleaving one
`bench --cold --reps 1` (all our rows) with the reference's load_file + clone;
medians.
"""

import ctypes
import os
import statistics
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file, save_file


def gpt2(dtype):
    d, vocab, positions = 768, 50257, 1024
    t = {"wte.weight": torch.randn(vocab, d), "wpe.weight": torch.randn(positions, d)}
    for l in range(12):
        p = f"h.{l}."
        for name, shape in [("ln_1.weight", [d]), ("ln_1.bias", [d]),
                            ("attn.c_attn.weight", [d, 3 * d]), ("attn.c_attn.bias", [3 * d]),
                            ("attn.c_proj.weight", [d, d]), ("attn.c_proj.bias", [d]),
                            ("ln_2.weight", [d]), ("ln_2.bias", [d]),
                            ("mlp.c_fc.weight", [d, 4 * d]), ("mlp.c_fc.bias", [4 * d]),
                            ("mlp.c_proj.weight", [4 * d, d]), ("mlp.c_proj.bias", [d])]:
            t[p + name] = torch.randn(*shape)
    t["ln_f.weight"], t["ln_f.bias"] = torch.randn(d), torch.randn(d)
    return {k: v.to(dtype) for k, v in t.items()}


def many(count, shape):
    return {f"base_model.model.layers.{i}.lora_A.weight": torch.randn(*shape) for i in range(count)}


try:
    # As in our bench: free memory goes back to the kernel before each
    # repetition, so that copies get fresh pages like a load at startup.
    malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    malloc_trim = lambda _: None


def median_ms(reps, f):
    f()  # warm-up
    times = []
    for _ in range(reps):
        malloc_trim(0)
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def ours(bench, path, workdir, reps):
    out = subprocess.run([bench, "--file", path, "--dir", workdir, "--reps", str(reps)],
                         check=True, capture_output=True, text=True).stdout
    return {parts[1]: float(parts[2]) for parts in (l.split() for l in out.splitlines())
            if len(parts) == 3 and parts[0] == "ours"}


FIRST_COPY = """
import sys, time
from safetensors.torch import load_file
start = time.perf_counter()
tensors = {k: v.clone() for k, v in load_file(sys.argv[1]).items()}
print((time.perf_counter() - start) * 1e3)
"""


def first_copy_ms(path):
    """load_file + clone as the first load of a fresh process (median of 3 processes)."""
    return statistics.median(
        float(subprocess.run([sys.executable, "-c", FIRST_COPY, path], check=True,
                             capture_output=True, text=True).stdout) for _ in range(3))


def drop_pages(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold(bench, workdir, reps):
    """Cold loads of GPT-2 F32: ours (every row of bench --cold) and the reference's, interleaved."""
    path = os.path.join(workdir, "gpt2-f32-cold.safetensors")
    save_file(gpt2(torch.float32), path)
    times = {}
    for _ in range(reps):
        out = subprocess.run([bench, "--cold", "--file", path, "--dir", workdir, "--reps", "1"],
                             check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.rsplit(None, 3)
            if len(parts) == 4 and parts[0] != "load":
                try:
                    times.setdefault("ours: " + parts[0].strip(), []).append(float(parts[1]))
                except ValueError:
                    pass
        drop_pages(path)
        ms = float(subprocess.run([sys.executable, "-c", FIRST_COPY, path], check=True,
                                  capture_output=True, text=True).stdout)
        times.setdefault("reference: load_file + clone", []).append(ms)
    os.remove(path)
    print(f"torch {torch.__version__}, GPT-2 F32 (498 MB), cold: fresh process, pages dropped; median of {reps}")
    print(f"{'load':40} {'median ms':>10} {'min ms':>10} {'max ms':>10}")
    for name, t in times.items():
        print(f"{name:40} {statistics.median(t):10.1f} {min(t):10.1f} {max(t):10.1f}")


def main():
    args = [a for a in sys.argv[1:] if a != "--cold"]
    bench, workdir = args[0], args[1]
    reps = int(args[2]) if len(args) > 2 else 5
    os.makedirs(workdir, exist_ok=True)
    torch.manual_seed(0)
    if "--cold" in sys.argv:
        return cold(bench, workdir, reps)
    print(f"torch {torch.__version__}, median of {reps}; ratio = reference time / our time")
    print(f"{'workload':12} {'operation':34} {'reference ms':>12} {'ours ms':>9} {'ratio':>8}")
    for name, make in [("gpt2-f32", lambda: gpt2(torch.float32)),
                       ("gpt2-bf16", lambda: gpt2(torch.bfloat16)),
                       ("lora-1000", lambda: many(1000, (32, 32))),
                       ("header-100k", lambda: many(100000, (2,)))]:
        tensors = make()
        path = os.path.join(workdir, name + ".safetensors")
        pt = os.path.join(workdir, name + ".pt")
        save_file(tensors, path)
        torch.save(tensors, pt)
        mine = ours(bench, path, workdir, reps)
        rows = [
            ("load_file", "safetensors.torch.load_file", median_ms(reps, lambda: load_file(path))),
            ("load_file", "torch.load", median_ms(reps, lambda: torch.load(pt, weights_only=True))),
            ("load_file", "torch.load(mmap=True)",
             median_ms(reps, lambda: torch.load(pt, mmap=True, weights_only=True))),
            ("load_file_copy", "load_file + clone (owned memory)",
             median_ms(reps, lambda: {k: v.clone() for k, v in load_file(path).items()})),
            ("load_file_copy_first", "the same, first in a process", first_copy_ms(path)),
        ]
        # The reference does not fsync: compare it with our save without fsync
        # (like for like), and show ours with fsync (our default) beside it.
        ref_save = median_ms(reps, lambda: save_file(tensors, os.path.join(workdir, "ref-resave.safetensors")))
        rows.append(("save_file_nofsync", "safetensors.torch.save_file", ref_save))
        rows.append(("save_file", "save_file vs ours with fsync", ref_save))
        for our_op, what, ref_ms in rows:
            print(f"{name:12} {what:34} {ref_ms:12.3f} {mine[our_op]:9.3f} {ref_ms / mine[our_op]:7.2f}x"
                  f"  (ours: {our_op})")
        for f in (path, pt, os.path.join(workdir, "ref-resave.safetensors")):
            if os.path.exists(f):
                os.remove(f)
        del tensors


if __name__ == "__main__":
    main()
