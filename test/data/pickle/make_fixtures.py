#!/usr/bin/python3
"""Writes torch.save checkpoints and, beside each, the tensors Python's
torch.load returns for it, so the C++ reader can be checked value by value.

    /usr/bin/python3 make_fixtures.py OUTDIR

For every NAME.pt it writes NAME.expected.safetensors (the flattened tensors,
dotted names, written by the small stdlib writer below so that no safetensors
package is needed) and NAME.expected.json (the non-tensor entries and aliases).
It also writes hostile_reduce.pt, whose unpickling would run a shell command
that creates OUTDIR/hostile_reduce_ran: the C++ reader must refuse it.

TorchScript archives (torch.jit.save of a scripted and of a traced module)
come with NAME.expected.safetensors holding the module's state_dict, and
hostile_setstate.pt is a scripted module whose __setstate__ never returns:
torch.jit.load hangs on it, the C++ reader must read it without running it.
Run with Debian's python3-torch (1.13); the committed copies were made so.
"""
import collections
import json
import os
import struct
import sys
from typing import Tuple

import torch

DTYPES = {  # torch dtype -> safetensors name
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
    torch.int32: "I32", torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float32: "F32", torch.float64: "F64", torch.complex64: "C64",
}


def write_safetensors(path, tensors):
    """A minimal safetensors writer: names in order, data back to back."""
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def flatten(value, prefix, tensors, others):
    """Dotted names, as the C++ reader makes them; a container without tensors
    is one non-tensor entry."""
    if isinstance(value, torch.Tensor):
        tensors[prefix or "tensor"] = value
        return
    if isinstance(value, dict):
        children = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        children = [(str(i), v) for i, v in enumerate(value)]
    else:
        others.append(prefix)
        return
    tensors_before, others_before = len(tensors), len(others)
    for k, v in children:
        flatten(v, f"{prefix}.{k}" if prefix else k, tensors, others)
    if len(tensors) == tensors_before and prefix:
        del others[others_before:]
        others.append(prefix)


def save(outdir, name, obj, **kwargs):
    path = os.path.join(outdir, name + ".pt")
    torch.save(obj, path, **kwargs)
    # Not weights_only: torch 2.6 made it the default, and it refuses some of
    # the pickles written here on purpose (this script only reads its own files).
    loaded = torch.load(path, weights_only=False)
    tensors, others = collections.OrderedDict(), []
    flatten(loaded, "", tensors, others)
    write_safetensors(os.path.join(outdir, name + ".expected.safetensors"), tensors)
    with open(os.path.join(outdir, name + ".expected.json"), "w") as f:
        json.dump({"non_tensors": others}, f)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.bn = torch.nn.BatchNorm1d(3)
        self.emb = torch.nn.Embedding(5, 2)


class Scripted(torch.nn.Module):
    """Submodules, a buffer, a container and non-tensor attributes."""

    def __init__(self):
        super().__init__()
        self.body = Net()
        self.seq = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
        self.register_buffer("scale", torch.arange(3, dtype=torch.float64))
        self.sizes = [1, 2, 3]
        self.names = {"a": 1}

    def forward(self, x, i):
        return self.seq(self.body.bn(self.body.fc(x)) * self.scale.float()) + self.body.emb(i).sum()


class SetstateLoops(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]):
        self.w = state[0]
        self.training = state[1]
        i = 0
        while i >= 0:
            i += 1


def save_torchscript(outdir, name, module):
    module.eval()
    torch.jit.save(module, os.path.join(outdir, name + ".pt"))
    write_safetensors(os.path.join(outdir, name + ".expected.safetensors"), module.state_dict())


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    net = Net()
    save(outdir, "state_dict", net.state_dict())
    save(outdir, "plain_dict", {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                                "b": torch.tensor(7, dtype=torch.int64)})
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    save(outdir, "training", {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                              "epoch": 3, "note": "hello"})
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    save(outdir, "views", {"base": base, "same": base, "rows": base[1:3], "transposed": base.t(),
                           "columns": base[:, ::2], "chunk0": base.view(-1)[:12],
                           "chunk1": base.view(-1)[12:]})
    fortran = torch.arange(24, dtype=torch.int64).reshape(2, 3, 4).permute(2, 1, 0)
    save(outdir, "strided", {"fortran": fortran, "offset": torch.arange(10.0)[3:7]})
    save(outdir, "dtypes", {DTYPES[d]: (torch.arange(-3, 3) % 2 == 0).to(d) if d == torch.bool
                            else torch.arange(-3, 3).to(d) for d in DTYPES})
    for protocol in (2, 3, 4, 5):
        save(outdir, f"protocol{protocol}", {"w": torch.randn(3, 2), "n": 5}, pickle_protocol=protocol)
    save(outdir, "legacy", {"w": torch.randn(3)}, _use_new_zipfile_serialization=False)
    # The legacy (pre-1.6) layout with what makes it hard: a module's state
    # dict, shared storages and views, Fortran strides, every dtype, and the
    # other pickle protocols (4 and 5 put a FRAME before the magic number).
    save(outdir, "legacy_state_dict", net.state_dict(), _use_new_zipfile_serialization=False)
    save(outdir, "legacy_views", {"base": base, "same": base, "rows": base[1:3], "transposed": base.t(),
                                  "chunk1": base.view(-1)[12:], "fortran": fortran},
         _use_new_zipfile_serialization=False)
    save(outdir, "legacy_dtypes", {DTYPES[d]: (torch.arange(-3, 3) % 2 == 0).to(d) if d == torch.bool
                                   else torch.arange(-3, 3).to(d) for d in DTYPES},
         _use_new_zipfile_serialization=False)
    for protocol in (3, 4, 5):
        save(outdir, f"legacy_protocol{protocol}", {"w": torch.randn(3, 2), "n": 5},
             _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    save(outdir, "lone_tensor", torch.randn(2, 2))
    save(outdir, "dotted_keys", {"model.v2": {"w": torch.randn(2)}, "epoch": 1})
    # A legacy object pickle larger than the first window a positional read takes.
    save(outdir, "legacy_many", {f"t{i}": torch.full((2,), i, dtype=torch.int16) for i in range(1500)},
         _use_new_zipfile_serialization=False)
    # What torch.load(weights_only=True) accepts besides tensors: torch.Size and dtypes.
    save(outdir, "sizes_and_dtypes", {"w": torch.randn(2, 3), "shape": torch.Size([2, 3]),
                                      "config": {"dtype": torch.float16, "dtypes": [torch.bfloat16, torch.bool]}})
    # One Linear twelve times: 24 names of one 1 MB weight and one bias in a
    # 1 MB file, its tensors written once (zeros, so that the file compresses).
    tied = torch.nn.Linear(512, 512)
    torch.nn.init.zeros_(tied.weight)
    torch.save(torch.nn.Sequential(*[tied] * 12).state_dict(), os.path.join(outdir, "tied_sequential.pt"))
    scripted = Scripted()
    save_torchscript(outdir, "scripted", torch.jit.script(scripted))
    save_torchscript(outdir, "traced", torch.jit.trace(scripted, (torch.randn(4, 4), torch.tensor([1, 2]))))
    torch.jit.save(torch.jit.script(SetstateLoops()), os.path.join(outdir, "hostile_setstate.pt"))
    torch.save({"w": torch.zeros(1), "evil": Hostile(os.path.join(outdir, "hostile_reduce_ran"))},
               os.path.join(outdir, "hostile_reduce.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
