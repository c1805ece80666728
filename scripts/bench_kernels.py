"""Kernels launched and values read back to the host by one optimizer step, counted, not timed: every aten
operation that is not a view launches a kernel on a GPU. Prints JSON (and writes it with --out).

Method: the model takes a few steps (the first has no hypergradient), then one step of the optimizer alone (the
gradients already there) runs under a TorchDispatchMode that counts operations. The stacks are counted on the
path a GPU takes (hyperparameters as tensors on the device: `hypergradient.on_host` is made to say no), so the
counts mean on this CPU what they mean on a GPU. Deterministic: the same counts on any machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import hyperopt
from experiments.provenance import provenance
from experiments.reports import publish
from hyperopt import hypergradient
from models import resnet20

# reading a value back waits for the device
HOST_READS = {"_local_scalar_dense", "equal", "is_nonzero"}


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.kernels = 0
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_READS:
            self.reads += 1
        elif not func.is_view:
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def deep_mlp(layers: int = 100, width: int = 16) -> nn.Module:
    """An MLP of `layers` Linear layers: 2 × layers tensors."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, width),
                         *[nn.Sequential(nn.ReLU(), nn.Linear(width, width)) for _ in range(layers - 2)],
                         nn.ReLU(), nn.Linear(width, 10))


MODELS = {"resnet20": resnet20, "mlp200": deep_mlp}

OPTIMIZERS = {
    "torch SGD(0.1, 0.9) foreach": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True),
    "torch Adam foreach": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
    "SGD(0.1)/SGD(1e-3)": "SGD(0.1)/SGD(1e-3)",
    "SGD(0.1, 0.9)/SGD(1e-3)": "SGD(0.1, 0.9)/SGD(1e-3)",
    "Adam/SGD(1e-5)": "Adam/SGD(1e-5)",
    "AdamW/SGD(1e-5)": "AdamW/SGD(1e-5)",
    "AdaGrad/SGD(0.01)": "AdaGrad/SGD(0.01)",
    "RMSProp/SGD(1e-4)": "RMSProp/SGD(1e-4)",
    "Adam/Adam/Adam": "Adam/Adam/Adam",
}


def count(model_name: str, optimizer_name: str, foreach: bool | None) -> dict:
    torch.manual_seed(0)
    model = MODELS[model_name]()
    make = OPTIMIZERS[optimizer_name]
    optimizer = make(model.parameters()) if callable(make) else hyperopt.stack(make, model.parameters(),
                                                                               foreach=foreach)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    counter = Counter()
    with counter:
        optimizer.step()
    return {"model": model_name, "tensors": sum(1 for _ in model.parameters()), "optimizer": optimizer_name,
            "foreach": foreach if not callable(make) else True, "kernels": counter.kernels,
            "host_reads": counter.reads}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    hypergradient.on_host = lambda weights: False  # the GPU's path, on this CPU
    rows = []
    for model_name in arguments.models:
        for optimizer_name in arguments.optimizers:
            paths = [True] if callable(OPTIMIZERS[optimizer_name]) else [False, True]
            rows += [count(model_name, optimizer_name, foreach) for foreach in paths]
    report = {"benchmark": "kernels launched and values read back by one optimizer step, counted",
              "method": "every aten operation that is not a view, under a TorchDispatchMode, over the fourth step "
                        "(the gradients already there), on the path a GPU takes (scalars as tensors); "
                        "host_reads: _local_scalar_dense, equal, is_nonzero (torch.optim's are of its CPU step "
                        "counts, which on a GPU are no synchronisation)",
              **provenance(torch.device("cpu")), "results": rows}
    publish(report, arguments.out, None)


if __name__ == "__main__":
    main()
