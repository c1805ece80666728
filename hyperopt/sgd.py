"""SGD(lr, momentum, weight_decay) as the reference code defines it: its update and its hypergradient terms.

The update's Jacobian is never made: ∂step/∂α is the buffer (or the gradient, without momentum) and ∂step/∂μ is
α·(the buffer before the update), so the hypergradient needs one dot product per learned value.
"""

from __future__ import annotations

import torch

from .checks import numbers
from .hyperoptimizer import Hyperoptimizer
from .parameterisations import IDENTITY


def uses_momentum(h: dict, learned: tuple[str, ...]) -> bool:
    # A learned (or per-run) momentum is in use even while its value is 0.
    return "momentum" in learned or isinstance(h["momentum"], torch.Tensor) or h["momentum"] != 0.0


def update(h, learned, g, state):
    if not uses_momentum(h, learned):
        return g, h["lr"]
    if "buf" in state:
        state["buf"].mul_(h["momentum"]).add_(g)
    else:
        state["buf"] = g.clone()
    return state["buf"], h["lr"]


def keep(h, learned, g, state):
    if not uses_momentum(h, learned):
        return {"grad_prev": g}
    if "momentum" in learned and "buf" in state:
        return {"buf_prev": state["buf"]}
    return {}


def hypergradient_dots(h, learned, state, u, dot):
    sums = [dot(state["buf"] if "buf" in state else state["grad_prev"], u)]
    if "momentum" in learned:  # 0 after the first update, whose buffer had no past
        sums.append(dot(state["buf_prev"], u) if "buf_prev" in state else torch.zeros_like(sums[0]))
    return sums


def hypergradient_terms(h, learned, sums):
    terms = {"lr": sums[0]}
    if "momentum" in learned:
        terms["momentum"] = h["lr"] * sums[1]
    return [terms[name] for name in learned]


class SGD(Hyperoptimizer):
    """SGD(lr, momentum, weight_decay). As in the reference, momentum is used (and learned) only when it starts
    non-zero; pass ``learn=("lr", "momentum")`` to learn it from 0 as well. The buffer starts at the first
    gradient. Weight decay (not in the reference) adds weight_decay·w to the gradient, as torch.optim.SGD does."""

    NAME = "SGD"
    HYPERPARAMETERS = {"lr": (0.01, IDENTITY, True), "momentum": (0.0, IDENTITY, True),
                       "weight_decay": (0.0, IDENTITY, False)}
    update, keep = staticmethod(update), staticmethod(keep)
    hypergradient_dots, hypergradient_terms = staticmethod(hypergradient_dots), staticmethod(hypergradient_terms)

    @classmethod
    def default_learn(cls, values):
        return ("lr", "momentum") if any(numbers(values["momentum"])) else ("lr",)
