"""AdaGrad(lr) as the reference code defines it (the accumulator starts at 0.1): its update and its hypergradient.

∂step/∂α is g / √(G + ε) with the accumulator G after the update: one dot product. The update, which divides by
√(G + ε) anyway, keeps that quotient for the next hypergradient (where a level above learns α), so that the
hypergradient is one pass over the tensors, not four, and steps by α times it: the reference's (α g) / √(G + ε)
to the last bit or so (3e-16 of the weights over 50 steps in float64), in two passes fewer.
"""

from __future__ import annotations

from typing import Any

import torch

from .hyperoptimizer import Hyperoptimizer, Params, Value
from .parameterisations import IDENTITY

EPS = 1e-10


def update(h, learned, g, state):
    if "sum" not in state:
        state["sum"] = torch.zeros_like(g) + 0.1
    root = state["sum"].addcmul_(g, g).add(EPS).sqrt_()
    if "grad_scaled" in state:
        return torch.div(g, root, out=state["grad_scaled"]), h["lr"]
    if learned:
        state["grad_scaled"] = g / root
        return state["grad_scaled"], h["lr"]
    return g / root, h["lr"]


def keep(h, learned, g, state):
    return {}


def hypergradient_dots(h, learned, state, u, dot):
    return [dot(state["grad_scaled"], u)]


def from_older(state):
    """A state saved before the update kept g / √(G + ε): made from the gradient it kept."""
    if "grad_prev" in state:
        state["grad_scaled"] = state.pop("grad_prev") / torch.sqrt(state["sum"] + EPS)


def hypergradient_terms(h, learned, sums):
    return sums


class AdaGrad(Hyperoptimizer):
    """AdaGrad(lr). The accumulator starts at 0.1, as in the reference.

    Example:
        ```python
        opt = hyperopt.AdaGrad(model.parameters(), lr=0.01, hyper=hyperopt.AdaGrad(lr=0.01))   # AdaGrad/AdaGrad
        ```
    """

    NAME = "AdaGrad"
    EPSILON = EPS
    LEARNED_AS = {"lr": IDENTITY}

    def __init__(self, params: Params = None, lr: Value = 0.01, **options: Any):
        """
        Args:
            params: the tensors or param groups to optimize; None for a level above (see Hyperoptimizer).
            lr: the step size α (learned by a level above).
            **options: every optimizer's options (hyper=, learn=, check_finite=, keep_in_range=, compile=,
                foreach=, maximize=, runs=, process_group=, log_lr=: see Hyperoptimizer).
        """
        super().__init__(params, lr, **options)
    update, keep, from_older = staticmethod(update), staticmethod(keep), staticmethod(from_older)
    hypergradient_dots, hypergradient_terms = staticmethod(hypergradient_dots), staticmethod(hypergradient_terms)
