"""Divergence: a hypergradient that became NaN or infinite, found on the device and recorded per run."""

from __future__ import annotations

import torch


class DivergenceError(FloatingPointError):
    """A hypergradient or a learned hyperparameter became NaN or infinite; nothing was updated in that step."""

    def __init__(self, level: int, optimizer: str, hyperparameter: str, step: int, value: float):
        self.level, self.optimizer, self.hyperparameter, self.step, self.value = (
            level, optimizer, hyperparameter, step, value)
        super().__init__(
            f"level {level} ({optimizer}): the hypergradient of {hyperparameter!r} is {value} at step {step}. "
            "The training diverged; no weights or hyperparameters were changed in this step. Lower the step size "
            "of the level above (or the initial value of this one), or pass check_finite=False to train on anyway.")


class Divergence:
    """Where each run of a stack diverged: the step (0 while it has not), the level and the hyperparameter, as
    tensors on the device updated in place, so that a step finds and records divergence without reading anything
    back (and a captured step can do the same)."""

    KEYS = ("step", "level", "hyperparameter")

    def __init__(self, runs: int, device: torch.device):
        self.tensors = {key: torch.zeros(runs, dtype=torch.long, device=device) for key in self.KEYS}

    def note(self, step: torch.Tensor, level: int, hypergradient: torch.Tensor) -> None:
        """Record the runs whose hypergradient (runs, learned) at this level is not finite, unless they diverged
        before (the lowest level wins within a step)."""
        bad = ~torch.isfinite(hypergradient)
        newly = bad.any(1) & (self.tensors["step"] == 0)
        for key, value in (("step", step.long()), ("level", level), ("hyperparameter", bad.int().argmax(1))):
            self.tensors[key].copy_(torch.where(newly, value, self.tensors[key]))

    def active(self) -> torch.Tensor:
        """(runs,) bool: the runs still training."""
        return self.tensors["step"] == 0

    def events(self) -> list[tuple[int, int, int, int]]:
        """(run, step, level, hyperparameter index) of each run that diverged; reads the device once."""
        steps, levels, which = (self.tensors[key].tolist() for key in self.KEYS)
        return [(run, step, level, index) for run, (step, level, index) in enumerate(zip(steps, levels, which))
                if step]

    def state_dict(self) -> dict:
        return {key: value.clone() for key, value in self.tensors.items()}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            self.tensors[key].copy_(value)
