"""Seconds per run-epoch of N runs trained as one batched network (models.batch_models and a stack of runs)
against the same N runs trained one after another, side by side in one process; for plain torch.optim and for our
stacks, so that the hyperoptimizer's cost in the batched setting is a ratio too. Prints JSON (--out writes it).

Method: random inputs of each model's shape on the device; every configuration is a Loop of forward, backward and
the optimizer's step, timed in interleaved rounds (experiments/benchmark.py): the median over rounds of the mean
step time. A run-epoch is a step's time × the model's steps per epoch (MNIST 235 at batch 256, CIFAR-10 391 at
128, War and Peace 251 windows of 128 × 100), divided by N for the batched network. On the CPU run it with
--runs 3 --steps 2 --rounds 1 (what CI does): the sizes of the paper's grids are for a GPU.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F

import hyperopt
from experiments.benchmark import Loop, interleaved
from experiments.provenance import provenance
from experiments.reports import publish
from experiments.step import forward_precision
from models import CharRNN, MLP, batch_models, resnet20


def images(shape, classes):
    def batch(generator, runs, size):
        lead = (runs, size) if runs else (size,)
        return torch.rand(*lead, *shape, generator=generator), torch.randint(classes, lead, generator=generator)
    return batch


def text(vocabulary, length):
    def batch(generator, runs, size):
        tokens = torch.randint(vocabulary, ((runs, size) if runs else (size,)) + (length + 1,), generator=generator)
        return tokens[..., :-1], tokens[..., 1:]
    return batch


CASES = {
    # name: (model, batch maker, default runs, batch size, steps per epoch, {label: (torch.optim, our stack)})
    "mlp": (MLP, images((784,), 10), 96, 256, 235, {
        "SGD": (lambda p: torch.optim.SGD(p, lr=0.01), "SGD(0.01)/SGD(0.01)"),
        "Adam": (lambda p: torch.optim.Adam(p, lr=1e-3), "Adam/SGD(1e-5)")}),
    "resnet20": (resnet20, images((3, 32, 32), 10), 19, 128, 391, {
        "SGD(α, μ)": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
                      "SGD(0.1, 0.9, 1e-4)/SGD({α: 1e-5, μ: 1e-7})")}),
    "char_rnn": (lambda: CharRNN(83), text(83, 100), 18, 128, 251, {
        "Adam^α": (lambda p: torch.optim.Adam(p, lr=2e-3), "Adam^α(2e-3)/Adam(0.01)")}),
}


def loss_of(output, y):
    log_probabilities = output[0] if isinstance(output, tuple) else output
    return F.nll_loss(log_probabilities.float().flatten(0, -2), y.flatten(), reduction="none")


def trainer(name, model, optimizer, batches, runs, precision):
    def step(x, y):
        with forward_precision(precision, x.device):
            output = model(x)
        losses = loss_of(output, y)
        # a batched network's loss is the sum of its runs' mean losses, each run's gradient its own
        loss = losses.view(runs, -1).mean(1).sum() if runs else losses.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return Loop(name, iter(lambda: next(batches), None), step)


def cycle(batches):
    while True:
        yield from batches


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--runs", type=int, help="runs per batched network (default: each grid's size)")
    parser.add_argument("--batch-size", type=int, help="default: each model's")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--page", type=Path, help="also put the Markdown table into this documentation page's block")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = []
    for case in args.cases.split(","):
        factory, make_batch, default_runs, default_batch, steps_per_epoch, optimizers = CASES[case]
        runs, batch_size = args.runs or default_runs, args.batch_size or default_batch
        generator = torch.Generator().manual_seed(0)
        lone_batches = cycle([tuple(t.to(device) for t in make_batch(generator, 0, batch_size)) for _ in range(4)])
        many_batches = cycle([tuple(t.to(device) for t in make_batch(generator, runs, batch_size)) for _ in range(4)])
        models = []
        for seed in range(runs):
            torch.manual_seed(seed)
            models.append(factory().to(device))
        loops = []
        for label, (plain, stack) in optimizers.items():
            for kind, make in (("torch.optim", plain), ("ours", None)):
                lone = copy.deepcopy(models[0])
                network = batch_models([copy.deepcopy(model) for model in models]).to(device)
                lone_optimizer = make(lone.parameters()) if make else hyperopt.stack(stack, lone.parameters())
                many_optimizer = (make(network.parameters()) if make
                                  else hyperopt.stack([stack] * runs, network.parameters()))
                loops.append(trainer(f"{label}/{kind}/alone", lone, lone_optimizer, lone_batches, 0, args.precision))
                loops.append(trainer(f"{label}/{kind}/batched", network, many_optimizer, many_batches, runs,
                                     args.precision))
        median = interleaved(loops, args.steps, args.rounds, warmup=2, device=device)
        for label, (_, stack) in optimizers.items():
            row = {"model": case, "optimizer": label, "stack": stack, "runs": runs, "batch_size": batch_size}
            for kind in ("torch.optim", "ours"):
                alone = median[f"{label}/{kind}/alone"] * steps_per_epoch
                batched = median[f"{label}/{kind}/batched"] * steps_per_epoch / runs
                row[f"{kind}_alone_s"] = alone
                row[f"{kind}_batched_s"] = batched
                row[f"{kind}_speedup"] = alone / batched
            row["ours_vs_torch_optim_batched"] = row["ours_batched_s"] / row["torch.optim_batched_s"]
            results.append(row)
    report = {
        "benchmark": "seconds per run-epoch, N runs as one batched network against N lone runs, random inputs, "
                     f"{args.precision}",
        "method": f"median over {args.rounds} interleaved rounds of the mean of {args.steps} steps, × steps per "
                  "epoch (÷ N batched); ours is the stack in `stack`, torch.optim its plain counterpart",
        **provenance(device), "results": results,
    }
    publish(report, args.out, args.page)


if __name__ == "__main__":
    main()
