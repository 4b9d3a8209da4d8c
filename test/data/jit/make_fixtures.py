#!/usr/bin/python3
"""Writes a TorchScript module and, beside it, what Python says of it, so that
the C++ state dict of a torch::jit::Module can be checked against Python's.

    /usr/bin/python3 make_fixtures.py OUTDIR

tiny_lm.pt is torch.jit.save of a scripted language model with what makes a
TorchScript state dict differ from a plain one: an output layer tied to the
embedding (the tie survives torch.jit.save), a buffer registered with
persistent=False (a scripted module's state_dict lists it all the same),
BatchNorm's int64 counter, a BF16 parameter and nested containers.
tiny_lm.expected.safetensors holds `torch.jit.load(tiny_lm.pt).state_dict()`,
every name with its own copy of the data, in Python's order, written by the
stdlib writer of ../pickle/make_fixtures.py. tiny_lm.retrained.safetensors
is the state dict of the same architecture with other weights (another
seed), and tiny_lm.forward.safetensors an input with the output of each. Run with Debian's python3-torch
(1.13); the committed copies were made so.
"""
import os
import sys

import torch

sys.dont_write_bytecode = True  # nothing written beside the other generator
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pickle"))
from make_fixtures import write_safetensors  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(),
                                       torch.nn.Linear(2 * width, width))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class TinyLM(torch.nn.Module):
    def __init__(self, vocab=11, width=8, context=6):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.blocks = torch.nn.ModuleList([Block(width), Block(width)])
        self.bn = torch.nn.BatchNorm1d(width)
        self.gain = torch.nn.Parameter(torch.linspace(0.5, 1.5, width).to(torch.bfloat16))
        self.head = torch.nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("positions", torch.randn(context, width), persistent=False)

    def forward(self, ids):
        x = self.embed(ids) + self.positions[: ids.shape[0]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.bn(x) * self.gain.float())


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    model = TinyLM()
    with torch.no_grad():  # running statistics and a counter that are not their defaults
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.num_batches_tracked.fill_(7)
    model.eval()
    path = os.path.join(outdir, "tiny_lm.pt")
    torch.jit.save(torch.jit.script(model), path)
    loaded = torch.jit.load(path)
    state = loaded.state_dict()
    assert "positions" in state and "head.weight" in state
    write_safetensors(os.path.join(outdir, "tiny_lm.expected.safetensors"), state)
    torch.manual_seed(1)
    retrained = torch.jit.script(TinyLM().eval())
    write_safetensors(os.path.join(outdir, "tiny_lm.retrained.safetensors"), retrained.state_dict())
    ids = torch.tensor([3, 1, 4, 1, 5, 9])
    with torch.no_grad():
        outputs = {"ids": ids, "logits": loaded(ids), "retrained_logits": retrained(ids)}
    write_safetensors(os.path.join(outdir, "tiny_lm.forward.safetensors"), outputs)
    print("next tokens:", " ".join(str(int(t)) for t in outputs["logits"].argmax(-1)),
          "retrained:", " ".join(str(int(t)) for t in outputs["retrained_logits"].argmax(-1)))


if __name__ == "__main__":
    main(sys.argv[1])
