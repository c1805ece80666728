"""Run the robustness benchmark (every task, method, initial step size and seed; experiments/robustness.py) as the
project's own sweeps, three per task (the swept methods, the learning-rate-free ones at their defaults, the tuned
AdamW's trials), each in a fixed folder under --runs. Run the same command again after it was cut short and each
sweep skips its finished runs and resumes the interrupted ones; then make the table and figure:

    python scripts/run_robustness.py                       # all four tasks, 2 processes (about an hour on 2 cores)
    python scripts/run_robustness.py --tasks char_gpt --jobs 4 --launcher slurm
    python scripts/run_robustness.py --smoke --runs /tmp/smoke   # every task and method at tiny sizes
    python scripts/robustness.py runs/robustness
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from experiments.robustness import ALPHAS, METHODS, SEEDS, STUDIES, TRIALS, TASKS

ROOT = Path(__file__).resolve().parents[1]

FINISHED = ("ok", "diverged", "failed")
# --smoke: each task this small, two epochs, every method at one step size and one seed, one trial of one study
SMOKE = {
    "mnist_mlp": ["data.subset=512"],
    "char_lstm": ["data.subset=8000", "data.sequence_length=20"],
    "resnet20_cifar": ["data.subset=64", "data.test_subset=50"],
    "char_gpt": ["data.subset=8000", "data.sequence_length=20"],
    "mnist_mlp_long": ["data.subset=512"],
    "char_gpt_long": ["data.subset=8000", "data.sequence_length=20"],
}


def sweeps(task: str, smoke: bool) -> list[tuple[str, list[str], int]]:
    """(name, overrides, runs) of the task's three sweeps."""
    alphas = (ALPHAS[3],) if smoke else TASKS[task].alphas
    seeds, studies, trials = ((0,), (0,), 1) if smoke else (SEEDS, range(STUDIES), TRIALS)
    swept = [name for name, method in METHODS.items() if method.swept and method.runs_on(task)]
    free = [name for name, method in METHODS.items()
            if not method.swept and method.family == "free" and method.runs_on(task)]
    join = lambda values: ",".join(str(value) for value in values)  # noqa: E731
    return [
        # the method varies fastest (Hydra's last override), so that the methods' runs interleave in time and a
        # change in the machine's speed touches them alike
        ("swept", [f"seed={join(seeds)}", f"robustness.alpha={join(alphas)}", f"robustness.method={join(swept)}"],
         len(swept) * len(alphas) * len(seeds)),
        ("free", [f"seed={join(seeds)}", f"robustness.method={join(free)}"], len(free) * len(seeds)),
        ("tuned", ["robustness.method=tuned_adamw", f"robustness.trial={join(range(trials))}",
                   f"seed={join(studies)}"], trials * len(studies)),
    ]


def finished_runs(folder: Path) -> int:
    count = 0
    for path in folder.glob("*/summary.json"):
        try:
            count += json.loads(path.read_text()).get("status") in FINISHED
        except (OSError, ValueError):
            pass  # being replaced at this moment
    return count


def run_sweep(task: str, name: str, overrides: list[str], runs: int, folder: Path, args) -> int:
    """One sweep through train.py, its output in folder.log, a progress bar over its runs; its exit status."""
    folder.mkdir(parents=True, exist_ok=True)
    launcher = {"basic": [], "joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"],
                "slurm": ["hydra/launcher=slurm"]}[args.launcher]
    command = [sys.executable, str(ROOT / "experiments" / "train.py"), "-m", "+exp=robustness", f"task={task}",
               *overrides, *(SMOKE[task] + ["epochs=2"] if args.smoke else []), *launcher, "progress=false",
               f"hydra.sweep.dir={folder}"]
    # one thread per process: the machine's cores go to parallel runs, not to one run's small matrices
    env = dict(os.environ)
    if args.launcher == "joblib" and args.jobs > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    with open(folder.with_suffix(".log"), "a") as log, \
            tqdm(total=runs, desc=f"{task} {name}", unit="run", disable=not args.progress) as bar:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # (returns as soon as the sweep ends)
                process.wait(timeout=2)
            bar.update(min(runs, finished_runs(folder)) - bar.n)
        bar.update(min(runs, finished_runs(folder)) - bar.n)
    return process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "robustness", help="the sweeps' folders")
    parser.add_argument("--launcher", choices=("joblib", "basic", "slurm"), default="joblib")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, with the joblib launcher")
    parser.add_argument("--smoke", action="store_true", help="every task and method at tiny sizes")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    failed = []
    for task in tasks:
        for name, overrides, runs in sweeps(task, args.smoke):
            folder = args.runs / task / name
            if run_sweep(task, name, overrides, runs, folder, args) != 0:
                failed.append(f"{folder} (see {folder.with_suffix('.log')})")
    if failed:
        raise SystemExit("these sweeps had failed runs; run the same command again to retry them: " +
                         ", ".join(failed))
    print(f"done: python scripts/robustness.py {args.runs}")


if __name__ == "__main__":
    main()
