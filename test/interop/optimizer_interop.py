"""Training checkpoints between C++ and Python's torch (test/optimizer_test.cpp runs it).

  optimizer_interop.py continue SETUP CKPT STEPS OUT
      loads the model and optimizer of a training checkpoint written in C++,
      trains STEPS more steps, and writes the parameters to OUT (model.*);
  optimizer_interop.py start SETUP N M CKPT FINAL
      trains N steps from SETUP's parameters, writes a training checkpoint
      (the layout save_training_checkpoint writes) to CKPT, trains M more
      steps and writes the parameters to FINAL;
  optimizer_interop.py nonfinite OUT
      writes to OUT, in save_optimizer's layout, an SGD over Net's two layers
      after one step, with dampening NaN and -inf and a key of the user's,
      max_grad_norm, holding inf (json.dumps writes them bare);
  optimizer_interop.py check-nonfinite IN
      loads IN (save_optimizer's layout) into such an SGD and checks that
      its dampening is NaN and -inf.

SETUP holds the batch (data.x, data.y), the initial parameters (model.*) and,
in its metadata, the optimizer (`optimizer`: a torch.optim class), its keyword
arguments (`kwargs`, JSON) and each param group's lr (`lrs`, JSON).

With the `safetensors` package (torch 2.x roots) files are read and written
by it; without it (Debian's torch 1.13) by the small reader and writer below.
"""

import json
import math
import struct
import sys

import torch

try:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    def read(path):
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
        return load_file(path), metadata

    def write(path, tensors, metadata):
        save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata)

except ImportError:
    DTYPES = {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
        "U8": torch.uint8, "BOOL": torch.bool,
    }
    NAMES = {v: k for k, v in DTYPES.items()}

    def read(path):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            data = f.read()
        metadata = header.pop("__metadata__", {})
        tensors = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            dtype = DTYPES[info["dtype"]]
            if end > begin:
                t = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype)
            else:
                t = torch.empty(0, dtype=dtype)
            tensors[name] = t.reshape(info["shape"])
        return tensors, metadata

    def write(path, tensors, metadata):
        header, chunks, offset = {"__metadata__": metadata}, [], 0
        for name in sorted(tensors):
            t = tensors[name].detach().contiguous()
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                            "data_offsets": [offset, offset + len(raw)]}
            chunks.append(raw)
            offset += len(raw)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


# The snippet of docs/training.md: a training checkpoint into a model and an optimizer.
def load_training_checkpoint(path, model, optimizer):
    tensors, metadata = read(path)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state = {}
    for name, t in tensors.items():
        if name.startswith("optimizer.state."):
            i, key = name[len("optimizer.state."):].split(".", 1)
            state.setdefault(int(i), {})[key] = t
    optimizer.load_state_dict(
        {"state": state, "param_groups": json.loads(metadata["optimizer.param_groups"])})
    torch.set_rng_state(tensors["rng_state"])
    return int(metadata["step"]), int(metadata["epoch"])


def save_training_checkpoint(path, model, optimizer, step, epoch):
    tensors = {"model." + k: v for k, v in model.state_dict().items()}
    sd = optimizer.state_dict()
    for i, state in sd["state"].items():
        for key, value in state.items():
            if not torch.is_tensor(value):  # torch 1.13's RMSprop keeps its step as an int
                value = torch.tensor(float(value))
            tensors[f"optimizer.state.{i}.{key}"] = value
    tensors["rng_state"] = torch.get_rng_state()
    metadata = {"format": "pt", "step": str(step), "epoch": str(epoch),
                "optimizer.param_groups": json.dumps(sd["param_groups"])}
    write(path, tensors, metadata)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 5)
        self.fc2 = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def setup(path):
    tensors, metadata = read(path)
    model = Net()
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    lrs = json.loads(metadata["lrs"])
    groups = [{"params": list(model.fc1.parameters()), "lr": lrs[0]},
              {"params": list(model.fc2.parameters()), "lr": lrs[1]}]
    optimizer = getattr(torch.optim, metadata["optimizer"])(groups, **json.loads(metadata["kwargs"]))
    return model, optimizer, tensors["data.x"], tensors["data.y"]


def train(model, optimizer, x, y, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()


def save_parameters(path, model):
    write(path, {"model." + k: v.detach() for k, v in model.named_parameters()}, {})


def optimizer_file_state(tensors):
    state = {}
    for name, t in tensors.items():
        i, key = name[len("state."):].split(".", 1)
        state.setdefault(int(i), {})[key] = t
    return state


def nonfinite(out):
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(
        [{"params": model.fc1.parameters(), "dampening": float("nan")},
         {"params": model.fc2.parameters(), "dampening": -math.inf, "max_grad_norm": math.inf}],
        lr=0.1, momentum=0.9)
    train(model, optimizer, torch.randn(16, 4), torch.randn(16, 3), 1)
    sd = optimizer.state_dict()
    tensors = {f"state.{i}.{key}": value for i, s in sd["state"].items() for key, value in s.items()}
    write(out, tensors, {"format": "pt", "param_groups": json.dumps(sd["param_groups"])})


def check_nonfinite(path):
    tensors, metadata = read(path)
    model = Net()
    optimizer = torch.optim.SGD([{"params": model.fc1.parameters()}, {"params": model.fc2.parameters()}],
                                lr=0.1, momentum=0.9)
    optimizer.load_state_dict({"state": optimizer_file_state(tensors),
                               "param_groups": json.loads(metadata["param_groups"])})
    groups = optimizer.param_groups
    if not (math.isnan(groups[0]["dampening"]) and groups[1]["dampening"] == -math.inf):
        sys.exit(f"dampening {groups[0]['dampening']}, {groups[1]['dampening']}")
    if len(optimizer.state) != 4:
        sys.exit(f"state for {len(optimizer.state)} parameters")


def main(argv):
    if argv[0] == "continue":
        setup_path, ckpt, steps, out = argv[1:]
        model, optimizer, x, y = setup(setup_path)
        load_training_checkpoint(ckpt, model, optimizer)
        train(model, optimizer, x, y, int(steps))
        save_parameters(out, model)
    elif argv[0] == "start":
        setup_path, n, m, ckpt, final = argv[1:]
        model, optimizer, x, y = setup(setup_path)
        train(model, optimizer, x, y, int(n))
        save_training_checkpoint(ckpt, model, optimizer, int(n), 0)
        train(model, optimizer, x, y, int(m))
        save_parameters(final, model)
    elif argv[0] == "nonfinite":
        nonfinite(argv[1])
    elif argv[0] == "check-nonfinite":
        check_nonfinite(argv[1])
    else:
        sys.exit("usage: optimizer_interop.py continue|start|nonfinite|check-nonfinite ...")


if __name__ == "__main__":
    main(sys.argv[1:])
