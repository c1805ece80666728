"""RMSProp(lr, gamma) as the reference code defines it (α stored as √α, γ as atanh(2γ - 1)): its update and its
hypergradient terms.

With w = g / √(s + ε) (s after the update): ∂step/∂α = w and ∂step/∂γ = -α / (2γ) · w (s - g²) / (s + ε), so the
hypergradient needs the dot products w·u and (w (s - g²) / (s + ε))·u. The update, which divides by √(s + ε) anyway,
keeps w for the next hypergradient (as AdaGrad keeps its quotient), and (s - g²) / (s + ε) is s / (s + ε) - w²: no
square root, and no gradient kept.
"""

from __future__ import annotations

from typing import Any

import torch

from .hyperoptimizer import Hyperoptimizer, Params, Value
from .parameterisations import SQUARE, UNIT_INTERVAL
from .scalars import divide, nonzero

EPS = 1e-8


def step_scalars(h, t):
    return {"gamma_weight": 1.0 - h["gamma"]}  # the weight of the new g², once per group


def update(h, learned, g, state):
    if "square_avg" not in state:
        state["square_avg"] = torch.zeros_like(g)
    square_average = state["square_avg"].mul_(h["gamma"]).add_(h["gamma_weight"] * (g * g))
    root = (square_average + EPS).sqrt_()
    if "grad_scaled" in state:
        torch.div(g, root, out=state["grad_scaled"])
    elif learned:
        state["grad_scaled"] = g / root
    # α·g first, as the reference: its first steps are near α·sign(g) (s starts at 0), which amplifies the last
    # bit of (g / √s)·α against (α·g) / √s past 1e-9 of the weights within 30 steps on MNIST
    return (h["lr"] * g).div_(root), 1.0


def keep(h, learned, g, state):
    return {}


def hypergradient_dots(h, learned, state, u, dot):
    w, square_average = state["grad_scaled"], state["square_avg"]
    sums = [dot(w, u)]
    if "gamma" in learned:
        shifted = square_average + EPS
        sums.append(dot(torch.div(square_average, shifted, out=shifted).addcmul_(w, w, value=-1.0).mul_(w), u))
    return sums


def from_older(state):
    """A state saved before the update kept g / √(s + ε): made from the gradient it kept."""
    if "grad_prev" in state:
        state["grad_scaled"] = state.pop("grad_prev") / torch.sqrt(state["square_avg"] + EPS)


def hypergradient_terms(h, learned, sums):
    terms = {"lr": sums[0]}
    if "gamma" in learned:
        gamma = h["gamma"]
        term = divide(-h["lr"] * sums[1], 2.0 * nonzero(gamma))
        # 0 where γ is 0, as s is g² there: s / (s + ε) - w² is that 0 only to rounding, which 1 / nonzero(0) would
        # magnify past any number
        terms["gamma"] = torch.where(gamma == 0.0, 0.0, term) if isinstance(gamma, torch.Tensor) else (
            term if gamma != 0.0 else 0.0)
    return [terms[name] for name in learned]


class RMSProp(Hyperoptimizer):
    """RMSProp(lr, gamma). While learned, α is stored as √α and γ as atanh(2γ - 1), as in the reference.
    ``learn=("lr",)`` is the paper's RMSProp^α (the reference's RMSPropAlpha).

    Example:
        ```python
        opt = hyperopt.RMSProp(model.parameters(), lr=0.01, gamma=0.99, hyper=hyperopt.SGD(lr=1e-4))
        assert abs(opt.hyperparameters()[0]["lr"] - 0.01) < 1e-8   # stored as √α, read back as (√α)²
        ```
    """

    NAME = "RMSProp"
    EPSILON = EPS
    LEARNED_AS = {"lr": SQUARE, "gamma": UNIT_INTERVAL}

    def __init__(self, params: Params = None, lr: Value = 0.01, gamma: Value = 0.99, **options: Any):
        """
        Args:
            params: the tensors or param groups to optimize; None for a level above (see Hyperoptimizer).
            lr: the step size α (learned by a level above, stored as √α).
            gamma: γ, the decay of the squared gradient's average (learned, stored as atanh(2γ - 1)).
            **options: every optimizer's options (hyper=, learn=, check_finite=, keep_in_range=, compile=,
                foreach=, maximize=, runs=, process_group=, log_lr=: see Hyperoptimizer).
        """
        super().__init__(params, lr, gamma=gamma, **options)
    step_scalars, update, keep = staticmethod(step_scalars), staticmethod(update), staticmethod(keep)
    from_older = staticmethod(from_older)
    hypergradient_dots, hypergradient_terms = staticmethod(hypergradient_dots), staticmethod(hypergradient_terms)
