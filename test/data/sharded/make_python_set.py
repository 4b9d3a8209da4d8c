# Writes python_set/: a sharded checkpoint as Python's safetensors and the
# Hugging Face tools write one (shards by safetensors.torch.save_file, an index
# by json.dump), with what the tests of reading a set look for: metadata the
# shards agree on and a key they disagree on, an alias recorded in one shard
# for a tensor of another (save_model's tied weights), an F8 tensor, and an
# index whose metadata holds another key beside total_size.
#
#   tools/reference-root.sh run -- python3 test/data/sharded/make_python_set.py test/data/sharded/python_set

import json
import os
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
shards = {
    "model-00001-of-00002.safetensors": (
        {"embed.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
         "f8": torch.tensor([0.0, 1.0, -2.0, 448.0]).to(torch.float8_e4m3fn)},
        {"format": "pt", "producer": "trainer 1", "note": "x"}),
    "model-00002-of-00002.safetensors": (
        {"layer.0.bias": torch.tensor([1, -1], dtype=torch.int64),
         "layer.0.weight": torch.ones(2, 2, dtype=torch.bfloat16)},
        {"format": "pt", "producer": "trainer 2", "note": "x", "lm_head.weight": "embed.weight"}),
}
weight_map = {}
total = 0
for name, (tensors, metadata) in shards.items():
    save_file(tensors, os.path.join(out, name), metadata=metadata)
    for key, t in tensors.items():
        weight_map[key] = name
        total += t.numel() * t.element_size()
with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total, "model_type": "toy"}, "weight_map": weight_map}, f, indent=2)
