"""Running the Hydra harness as a user does: composing configs, and train.py in a subprocess."""

import os
import subprocess
import sys

from hydra import compose, initialize_config_dir

from experiments.config import register_configs
from tests.conftest import ROOT, data_root

SMOKE = ["epochs=1", "data.subset=512"]
register_configs()


def compose_experiment(name: str, overrides=()):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=[f"+exp={name}", *overrides])


def train(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYPEROPT_DATA_ROOT": str(data_root()), "WANDB_SILENT": "true"}
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), *overrides], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
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
