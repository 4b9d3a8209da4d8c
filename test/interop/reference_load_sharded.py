"""The Python reference loads a sharded checkpoint and finds the original's tensors.

    python3 reference_load_sharded.py ORIGINAL.safetensors FOLDER

FOLDER holds model.safetensors.index.json and its shards (written by our
distributed save); every shard is read with safetensors.torch.load_file, and
the union must equal ORIGINAL tensor for tensor, bit for bit.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file


def main():
    original, folder = sys.argv[1], sys.argv[2]
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        index = json.load(f)
    loaded = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(os.path.join(folder, shard))
        for name, tensor in tensors.items():
            assert index["weight_map"][name] == shard, f"{name} is in {shard}, the index says otherwise"
            loaded[name] = tensor
    want = load_file(original)
    assert loaded.keys() == want.keys(), f"names differ: {sorted(loaded.keys() ^ want.keys())}"
    total = 0
    for name, tensor in want.items():
        got = loaded[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(got.view(torch.uint8), tensor.view(torch.uint8)), f"{name} differs"
        total += tensor.numel() * tensor.element_size()
    assert index["metadata"]["total_size"] == total, "total_size is not the tensors' bytes"
    print(f"reference_load_sharded: {len(want)} tensors in {len(set(index['weight_map'].values()))} shards equal the original")


if __name__ == "__main__":
    main()
