"""How long the whole step takes to compile, and then to run: our stacks with compile=True against
torch.compile(torch.optim.Adam(...).step), on ResNet-20, each against its own eager step, and on a GPU captured in a
CUDA graph too. Prints JSON (and writes it with --out).

Method: every configuration steps on fixed gradients (one batch's). Inductor's caches are off (every configuration
compiles from nothing); its compile time is the wall time of its first compiled step minus the median time of its
later steps. Then the compiled step and the eager one (of a fresh copy) take turns (experiments/benchmark.py, one
untimed step each first), a schedule changing the step size of each every step (the compiled step must not compile
again): the times are medians over the turns, the ratio the median of each turn's (paired, so that the machine's
drift cancels). On a GPU the step under torch.compile(mode="reduce-overhead"), which replays it as a CUDA graph
once recorded, takes turns with an eager step likewise (without the schedule).
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import hyperopt  # noqa: E402
from experiments.benchmark import Loop, interleaved_rounds, paired_ratio, raise_if_diverged  # noqa: E402
from experiments.provenance import provenance  # noqa: E402
from experiments.reports import publish  # noqa: E402
from models import resnet20  # noqa: E402

CONFIGURATIONS = {
    # name: its optimizer
    # (a tensor lr, as torch documents for a schedule under torch.compile)
    "torch.optim.Adam": lambda params: torch.optim.Adam(params, lr=torch.tensor(1e-5)),
    "Adam(1e-5)/SGD(1e-9)": lambda params: hyperopt.stack("Adam(1e-5)/SGD(1e-9)", params),
    "SGD(1e-4, 0.9)/SGD(1e-8)": lambda params: hyperopt.stack("SGD(1e-4, 0.9)/SGD(1e-8)", params),
    "Adam(1e-5)/Adam(1e-8)/Adam(1e-9)": lambda params: hyperopt.stack("Adam(1e-5)/Adam(1e-8)/Adam(1e-9)", params),
}


def prepared(name: str, device: torch.device):
    """The configuration's optimizer over a fresh ResNet-20 (seed 0), with one batch's gradients in place."""
    torch.manual_seed(0)
    model = resnet20().to(device)
    optimizer = CONFIGURATIONS[name](model.parameters())
    x, y = torch.rand(32, 3, 32, 32, device=device), torch.randint(0, 10, (32,), device=device)
    F.cross_entropy(model(x), y).backward()
    return optimizer


def stepping(name: str, step, schedule=None) -> Loop:
    """A Loop of optimizer steps on the gradients already there, the schedule (if any) stepped after each."""
    def one(x, y):
        step()
        if schedule is not None:
            schedule.step()
    nothing = torch.zeros(())
    return Loop(name, itertools.repeat((nothing, nothing)), one)


def in_turns(first: Loop, second: Loop, steps: int, device: torch.device) -> tuple[float, float, float]:
    """The median times of two loops' steps taking `steps` turns (after one more each), and the median ratio of
    the second's time to the first's."""
    times = interleaved_rounds([first, second], 1, steps, 1, device)
    raise_if_diverged([first, second])
    a, b = times[first.name], times[second.name]
    return statistics.median(a), statistics.median(b), paired_ratio(b, a)


def measure(name: str, steps: int, device: torch.device) -> dict:
    eager, compiled = prepared(name, device), prepared(name, device)
    ours = isinstance(compiled, hyperopt.Hyperoptimizer)
    if ours:
        compiled.compile = True  # (the flag compile=True sets: the first two steps eager, then compiled)
        step = compiled.step
    else:
        step = torch.compile(compiled.step)
    eager_loop = stepping("eager", eager.step, torch.optim.lr_scheduler.ExponentialLR(eager, gamma=0.999))
    compiled_loop = stepping("compiled", step, torch.optim.lr_scheduler.ExponentialLR(compiled, gamma=0.999))
    if ours:
        compiled_loop.run(2, device)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    first = compiled_loop.run(1, device)
    eager_time, compiled_time, ratio = in_turns(eager_loop, compiled_loop, steps, device)
    result = {"configuration": name, "compile_s": first - compiled_time, "compiled_step_ms": compiled_time * 1e3,
              "eager_step_ms": eager_time * 1e3, "compiled_vs_eager": ratio,
              "graphs_compiled": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs}
    if device.type == "cuda":
        torch._dynamo.reset()
        eager, captured = prepared(name, device), prepared(name, device)
        if ours:  # (the state made eagerly, as compile=True makes it)
            stepping("state", captured.step).run(2, device)
        captured_loop = stepping("captured", torch.compile(captured.step, mode="reduce-overhead"))
        captured_loop.run(5, device)  # compiled, warmed up, recorded
        eager_time, captured_time, ratio = in_turns(stepping("eager", eager.step), captured_loop, steps, device)
        result.update(captured_step_ms=captured_time * 1e3, captured_vs_eager=ratio)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="turns of the compiled step and the eager one")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    results = []
    for name in args.configurations:
        torch._dynamo.reset()
        results.append(measure(name, args.steps, device))
    report = {"benchmark": "the whole step compiled, ResNet-20, gradients of a batch of 32",
              "method": "compile_s: the first compiled step's wall time less the median of the later ones, inductor's "
                        f"caches off; then {args.steps} turns of the compiled step and the eager one, an "
                        "ExponentialLR schedule changing the step size every step: compiled_step_ms and "
                        "eager_step_ms their medians, compiled_vs_eager the median of each turn's ratio, "
                        "graphs_compiled the graphs dynamo compiled; captured_step_ms (a GPU): the same for the step "
                        "under torch.compile(mode='reduce-overhead'), replays of a CUDA graph, against an eager step, "
                        "without the schedule",
              **provenance(device), "results": results}
    publish(report, args.out, None)


if __name__ == "__main__":
    main()
