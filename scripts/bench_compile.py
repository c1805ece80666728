"""How long the whole step takes to compile, and then to run: our stacks with compile=True against
torch.compile(torch.optim.Adam(...).step), on ResNet-20. Prints JSON (and writes it with --out).

Method: inductor's caches are off (every configuration compiles from nothing); a configuration's compile time is
the wall time of its first compiled step minus the median time of its later steps. Then each configuration and its
eager counterpart step alternately on fixed gradients (scripts/bench_step.py's method), and a schedule changes a
value every step: the compiled step must not compile again.
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import hyperopt  # noqa: E402
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


def measure(name: str, steps: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = resnet20().to(device)
    optimizer = CONFIGURATIONS[name](model.parameters())
    x, y = torch.rand(32, 3, 32, 32, device=device), torch.randint(0, 10, (32,), device=device)
    F.cross_entropy(model(x), y).backward()
    if isinstance(optimizer, hyperopt.Hyperoptimizer):
        optimizer.compile = True  # (the flag compile=True sets: the first two steps eager, then compiled)
        step = optimizer.step
        eager_steps = 2
    else:
        step = torch.compile(optimizer.step)
        eager_steps = 0
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.999)
    for _ in range(eager_steps):
        step()
        schedule.step()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        schedule.step()
    later = statistics.median(times[1:])
    return {"configuration": name, "compile_s": times[0] - later, "compiled_step_ms": later * 1e3,
            "graphs_compiled": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="compiled steps, the first compiling")
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
                        "caches off; compiled_step_ms: that median; graphs_compiled: graphs dynamo compiled over "
                        f"{args.steps} steps while an ExponentialLR schedule changed the step size every step",
              **provenance(device), "results": results}
    publish(report, args.out, None)


if __name__ == "__main__":
    main()
