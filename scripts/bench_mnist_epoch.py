"""Seconds per MNIST epoch (batch 256, all 60,000 images as tensors on the device): the Table 1 loop with our
optimizers against the same loop with plain torch.optim, and the reference code's README loop on the same tensors;
and the harness's whole epoch against a bare torch loop's. Side by side in one process. Prints JSON (and writes it
with --out).

Method: each configuration trains its own copy of the MLP; epochs are interleaved across configurations, the first
epoch of each is a warm-up, and the median of the remaining epochs is reported. In the optimizer rows the
shuffling, the batches and the test evaluation are not timed: an epoch there is the optimisation steps only. The
harness row is a one-epoch run of `+exp=mnist_sgd` through the harness's own loop (experiments/loop.py: batches,
steps, the hyperparameter log, the test evaluation, the record and the epoch's checkpoint), each epoch a new run in
a temporary folder, against a bare loop of the same steps with torch.optim.SGD followed by the same test
evaluation written plainly; its ratio is the median of each round's paired ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import hyperopt
from experiments.benchmark import paired_ratio
from experiments.data import default_data_root, load_mnist
from experiments.loggers import LocalLogger
from experiments.loop import CONFIGS, Alone, StopRequest, train
from experiments.provenance import provenance
from experiments.records import RunRecord
from experiments.reports import publish
from experiments.runs import OpenRun
from experiments.step import train_step
from experiments.tasks import make_task
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
    parser.add_argument("--harness-epochs", type=int, default=12,
                        help="timed one-epoch harness runs (each beside a bare loop's epoch, after a warm-up)")
    parser.add_argument("--subset", type=int, default=None, help="train on the first N images only (smoke)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--page", type=Path, help="also put the Markdown table into this documentation page's block")
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
    harness, bare = harness_against_bare(args.data_root, device, args.harness_epochs, args.subset)
    results = []
    for name in CONFIGURATIONS:
        plain = median[f"{name} torch.optim"]
        row = {"optimizer": name, "torch_optim_seconds_per_epoch": plain,
               "ours_seconds_per_epoch": median[f"{name} ours"], "ours_vs_torch_optim": median[f"{name} ours"] / plain}
        if f"{name} reference" in median:
            row["reference_seconds_per_epoch"] = median[f"{name} reference"]
            row["reference_vs_torch_optim"] = median[f"{name} reference"] / plain
        results.append(row)
    results.append({"optimizer": "SGD(0.01), whole epoch: harness vs bare torch loop",
                    "torch_optim_seconds_per_epoch": statistics.median(bare[1:]),
                    "ours_seconds_per_epoch": statistics.median(harness[1:]),
                    "ours_vs_torch_optim": paired_ratio(harness[1:], bare[1:])})
    report = {"benchmark": "seconds per MNIST epoch (optimisation steps only), MLP, batch 256, tensors preloaded",
              "images": len(data.train_y),
              "method": f"median of {args.epochs} interleaved epochs after one warm-up epoch ({args.harness_epochs} "
                        "for the harness against the bare loop, its ratio the median of each pair's)",
              **provenance(device), "results": results}
    publish(report, args.out, args.page)


def harness_against_bare(data_root: str, device: torch.device, epochs: int, subset: int | None):
    """Seconds of each of epochs + 1 interleaved epochs (the first a warm-up): a one-epoch run of +exp=mnist_sgd
    through the harness's loop, and the same steps and test evaluation in a bare loop."""
    overrides = ["+exp=mnist_sgd", "epochs=1", "progress=false", f"data.root={data_root}", f"device={device}",
                 "data.download=false"] + ([f"data.subset={subset}"] if subset else [])
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    config = OmegaConf.to_container(cfg, resolve=True)
    task = make_task(cfg, device)
    harness, bare = [], []
    with tempfile.TemporaryDirectory() as folder:
        for number in range(epochs + 1):
            directory = Path(folder) / str(number)
            run = OpenRun(cfg, config, RunRecord(directory, config, {}), str(directory), multirun=False)
            trainee = Alone(run, task, device)
            model = copy.deepcopy(trainee.model)
            plain = torch.optim.SGD(model.parameters(), lr=0.01)
            start = time.perf_counter()
            train([run], task, trainee, [LocalLogger()], False, StopRequest(), own_logs=False)
            harness.append(time.perf_counter() - start)
            start = time.perf_counter()
            for x, y in task.batches(torch.Generator().manual_seed(cfg.seed)):
                loss = F.nll_loss(model(x), y)
                plain.zero_grad()
                loss.backward()
                plain.step()
            loss, wrong = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.long)
            with torch.no_grad():
                for x, y in task.data.test_batches(cfg.data.eval_batch_size):
                    output = model(x)
                    loss += F.nll_loss(output, y, reduction="sum").double()
                    wrong += (output.argmax(1) != y).sum()
            assert int(wrong) <= len(task.data.test_y) and float(loss) >= 0.0  # read back, as the harness does
            bare.append(time.perf_counter() - start)
    return harness, bare


if __name__ == "__main__":
    main()
