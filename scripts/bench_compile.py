"""How long the whole step takes to compile, and then to run: our stacks with compile=True against
torch.compile(torch.optim.Adam(...).step), on ResNet-20, each against its own eager step, and on a GPU captured in a
CUDA graph too. Prints JSON (and writes it with --out).

Method: every configuration steps on fixed gradients (one batch's). Inductor's caches are off (every configuration
compiles from nothing); its compile time is the wall time of its first compiled step minus the median time of its
later steps, during which a schedule changes the step size every step: the compiled step must not compile again.
Its eager step is timed alike, on a fresh copy; on a GPU, so is the step under torch.compile(mode="reduce-overhead")
(without the schedule), which replays it as a CUDA graph once recorded. Times are medians over the later steps.
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


def prepared(name: str, device: torch.device):
    """The configuration's optimizer over a fresh ResNet-20 (seed 0), with one batch's gradients in place."""
    torch.manual_seed(0)
    model = resnet20().to(device)
    optimizer = CONFIGURATIONS[name](model.parameters())
    x, y = torch.rand(32, 3, 32, 32, device=device), torch.randint(0, 10, (32,), device=device)
    F.cross_entropy(model(x), y).backward()
    return optimizer


def step_times(step, steps: int, device: torch.device, schedule=None) -> list[float]:
    """The wall time of each of `steps` calls of `step` (the device synchronised around each)."""
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if schedule is not None:
            schedule.step()
    return times


def measure(name: str, steps: int, device: torch.device) -> dict:
    optimizer = prepared(name, device)
    eager = statistics.median(step_times(optimizer.step, steps, device,
                                         torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.999))[1:])
    optimizer = prepared(name, device)
    ours = isinstance(optimizer, hyperopt.Hyperoptimizer)
    if ours:
        optimizer.compile = True  # (the flag compile=True sets: the first two steps eager, then compiled)
        step = optimizer.step
    else:
        step = torch.compile(optimizer.step)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.999)
    step_times(step, 2 if ours else 0, device, schedule)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    times = step_times(step, steps, device, schedule)
    later = statistics.median(times[1:])
    result = {"configuration": name, "compile_s": times[0] - later, "compiled_step_ms": later * 1e3,
              "eager_step_ms": eager * 1e3, "compiled_vs_eager": later / eager,
              "graphs_compiled": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs}
    if device.type == "cuda":
        torch._dynamo.reset()
        optimizer = prepared(name, device)
        step_times(optimizer.step, 2 if ours else 0, device)  # (ours: the state made eagerly, as compile=True does)
        # recorded after its warm-up calls, then replayed: the median is a replay's
        captured = statistics.median(step_times(torch.compile(optimizer.step, mode="reduce-overhead"), steps,
                                                device)[steps // 2:])
        result.update(captured_step_ms=captured * 1e3, captured_vs_eager=captured / eager)
    return result


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
                        "caches off; compiled_step_ms: that median; eager_step_ms: the same for the eager step; "
                        "graphs_compiled: graphs dynamo compiled over "
                        f"{args.steps} steps while an ExponentialLR schedule changed the step size every step; "
                        "captured_step_ms (a GPU): the median of the second half of as many steps under "
                        "torch.compile(mode='reduce-overhead'), replays of a CUDA graph",
              **provenance(device), "results": results}
    publish(report, args.out, None)


if __name__ == "__main__":
    main()
