#!/usr/bin/python3
"""Writes TorchScript archives with what a module's state_dict holds and what it
leaves out, and beside each what Python says of it, so that convert and
read_checkpoint can be checked against torch.jit.load(f).state_dict().

    python3 make_archives.py OUTDIR

For NAME in scripted, traced (torch.jit.script and torch.jit.trace of one
model) it writes NAME.pt, NAME.expected.safetensors (the state_dict of
torch.jit.load(NAME.pt), in its order, by the stdlib writer of
../pickle/make_fixtures.py) and NAME.expected.json (which of those names are
parameters and which buffers, as torch.jit.load says). The model has nested
submodules, ModuleList, Sequential and ModuleDict, BatchNorm's running
statistics and int64 counter, a non-persistent buffer, Linear(bias=False), an
output layer tied to the embedding, and attributes that are not state: an int,
a string, a list and a tensor that is neither a parameter nor a buffer.
getstate_loops.pt is a scripted module with its own __getstate__ whose
__setstate__ never returns: torch.jit.load hangs on it, so it has no expected
files. torch-1.13/ was written by Debian 12's python3-torch (1.13,
/usr/bin/python3), torch-2.6/ by Debian 13's (2.6, tools/reference-root.sh run).
"""
import json
import os
import sys
from typing import Tuple

import torch

sys.dont_write_bytecode = True  # nothing written beside the other generator
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pickle"))
from make_fixtures import write_safetensors  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = torch.nn.Linear(width, 4, bias=False)
        self.bn = torch.nn.BatchNorm1d(4)
        self.act = torch.nn.GELU()

    def forward(self, x):
        return self.act(self.bn(self.fc(x)))


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(3), Block(4)])
        self.seq = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
        self.heads = torch.nn.ModuleDict({"score": torch.nn.Linear(4, 1)})
        self.register_buffer("scale", torch.linspace(0.5, 2, 4, dtype=torch.float64))
        self.register_buffer("positions", torch.arange(4.0), persistent=False)
        self.embed = torch.nn.Embedding(5, 4)
        self.out = torch.nn.Linear(4, 5, bias=False)
        self.out.weight = self.embed.weight
        self.steps = 3
        self.label = "tiny"
        self.sizes = [1, 2]
        self.offset = torch.full((4,), 0.25)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        x = self.seq(x) * self.scale.float() + self.positions + self.offset + self.steps
        return self.out(x) + self.heads["score"](x) + len(self.label) + self.sizes[0]


class GetstateLoops(torch.nn.Module):
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


def kinds(module, state):
    """Which names of the state_dict are parameters and which buffers."""
    out = {"parameters": [], "buffers": []}
    for name in state:
        owner, _, leaf = name.rpartition(".")
        m = module
        for part in owner.split(".") if owner else []:
            m = getattr(m, part)
        if leaf in dict(m.named_parameters(recurse=False)):
            out["parameters"].append(name)
        elif leaf in dict(m.named_buffers(recurse=False)):
            out["buffers"].append(name)
        else:
            raise AssertionError(name + " is neither a parameter nor a buffer")
    return out


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    model = Model()
    with torch.no_grad():
        for block in model.blocks:
            block.bn.running_mean.uniform_(-1, 1)
            block.bn.running_var.uniform_(0.5, 2)
            block.bn.num_batches_tracked.fill_(7)
    model.eval()
    for name, module in (("scripted", torch.jit.script(model)),
                         ("traced", torch.jit.trace(model, torch.randn(2, 3)))):
        path = os.path.join(outdir, name + ".pt")
        torch.jit.save(module, path)
        loaded = torch.jit.load(path)
        state = loaded.state_dict()
        write_safetensors(os.path.join(outdir, name + ".expected.safetensors"), state)
        with open(os.path.join(outdir, name + ".expected.json"), "w") as f:
            json.dump(dict(kinds(loaded, state), torch=torch.__version__), f, indent=1)
            f.write("\n")
    torch.jit.save(torch.jit.script(GetstateLoops()), os.path.join(outdir, "getstate_loops.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
