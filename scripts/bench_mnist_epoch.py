"""Seconds per MNIST epoch (batch 256, all 60,000 images as tensors on the device) for the Table 1 loop with our
optimizers against the same loop with plain torch.optim, and the reference code's README loop on the same tensors;
side by side in one process. Prints JSON (and writes it with --out).

Method: each configuration trains its own copy of the MLP; epochs are interleaved across configurations, the first
epoch of each is a warm-up, and the median of the remaining epochs is reported. The shuffling, the batches and
the test evaluation are not timed: an epoch here is the optimisation steps only.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

import hyperopt
from experiments.data import default_data_root, load_mnist
from experiments.provenance import provenance
from experiments.reports import publish
from experiments.tasks import train_step
from models import MLP

CONFIGURATIONS = {
    # name: (our stack, the plain torch.optim optimizer it is measured against)
    "SGD(0.01)": ("SGD(0.01)", lambda params: torch.optim.SGD(params, lr=0.01)),
    "Adam/SGD(1e-5)": ("Adam/SGD(1e-5)", lambda params: torch.optim.Adam(params, lr=1e-3)),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=default_data_root())
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per configuration (after a warm-up)")
    parser.add_argument("--subset", type=int, default=None, help="train on the first N images only (smoke)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--readme", type=Path, help="also put the Markdown table into this file's block")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    data = load_mnist(args.data_root, device=device, subset=args.subset)
    torch.manual_seed(0)
    base = MLP().to(device)

    steps = {}
    for name, (spec, plain) in CONFIGURATIONS.items():
        model = copy.deepcopy(base)
        optimizer = plain(model.parameters())
        steps[f"{name} torch.optim"] = lambda x, y, m=model, o=optimizer: train_step(m, o, x, y)
        model = copy.deepcopy(base)
        optimizer = hyperopt.stack(spec, model.parameters())
        steps[f"{name} ours"] = lambda x, y, m=model, o=optimizer: train_step(m, o, x, y)
        if not args.no_reference:
            from experiments.reference import reference_step

            steps[f"{name} reference"] = reference_step(spec, copy.deepcopy(base))[1]

    generator = torch.Generator().manual_seed(0)
    seconds = {name: [] for name in steps}
    for _ in range(args.epochs + 1):
        batches = list(data.batches(256, generator))
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for x, y in batches:
                step(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values[1:]) for name, values in seconds.items()}
    results = []
    for name in CONFIGURATIONS:
        plain = median[f"{name} torch.optim"]
        row = {"optimizer": name, "torch_optim_seconds_per_epoch": plain,
               "ours_seconds_per_epoch": median[f"{name} ours"], "ours_vs_torch_optim": median[f"{name} ours"] / plain}
        if f"{name} reference" in median:
            row["reference_seconds_per_epoch"] = median[f"{name} reference"]
            row["reference_vs_torch_optim"] = median[f"{name} reference"] / plain
        results.append(row)
    report = {"benchmark": "seconds per MNIST epoch (optimisation steps only), MLP, batch 256, tensors preloaded",
              "images": len(data.train_y),
              "method": f"median of {args.epochs} interleaved epochs after one warm-up epoch",
              **provenance(device), "results": results}
    publish(report, args.out, args.readme)


if __name__ == "__main__":
    main()
