"""GPT-2's forward pass in NumPy alone, as Hugging Face's modeling_gpt2 computes
it, to check the C++ example model (examples/gpt2_model.hpp) value by value.
It shares no code with LibTorch or with this project's reader: the file is
parsed with json and struct, the maths follows transformers' GPT2LMHeadModel
(Conv1D weights stored [in, out], gelu_new, causal attention scaled by
1/sqrt(head size), layer norms with the config's epsilon, the head tied to
the token embedding).

    python3 gpt2_reference.py MODEL_FOLDER ID... > reference_logits.json
"""
import json
import math
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[name] = np.frombuffer(data[base + begin:base + end], dtype=DTYPES[entry["dtype"]]) \
            .reshape(entry["shape"]).astype(np.float64)
    return out


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(w, config, ids):
    eps = config["layer_norm_epsilon"]
    heads = config["n_head"]
    x = w["wte.weight"][ids] + w["wpe.weight"][np.arange(len(ids))]
    length, width = x.shape
    size = width // heads
    for layer in range(config["n_layer"]):
        p = f"h.{layer}."
        a = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        qkv = a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (qkv[:, i * width:(i + 1) * width].reshape(length, heads, size).transpose(1, 0, 2)
                   for i in range(3))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(size)
        scores = np.where(np.triu(np.ones((length, length), dtype=bool), 1), -np.inf, scores)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        weights = scores / scores.sum(-1, keepdims=True)
        attended = (weights @ v).transpose(1, 0, 2).reshape(length, width)
        x = x + attended @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        m = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        m = gelu_new(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
    return x @ w["wte.weight"].T


def main(folder, ids):
    with open(folder + "/config.json") as f:
        config = json.load(f)
    logits = forward(read_safetensors(folder + "/model.safetensors"), config, np.array(ids))
    json.dump({"ids": ids, "logits": logits.tolist()}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], [int(i) for i in sys.argv[2:]])
