"""How a learned hyperparameter is stored: the reference code's choices (docs/reference-code.md).

A level above learns the raw value; the level below uses ``to_value(raw)``; the chain rule multiplies a
hypergradient by ``derivative(raw)``. ``to_raw`` runs once, on a Python number, when a group is made.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


class Parameterisation:
    def __init__(self, to_raw: Callable[[float], float], to_value: Callable, derivative: Callable):
        self.to_raw, self.to_value, self.derivative = to_raw, to_value, derivative


def _exp(raw):
    return raw.exp() if isinstance(raw, torch.Tensor) else math.exp(raw)


def _tanh(raw):
    # also on a Python number: a fixed value at the top of a stack goes through its parameterisation and back
    return raw.tanh() if isinstance(raw, torch.Tensor) else math.tanh(raw)


# The identity's derivative is None rather than 1, so that a hypergradient is not multiplied by 1.
IDENTITY = Parameterisation(lambda x: x, lambda raw: raw, lambda raw: None)
# √α is stored so that α = (√α)² stays non-negative (the reference RMSProp).
SQUARE = Parameterisation(math.sqrt, lambda raw: raw * raw, lambda raw: 2.0 * raw)
# log α, with log_lr=True (not in the reference): a level above then moves α by a factor, and α stays above 0.
LOG = Parameterisation(math.log, _exp, _exp)
# β ∈ (0, 1) is stored as atanh(2β - 1) and read back as (tanh(x) + 1) / 2, written as the reference writes it.
# (A fixed β = 0, which torch.optim accepts, is -inf stored and 0 read back.)
UNIT_INTERVAL = Parameterisation(
    lambda y: 0.5 * math.log((1.0 + (2.0 * y - 1.0)) / (1.0 - (2.0 * y - 1.0))) if y > 0.0 else -math.inf,
    lambda raw: (_tanh(raw) + 1.0) / 2.0,
    lambda raw: (1.0 - _tanh(raw) ** 2) / 2.0)
