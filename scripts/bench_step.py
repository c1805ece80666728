"""The optimizer's step alone (no forward, no backward): our stacks on the single-tensor path (foreach=False) and
the multi-tensor path (foreach=True) against torch.optim's foreach step of the same base optimizer, side by side in
one process; and, on the CPU, the multi-tensor path with its scalars as tensors (a GPU's way) against its default
there, Python numbers (hypergradient.on_host), which is kept only where it pays. Prints JSON (and writes it with
--out).

Method: each configuration's model takes one backward; then its optimizer steps again and again on those
gradients (each step the whole computation: hypergradients, checks, updates). Rounds interleave the configurations
and the ratios are medians over rounds of each round's ratio (experiments/benchmark.py).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import hyperopt
from experiments.benchmark import Loop, interleaved_rounds, paired_ratio, raise_if_diverged
from hyperopt import hypergradient
from experiments.provenance import provenance
from experiments.reports import publish
from models import MLP, CharGPT, resnet20


def images(shape):
    return lambda device: (torch.rand((32,) + shape, device=device), torch.randint(0, 10, (32,), device=device))


def text(device, vocabulary=83, length=64):
    tokens = torch.randint(0, vocabulary, (32, length + 1), device=device)
    return tokens[:, :-1], tokens[:, 1:]


def gpt_loss(output, y):
    log_probabilities, _ = output
    return F.nll_loss(log_probabilities.flatten(0, 1), y.flatten())


MODELS = {  # name: (the model, a batch of 32, its loss)
    "resnet20": (resnet20, images((3, 32, 32)), F.cross_entropy),
    "mlp": (MLP, images((1, 28, 28)), F.cross_entropy),
    "char_gpt": (lambda: CharGPT(83), text, gpt_loss),
}

FAMILIES = {
    # family: (torch.optim's optimizer and its arguments, our stacks of that base optimizer). Small step sizes:
    # hundreds of steps on one batch's gradients must not diverge (the time of a step does not depend on its values).
    "SGD(α, μ)": (torch.optim.SGD, {"lr": 1e-4, "momentum": 0.9}, ["SGD(1e-4, 0.9)/SGD(1e-8)"]),
    "Adam": (torch.optim.Adam, {"lr": 1e-5}, ["Adam(1e-5)/SGD(1e-9)", "Adam(1e-5)/Adam(1e-8)/Adam(1e-9)"]),
    "AdamW": (torch.optim.AdamW, {"lr": 1e-5}, ["AdamW(1e-5)/SGD(1e-9)"]),
}


def stepper(name: str, model_name: str, make, device: torch.device) -> Loop:
    torch.manual_seed(0)
    factory, batch, loss = MODELS[model_name]
    model = factory().to(device)
    optimizer = make(model.parameters())
    x, y = batch(device)
    loss(model(x), y).backward()
    nothing = torch.zeros(())
    return Loop(name, itertools.repeat((nothing, nothing)), lambda x, y: optimizer.step())


def with_scalars_as_tensors(loop: Loop) -> Loop:
    """The loop's steps taken with every scalar a tensor, as on a GPU (a lone run on the CPU uses numbers)."""
    step, on_host = loop.step, hypergradient.on_host

    def tensor_step(x, y):
        hypergradient.on_host = lambda weights: False
        try:
            step(x, y)
        finally:
            hypergradient.on_host = on_host
    return Loop(loop.name, loop.batches, tensor_step)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    loops = []
    for family, (optimizer, arguments, stacks) in FAMILIES.items():
        for kind, chosen in (("", {"foreach": True}), (" fused", {"fused": True})):
            if kind and device.type != "cuda":  # (torch's fused kernels: a GPU's)
                continue
            make = (lambda optimizer, options: lambda params: optimizer(params, **options))(
                optimizer, {**arguments, **chosen})
            loops.append(stepper(f"{family}/torch.optim{kind}", args.model, make, device))
        for spec, foreach in itertools.product(stacks, (False, True)):
            make = (lambda spec, foreach: lambda params: hyperopt.stack(spec, params, foreach=foreach))(spec, foreach)
            loops.append(stepper(f"{spec}/foreach={foreach}", args.model, make, device))
            if foreach and device.type == "cpu":
                loops.append(with_scalars_as_tensors(stepper(f"{spec}/tensors", args.model, make, device)))
    times = interleaved_rounds(loops, args.steps, args.rounds, warmup=3, device=device)
    raise_if_diverged(loops)
    results = []
    for family, (_, _, stacks) in FAMILIES.items():
        plain = times[f"{family}/torch.optim"]
        fused = times.get(f"{family}/torch.optim fused")
        for spec in stacks:
            single, multi = times[f"{spec}/foreach=False"], times[f"{spec}/foreach=True"]
            results.append({"family": family, "stack": spec,
                            "torch_optim_foreach_ms": statistics.median(plain) * 1e3,
                            "single_tensor_ms": statistics.median(single) * 1e3,
                            "multi_tensor_ms": statistics.median(multi) * 1e3,
                            "single_vs_torch_optim": paired_ratio(single, plain),
                            "multi_vs_torch_optim": paired_ratio(multi, plain),
                            "multi_vs_single": paired_ratio(multi, single)})
            if fused is not None:
                results[-1].update({"torch_optim_fused_ms": statistics.median(fused) * 1e3,
                                    "multi_vs_torch_optim_fused": paired_ratio(multi, fused)})
            if f"{spec}/tensors" in times:
                tensors = times[f"{spec}/tensors"]
                results[-1].update({"multi_scalars_as_tensors_ms": statistics.median(tensors) * 1e3,
                                    "scalars_as_tensors_vs_numbers": paired_ratio(tensors, multi)})
    report = {"benchmark": f"the optimizer's step alone, {args.model}, gradients of a batch of 32"
                           + (" (on a GPU, torch's fused Adam and AdamW too)" if device.type == "cuda" else ""),
              "method": f"median over {args.rounds} interleaved rounds of the mean of {args.steps} steps; ratios: "
                        "median over rounds of each round's ratio",
              **provenance(device), "results": results}
    publish(report, args.out, None)


if __name__ == "__main__":
    main()
