"""Arithmetic on a step's scalars (hyperparameters, bias corrections, the hypergradient's terms) that reads the same
for tensors and for Python numbers; a lone run on the CPU computes them in numbers (hyperopt/hypergradient.py)."""

from __future__ import annotations

import math

import torch


def divide(a, b):
    """a / b, with a tensor's answer where b is 0 (±inf, or NaN for 0 / 0) rather than Python's ZeroDivisionError."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or b != 0.0:
        return a / b
    if a == 0.0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)
