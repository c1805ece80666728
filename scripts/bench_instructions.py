"""Machine instructions one optimizer step executes on the CPU, counted by valgrind's cachegrind, not timed: the
same count on every run, where a timing of the MNIST MLP's step wanders by several percent from run to run, more
than most changes to the step's bookkeeping move it. Prints JSON (and writes it with --out).

Method: each configuration runs in a child process under cachegrind twice, taking (after one forward and backward
and 5 steps) `--steps` steps of the optimizer alone and then `--steps` more; the difference between the two counts,
divided by the steps between them, is one step's, free of what importing torch and building the model cost. What
would make two processes count the same step differently is fixed: the objects made before the steps are frozen out
of Python's collector (its passes over them land in one count and not the other), BLAS and OpenMP run on one thread
(their spinning is counted), and Python's string hashes have a fixed seed (their collisions in dicts move a step's
count by a tenth). Two processes then count the same step within a few hundred instructions. The share executed in
the Python interpreter's own code (CPython's sources, where its build names them) is the step's bookkeeping in
Python; the rest is torch (dispatch and the kernels' arithmetic) and the C library. Each floor (scripts/bench_floor.py)
is the least its stack's arithmetic needs.

With --whole, the whole training step instead (forward, backward and step, on a fixed batch), against the paper's
reference code's, whose hypergradient is built in the backward (create_graph=True), so that only whole steps
compare; and the forward and backward alone, what every optimizer's step adds to. Instructions are not time: the
goals are timed (bench_overhead.py), and docs/speed.md sets the two side by side.

Needs valgrind (apt-get install valgrind); a child alone (--child NAME) runs without it.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # (run as a script, in a child process too)
    sys.path.insert(0, str(ROOT))

import hyperopt  # noqa: E402
from experiments.provenance import provenance  # noqa: E402
from experiments.reports import publish  # noqa: E402
from models import MLP  # noqa: E402
from scripts.bench_floor import STACKS  # noqa: E402

CONFIGURATIONS = {
    "torch.optim.SGD(0.01)": STACKS["SGD(0.01)/SGD(0.01)"][0],
    "floor SGD(0.01)/SGD(0.01)": STACKS["SGD(0.01)/SGD(0.01)"][1],
    "SGD(0.01)": "SGD(0.01)",
    "SGD(0.01)/SGD(0.01)": "SGD(0.01)/SGD(0.01)",
    "SGD(0.01)/SGD(0.01)/SGD(0.01)/SGD(0.01)": "SGD(0.01)/SGD(0.01)/SGD(0.01)/SGD(0.01)",
    "AdaGrad/SGD(0.01)": "AdaGrad/SGD(0.01)",
    "torch.optim.Adam": STACKS["Adam/SGD(1e-5)"][0],
    "floor Adam/SGD(1e-5)": STACKS["Adam/SGD(1e-5)"][1],
    "Adam/SGD(1e-5)": "Adam/SGD(1e-5)",
    "torch.optim.RMSprop": STACKS["RMSProp/SGD(1e-4)"][0],
    "floor RMSProp/SGD(1e-4)": STACKS["RMSProp/SGD(1e-4)"][1],
    "RMSProp/SGD(1e-4)": "RMSProp/SGD(1e-4)",
}
# The whole step's: a stack in the paper's notation, ("reference", a stack) for the reference code's, a torch.optim
# optimizer's maker, or None for the forward and backward alone
WHOLE = {
    "forward and backward alone": None,
    "torch.optim.SGD(0.01)": CONFIGURATIONS["torch.optim.SGD(0.01)"],
    "SGD(0.01)/SGD(0.01)": "SGD(0.01)/SGD(0.01)",
    "reference SGD(0.01)/SGD(0.01)": ("reference", "SGD(0.01)/SGD(0.01)"),
    "SGD(0.01)/SGD(0.01)/SGD(0.01)/SGD(0.01)": "SGD(0.01)/SGD(0.01)/SGD(0.01)/SGD(0.01)",
    "reference SGD(0.01)/SGD(0.01)/SGD(0.01)/SGD(0.01)": ("reference", "SGD(0.01)/SGD(0.01)/SGD(0.01)/SGD(0.01)"),
}
# CPython's source tree, as a build with debug information names its files
INTERPRETER = ("/Python/", "/Objects/", "/Modules/", "/Include/", "/Parser/")
# (see Method above)
REPEATABLE = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
WARM_UP = 5


def child(name: str, steps: int, whole: bool = False) -> None:
    """The configuration's optimizer on the MNIST MLP (batch 256): one forward and backward, WARM_UP steps, then
    `steps` steps alone (the same gradients each time); with `whole`, WARM_UP whole training steps and then
    `steps` more."""
    torch.manual_seed(0)
    model = MLP()
    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    step = whole_step(WHOLE[name], model, x, y) if whole else step_alone(CONFIGURATIONS[name], model, x, y)
    for _ in range(WARM_UP):
        step()
    # (Python's collector going through every object torch made on import costs millions of instructions, at steps
    # no count can predict: what is there before the steps is set aside)
    gc.collect()
    gc.freeze()
    for _ in range(steps):
        step()


def optimizer_of(make, model: torch.nn.Module):
    return hyperopt.stack(make, model.parameters()) if isinstance(make, str) else make(model.parameters())


def step_alone(make, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = optimizer_of(make, model)
    optimizer.zero_grad()
    F.nll_loss(model(x), y).backward()
    return optimizer.step


def whole_step(make, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    if isinstance(make, tuple):  # the reference code's, as its README steps it
        from experiments.reference import reference_step
        return functools.partial(reference_step(make[1], model)[1], x, y)
    optimizer = None if make is None else optimizer_of(make, model)

    def step():
        loss = F.nll_loss(model(x), y)
        model.zero_grad()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
    return step


def counted(path: Path) -> tuple[int, int | None]:
    """(all instructions, those in the interpreter's own sources, or None where no file names one) of a
    cachegrind output file (events: Ir)."""
    total, interpreter, named, in_interpreter = None, 0, False, False
    for line in path.read_text().splitlines():
        if line.startswith("fl="):
            in_interpreter = any(part in line for part in INTERPRETER)
            named = named or in_interpreter
        elif line.startswith("summary:"):
            total = int(line.split()[1])
        elif line[:1].isdigit() and in_interpreter:
            interpreter += int(line.split()[1])
    if total is None:
        raise ValueError(f"{path} is not a whole cachegrind output file (no summary line): was the run cut short?")
    return total, interpreter if named else None


def run_counted(name: str, steps: int, folder: Path, whole: bool = False) -> tuple[int, int | None]:
    """The counts of one child under cachegrind."""
    out = folder / f"{abs(hash(name))}_{steps}.out"
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}", sys.executable,
               str(Path(__file__).resolve()), "--child", name, "--steps", str(steps)] + ["--whole"] * whole
    done = subprocess.run(command, env={**os.environ, **REPEATABLE}, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: the child failed under valgrind ({done.returncode}):\n{done.stderr[-2000:]}")
    return counted(out)


def per_step(name: str, steps: int, folder: Path, whole: bool = False) -> dict:
    """One step's instructions: the difference between `steps` and 2 × `steps` steps, over `steps`."""
    (few, few_python), (many, many_python) = (run_counted(name, n, folder, whole) for n in (steps, 2 * steps))
    instructions = (many - few) / steps
    python = None if few_python is None else (many_python - few_python) / steps
    return {"configuration": name, "instructions": round(instructions),
            "in_interpreter": None if python is None else round(python),
            "interpreter_share": None if python is None else round(python / instructions, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="steps between the two counts (50; with --whole, 10)")
    parser.add_argument("--only", nargs="*", help="these configurations alone")
    parser.add_argument("--whole", action="store_true",
                        help="the whole training step (forward, backward, step), the reference code's among them")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--page", type=Path, help="also put the Markdown table into this documentation page's block")
    args = parser.parse_args()
    steps = args.steps or (10 if args.whole else 50)
    if args.child is not None:
        child(args.child, steps, args.whole)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind (it counts the instructions)")
    known = WHOLE if args.whole else CONFIGURATIONS
    names = args.only or list(known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"no configuration {unknown}; there are {list(known)}")
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda name: per_step(name, steps, Path(folder), args.whole), names))
    what = ("one whole training step (forward, backward, step; the reference code's hypergradient is built in its "
            "backward)" if args.whole else "one optimizer step alone")
    report = {
        "benchmark": f"machine instructions of {what}, MNIST MLP 784-128-10, batch 256, on the CPU (valgrind's "
                     "cachegrind); in_interpreter: those in the Python interpreter's own code, the bookkeeping in "
                     "Python",
        "method": f"each configuration counted twice in a child process, {steps} and {2 * steps} steps "
                  f"after {WARM_UP} warm-up steps, the difference over {steps}; BLAS and OpenMP on one thread, "
                  "PYTHONHASHSEED=0: repeatable",
        **provenance("cpu"),
        "results": results,
    }
    publish(report, args.out, args.page)


if __name__ == "__main__":
    main()
