"""Arithmetic on a step's scalars (hyperparameters, bias corrections, the hypergradient's terms) that reads the same
for tensors and for Python numbers (a lone run on the CPU computes them in numbers: hyperopt/hypergradient.py), and
the making of fixed numbers into tensors on the device."""

from __future__ import annotations

import functools
import math
import sys

import torch


def divide(a, b):
    """a / b, with a tensor's answer where b is 0 (±inf, or NaN for 0 / 0) rather than Python's ZeroDivisionError."""
    try:  # (only numbers raise: a tensor's division by 0 gives the tensor's answer; a try costs nothing unless raised)
        return a / b
    except ZeroDivisionError:
        pass
    if a == 0.0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def nonzero(beta):
    """β as a divisor: β, or the smallest normal number of its dtype where β is 0.

    A β stored as atanh(2β - 1) is exactly 0 once that is below about -9 in float32 (-19 in float64), and the
    derivative of its parameterisation is exactly 0 there too: the reference's autograd gives the stored value a
    hypergradient of 0. A term that recovers β's old average from the new one, (new - g) / β, would be 0 / 0 there
    (the new average is then g to the bit); over this divisor it is 0, which the chain rule multiplies by that 0.
    Any other β is itself: (tanh(x) + 1) / 2 is 0 or above 1e-17, far above the smallest normal number."""
    if isinstance(beta, torch.Tensor):
        return beta.clamp_min(torch.finfo(beta.dtype).tiny)
    return max(beta, sys.float_info.min)


def constant(numbers: tuple, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """Fixed numbers as one tensor, made once rather than once a step (a fixed value is the same at every step);
    only ever read. Compiled, a constant of the graph (dynamo would trace through the cache)."""
    make = _constant.__wrapped__ if torch.compiler.is_compiling() else _constant
    return make(numbers, dtype, device)


@functools.lru_cache(maxsize=256)
def _constant(numbers: tuple, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    return on_device(numbers, dtype, device)


def on_device(numbers: tuple, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    """Numbers as a tensor on the device without waiting for it: on a GPU, torch.tensor's copy from the host
    waits for every kernel queued before it (it synchronises the stream); filling a tensor does not."""
    if device is None or torch.device(device).type == "cpu":
        return torch.tensor(numbers, dtype=dtype, device=device)
    if not numbers:
        return torch.empty(0, dtype=dtype, device=device)
    return torch.stack([torch.full((), number, dtype=dtype, device=device) for number in numbers])
