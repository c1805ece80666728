"""Divergence: a gradient or hypergradient that became NaN or infinite, and learned values that left their range,
found on the device and recorded per run."""

from __future__ import annotations

import torch


class DivergenceError(FloatingPointError):
    """A hypergradient or a learned hyperparameter became NaN or infinite; nothing was updated in that step.

    Attributes:
        level: the level whose hyperparameter (or, at level 0 and the first step, whose weights' gradient) it is,
            0 being the weights' optimizer.
        optimizer: that level's optimizer's name.
        hyperparameter: the hyperparameter's name, or None for the weights' gradient.
        step: the step that was not taken.
        value: the value found.

    Example:
        ```python
        opt = hyperopt.stack("SGD(0.1)/SGD(1e-3)", model.parameters())
        x, y = batches[0]
        loss_fn(model(x), y).backward()
        next(model.parameters()).grad.fill_(float("inf"))
        try:
            opt.step()
        except hyperopt.DivergenceError as error:
            assert (error.level, error.step) == (0, 1)
        ```
    """

    def __init__(self, level: int, optimizer: str, hyperparameter: str | None, step: int, value: float):
        self.level, self.optimizer, self.hyperparameter, self.step, self.value = (
            level, optimizer, hyperparameter, step, value)
        what = "the gradient of its parameters" if hyperparameter is None else \
            f"the hypergradient of {hyperparameter!r}"
        super().__init__(
            f"level {level} ({optimizer}): {what} is {value} at step {step}. "
            "The training diverged; no weights or hyperparameters were changed in this step. Lower the step size "
            "of the level above (or the initial value of this one), or pass check_finite=False to train on anyway.")


class OutOfRangeWarning(UserWarning):
    """A learned value left the range its optimizer needs (a step size below 0: gradient ascent; a momentum or a β
    outside [0, 1)); said once per run. ``keep_in_range=True`` keeps such values at the edge instead.

    Example:
        ```python
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error", hyperopt.OutOfRangeWarning)   # a run stops at the first one
            opt = hyperopt.stack("SGD(0.1)/SGD(1e-3)", model.parameters())
            x, y = batches[0]
            loss_fn(model(x), y).backward()
            opt.step()
        ```
    """

    def __init__(self, level: int, optimizer: str, hyperparameter: str, step: int, value: float, kept: bool):
        self.level, self.optimizer, self.hyperparameter, self.step, self.value = (
            level, optimizer, hyperparameter, step, value)
        then = ("keep_in_range=True keeps it at the edge" if kept else
                "lower the step size of the level above, or pass keep_in_range=True to keep it at the edge")
        super().__init__(f"level {level} ({optimizer}): the learned {hyperparameter!r} is {value:g} after step "
                         f"{step}, outside {describe_range(hyperparameter)}; {then}")


def describe_range(name: str) -> str:
    return "[0, 1)" if name in UNIT_RANGE else "[0, ∞)"


UNIT_RANGE = {"momentum", "beta1", "beta2", "gamma"}


class Divergence:
    """Where each run of a stack diverged: the step (0 while it has not), the level and the hyperparameter, as
    tensors on the device updated in place, so that a step finds and records divergence without reading anything
    back (and a captured step can do the same)."""

    KEYS = ("step", "level", "hyperparameter")
    GRADIENT = -1  # the hyperparameter index that stands for the gradient of the weights

    def __init__(self, runs: int, device: torch.device):
        self.tensors = {key: torch.zeros(runs, dtype=torch.long, device=device) for key in self.KEYS}
        # the first learned value of each run that left its range, and that value
        self.left = {key: torch.zeros(runs, dtype=torch.long, device=device) for key in self.KEYS}
        self.left["value"] = torch.zeros(runs, dtype=torch.float64, device=device)
        self.left_range_said = False  # a lone run's, read on the host: once said, its ranges are not looked at

    def note(self, step: torch.Tensor, level: int, hypergradient: torch.Tensor, gradient: bool = False) -> None:
        """Record the runs whose hypergradient (runs, learned) at this level (or, `gradient`, whose sum of the
        weights' gradients, (runs, 1)) is not finite, unless they diverged before (the lowest level wins)."""
        bad = ~torch.isfinite(hypergradient)
        newly = bad.any(1) & (self.tensors["step"] == 0)
        which = torch.full_like(newly, self.GRADIENT, dtype=torch.long) if gradient else bad.int().argmax(1)
        for key, value in (("step", step.long()), ("level", level), ("hyperparameter", which)):
            self.tensors[key].copy_(torch.where(newly, value, self.tensors[key]))

    def note_left(self, step: torch.Tensor, outside: torch.Tensor, values: torch.Tensor, level, index=None) -> None:
        """Record the runs with a learned value (runs, columns) outside its range (`outside`, bool) for the first
        time. Column c holds hyperparameter index[c] of level level[c]: `level` a number where every column is of
        one level, and `index` None where the columns are one group's learned values in order."""
        newly = outside.any(1) & (self.left["step"] == 0)
        column = outside.int().argmax(1)
        found = {"step": step, "level": level if isinstance(level, int) else level[column],
                 "hyperparameter": column if index is None else index[column],
                 "value": values.gather(1, column.unsqueeze(1)).squeeze(1)}
        for key, new in found.items():
            kept = self.left[key]  # (written in place: each a kernel a step)
            if isinstance(new, int):
                kept.masked_fill_(newly, new)
            else:
                torch.where(newly, new.to(kept.dtype), kept, out=kept)

    def active(self) -> torch.Tensor:
        """(runs,) bool: the runs still training."""
        return self.tensors["step"] == 0

    def events(self) -> list[tuple[int, int, int, int]]:
        """(run, step, level, hyperparameter index) of each run that diverged; reads the device once."""
        steps, levels, which = (self.tensors[key].tolist() for key in self.KEYS)
        return [(run, step, level, index) for run, (step, level, index) in enumerate(zip(steps, levels, which))
                if step]

    def left_range(self) -> list[tuple[int, int, int, int, float]]:
        """(run, step, level, hyperparameter index, value) of each run whose learned value left its range."""
        steps, levels, which, values = (self.left[key].tolist() for key in (*self.KEYS, "value"))
        return [(run, *event) for run, event in enumerate(zip(steps, levels, which, values)) if event[0]]

    def state_dict(self) -> dict:
        return {**{key: value.clone() for key, value in self.tensors.items()},
                **{f"left_{key}": value.clone() for key, value in self.left.items()}}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():  # (a state saved before values' ranges were kept has no left_*)
            target = self.left[key[len("left_"):]] if key.startswith("left_") else self.tensors[key]
            target.copy_(value)
        self.left_range_said = bool((self.left["step"] != 0).all())
