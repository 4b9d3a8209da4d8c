"""Writes what aoti_test checks against, with Python's torch and safetensors:

  OUT/model.pt2              a two-layer model compiled by aoti_compile_and_package
                             (CPU, default options), with its initial weights
  OUT/other.safetensors      other weights for it, its full state dict
  OUT/third.safetensors      a third set, for a second swap
  OUT/expected.safetensors   input "x"; "initial": the package's output on it;
                             "other", "third": the eager model's output with those
                             weights, fc2.bias kept at its initial value, since
                             AOTInductor folds that 8-element bias into its code

Usage: aoti_package.py OUT
"""

import sys

import torch
from safetensors.torch import save_file


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def net(seed):
    torch.manual_seed(seed)
    return Net().eval()


def main(out):
    initial = net(0)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        program = torch.export.export(initial, (x,))
        torch._inductor.aoti_compile_and_package(program, package_path=f"{out}/model.pt2")
        expected = {"x": x, "initial": initial(x)}
        for name, seed in (("other", 1), ("third", 2)):
            model = net(seed)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/{name}.safetensors",
                      metadata={"format": "pt"})
            model.fc2.bias.copy_(initial.fc2.bias)
            expected[name] = model(x)
    save_file(expected, f"{out}/expected.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
