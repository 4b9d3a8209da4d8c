"""Training checkpoints for convert_metadata_test, written at test time.

  python3 make_training_resume.py OUT_DIR [STEPS RESUMED]

For each optimizer (adam, sgd: SGD with momentum) a small model is trained
STEPS steps on fixed data, then saved as a whole training checkpoint
`<optimizer>.pt`: {"model", "optimizer", "epoch", "data": the inputs and
targets, and non-tensor values of every JSON kind}. Training then goes
on RESUMED steps, and the parameters reached are saved as
`<optimizer>.resumed.pt`. `<optimizer>.expected.json` holds json.dumps of
every non-tensor entry, `<optimizer>.specials.txt` the text json.dumps writes
for [inf, -inf, nan]. hostile_json.pt, no_json.pt and surrogate.pt hold
non-tensor values that must not be kept.
"""

import json
import math
import sys

import torch

out, steps, resumed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3, \
    int(sys.argv[3]) if len(sys.argv) > 3 else 4


def model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    x = torch.randn(8, 4)
    y = torch.randn(8, 2)
    return model, x, y


def train(model, optimizer, x, y, n):
    for _ in range(n):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


for name in ("adam", "sgd"):
    model, x, y = model_and_data()
    if name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.999), weight_decay=0.001)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, optimizer, x, y, steps)
    extras = {"name": "r\u00e9sum\u00e9 \"quoted\"", "flag": True, "nothing": None, "pair": (1, 2.5),
              "by_index": {1: "one", 2: [0.1, 1e-08, 1e+16]}, "specials": [math.inf, -math.inf, math.nan]}
    state = optimizer.state_dict()
    torch.save({"model": model.state_dict(), "optimizer": state, "epoch": steps,
                "data": {"x": x, "y": y, **extras}}, f"{out}/{name}.pt")
    expected = {"epoch": json.dumps(steps), "optimizer.param_groups": json.dumps(state["param_groups"])}
    for key, value in extras.items():
        if key != "specials":
            expected["data." + key] = json.dumps(value)
    with open(f"{out}/{name}.expected.json", "w") as f:
        json.dump(expected, f)
    with open(f"{out}/{name}.specials.txt", "w") as f:
        f.write(json.dumps(extras["specials"]))
    train(model, optimizer, x, y, resumed)
    torch.save(model.state_dict(), f"{out}/{name}.resumed.pt")

# A string shared through the pickle's memo: 1 MB in the file, a 50 MB JSON text
# once written out as often as the list refers to it.
shared = "x" * (1 << 20)
torch.save({"t": torch.zeros(1), "big": [shared] * 50, "epoch": 2}, f"{out}/hostile_json.pt")
# A list: its int entry "3" holds 1, which is also a tensor's name.
torch.save([torch.ones(2), torch.ones(2) * 2, torch.ones(2) * 3, 1], f"{out}/list_value.pt")
# Values without a JSON form, and a lone surrogate (pickled as invalid UTF-8).
torch.save({"t": torch.zeros(1), "z": torch.float16, "where": torch.device("cpu"), "epoch": 1},
           f"{out}/no_json.pt")
torch.save({"t": torch.zeros(1), "name": "\ud800"}, f"{out}/surrogate.pt")
# Values whose names a prefix strip makes those of a tensor and of another value.
torch.save({"p.a": torch.zeros(1), "a": 5, "p.b": 7, "b": 8}, f"{out}/colliding.pt")
# An optimizer without tensor state (SGD without momentum), beside its model.
model = torch.nn.Linear(2, 1)
plain = torch.optim.SGD(model.parameters(), lr=0.5)
torch.save({"model": model.state_dict(), "optimizer": plain.state_dict(), "epoch": 4}, f"{out}/plain_sgd.pt")
