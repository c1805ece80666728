"""Running the Hydra harness as a user does: composing configs, train.py's command (in this process, as Hydra runs it
from the command line; a test that must kill a run starts its own process) and the scripts."""

import contextlib
import io
import logging
import os
import subprocess
import sys
from unittest import mock

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from experiments.config import register_configs
from tests.conftest import ROOT, data_root

SMOKE = ["epochs=1", "data.subset=512"]
register_configs()


def compose_experiment(name: str, overrides=()):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=[f"+exp={name}", *overrides])


def train(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python experiments/train.py OVERRIDES` run by Hydra in this process (its run folder, its train.log, its
    exit status; some 3 s faster a run than a subprocess), what it printed captured. What Hydra and the run set
    for the whole process (the root logger's handlers, torch's threads, the environment) is put back after."""
    from experiments.loop import main
    root, threads = logging.getLogger(), torch.get_num_threads()
    kept = (list(root.handlers), root.level)
    output, errors, status = io.StringIO(), io.StringIO(), 0
    environment = {"HYPEROPT_DATA_ROOT": str(data_root()), "WANDB_SILENT": "true"}
    GlobalHydra.instance().clear()
    try:
        with mock.patch.dict(os.environ, environment), mock.patch.object(sys, "argv", ["train.py", *overrides]), \
                contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
            main()
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in kept[0]:
                handler.close()
        root.handlers[:] = kept[0]
        root.setLevel(kept[1])
        torch.set_num_threads(threads)
    result = subprocess.CompletedProcess(["train.py", *overrides], status, output.getvalue(), errors.getvalue())
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def script(name: str, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    """python scripts/NAME.py ARGUMENTS, as a user runs it."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *arguments], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result
