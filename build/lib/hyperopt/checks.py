"""The checks of an optimizer's hyperparameter values and of what it learns, with messages that say what to fix."""

from __future__ import annotations

import math

import torch

from .parameterisations import UNIT_INTERVAL


def per_hyperparameter(value) -> bool:
    """A value per hyperparameter of the level below ({name: number}), or in a stack of runs one such per run."""
    return isinstance(value, dict) or isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, dict) for v in value)


def numbers(value) -> list:
    """Every number a value holds: one, one per run, one per hyperparameter below (per run)."""
    if isinstance(value, dict):
        return [float(v) for v in value.values()]
    if per_hyperparameter(value):
        return [number for per_run in value for number in numbers(per_run)]
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, (list, tuple)):
        return [float(v) if isinstance(v, (int, float)) else v for v in value]
    return [value]


def check_values(optimizer: str, hyperparameters: dict, values: dict, learned=()) -> None:
    for name, (_, parameterisation, _) in hyperparameters.items():
        value = values[name]
        for number in numbers(value):
            if not isinstance(number, (int, float)) or not math.isfinite(number):
                raise ValueError(f"{optimizer}: {name} must be a finite number, not {value}")
            if parameterisation is UNIT_INTERVAL and name in learned and not 0.0 < number < 1.0:
                raise ValueError(f"{optimizer}: {name} must lie strictly between 0 and 1 while it is learned (it is "
                                 f"stored as atanh(2·{name} - 1)), not {value}")
            if parameterisation is UNIT_INTERVAL and not 0.0 <= number < 1.0:
                raise ValueError(f"{optimizer}: {name} must lie in [0, 1), not {value}")
            if parameterisation is not UNIT_INTERVAL and number < 0.0:
                raise ValueError(f"{optimizer}: {name} must not be negative, not {value}")


def check_learn(optimizer: str, hyperparameters: dict, learn) -> None:
    for name in learn:
        if name not in hyperparameters or not hyperparameters[name][2]:
            learnable = [n for n, (_, _, ok) in hyperparameters.items() if ok]
            raise ValueError(f"{optimizer} cannot learn {name!r}; it can learn {learnable}")
