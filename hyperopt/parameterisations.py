"""How a learned hyperparameter is stored: the reference code's choices (docs/reference-code.md).

A level above learns the raw value; the level below uses ``to_value(raw)``; the chain rule multiplies a
hypergradient by ``derivative(raw)``. ``to_raw`` runs once, on a Python number, when a group is made;
``scale_(raw, factor)``, where given, multiplies the value in place (Polyak's bound scales a step size).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .scalars import constant


class Parameterisation:
    def __init__(self, to_raw: Callable[[float], float], to_value: Callable, derivative: Callable,
                 scale_: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        self.to_raw, self.to_value, self.derivative, self.scale_ = to_raw, to_value, derivative, scale_


def _exp(raw):
    return raw.exp() if isinstance(raw, torch.Tensor) else math.exp(raw)


# The identity's derivative is None rather than 1, so that a hypergradient is not multiplied by 1.
IDENTITY = Parameterisation(lambda x: x, lambda raw: raw, lambda raw: None, lambda raw, factor: raw.mul_(factor))
# √α is stored so that α = (√α)² stays non-negative (the reference RMSProp).
SQUARE = Parameterisation(math.sqrt, lambda raw: raw * raw, lambda raw: 2.0 * raw,
                          lambda raw, factor: raw.mul_(factor.sqrt()))
# log α, with log_lr=True (not in the reference): a level above then moves α by a factor, and α stays above 0.
LOG = Parameterisation(math.log, _exp, _exp, lambda raw, factor: raw.add_(factor.log()))


def _unit_value(raw):
    # (tanh(x) + 1) / 2, as the reference writes it; on a tensor in one operation as 0.5 + 0.5 tanh(x), the same
    # bits (halving is exact)
    if not isinstance(raw, torch.Tensor):  # (a fixed value at the top of a stack goes there and back)
        return (math.tanh(raw) + 1.0) / 2.0
    return torch.add(constant((0.5,), raw.dtype, raw.device), raw.tanh(), alpha=0.5)


def _unit_derivative(raw):
    # (1 - tanh(x)²) / 2; on a tensor in one operation as 0.5 - 0.5 tanh(x)², the same bits on the CPU
    if not isinstance(raw, torch.Tensor):
        return (1.0 - math.tanh(raw) ** 2) / 2.0
    y = raw.tanh()
    return torch.addcmul(constant((0.5,), raw.dtype, raw.device), y, y, value=-0.5)


def _unit_raw(y):
    # atanh(2y - 1) as the reference's rounding gives it: -inf where 2y - 1 is -1 (a fixed β = 0, which torch.optim
    # accepts, or any β below about 1e-16), which reads back as 0
    x = 2.0 * y - 1.0
    return 0.5 * math.log((1.0 + x) / (1.0 - x)) if x > -1.0 else -math.inf


# β ∈ (0, 1) is stored as atanh(2β - 1) and read back as (tanh(x) + 1) / 2.
UNIT_INTERVAL = Parameterisation(_unit_raw, _unit_value, _unit_derivative)


def to_value_columns(kinds: list[Parameterisation], raw: torch.Tensor) -> list[torch.Tensor]:
    """Each column of raw (runs, learned) read back through its parameterisation (`kinds`, one per column), as
    (runs, 1) views."""
    columns = [raw[:, i:i + 1] for i in range(len(kinds))]
    for kind, block in blocks(kinds):
        converted = kind.to_value(raw[:, block])
        columns[block] = [converted[:, i:i + 1] for i in range(block.stop - block.start)]
    return columns


def times_derivatives(kinds: list[Parameterisation], raw: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
    """terms (runs, learned), each column multiplied in place by ∂value/∂raw of its parameterisation at raw."""
    for kind, block in blocks(kinds):
        terms[:, block].mul_(kind.derivative(raw[:, block]))
    return terms


def blocks(kinds: list[Parameterisation]) -> list[tuple[Parameterisation, slice]]:
    """The columns not stored as themselves, as runs of adjacent columns of one kind: each converted in one
    operation whatever its width (a kernel is a kernel however few values it has)."""
    found = []
    for i, kind in enumerate(kinds):
        if kind is IDENTITY:
            continue
        if found and found[-1][0] is kind and found[-1][1].stop == i:
            found[-1] = (kind, slice(found[-1][1].start, i + 1))
        else:
            found.append((kind, slice(i, i + 1)))
    return found
