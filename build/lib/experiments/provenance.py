"""Where a result came from: the commit, the library versions and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_state() -> dict:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "hydra", "omegaconf", "numpy", "wandb"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "unknown")
    return found


def machine(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    described = {"device": str(device), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                 "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


def provenance(device: torch.device | str = "cpu") -> dict:
    return {"git": git_state(), "versions": versions(), "machine": machine(device), "command": sys.argv}

