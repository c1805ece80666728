"""AdamW(lr, beta1, beta2, eps, weight_decay) as torch.optim.AdamW defines it (v starts at 0, decay decoupled
from the gradient): its update and its hypergradient terms; the step size and the decay can be learned.

The step is ``x ← x (1 - αλ) - α m̂ / (√v̂ + ε)``. The decay's part of the hypergradient is the decoupled decay's
(hypergradient.decoupled_decay_terms); what is left, α's term of Adam's own step, is m·w / (1 - β1^t) with
w = u / (√v̂ + ε), as in adam.py.
"""

from __future__ import annotations

from typing import Any

import math

import torch

from . import adam
from .hyperoptimizer import Hyperoptimizer, Params, Value
from .parameterisations import IDENTITY
from .scalars import divide


def step_scalars(h, t):
    scalars = adam.step_scalars(h, t)
    c2 = scalars["beta2_correction"]
    scalars["beta2_correction_root"] = c2.sqrt() if isinstance(c2, torch.Tensor) else math.sqrt(c2)
    return scalars


def update(h, learned, g, state):
    if "m" not in state:
        state["m"], state["v"] = torch.zeros_like(g), torch.zeros_like(g)
    m, v = state["m"], state["v"]
    m.lerp_(g, h["beta1_weight"])
    # torch.optim.AdamW's order of operations; value= takes a number, where a tensor would be read back to the
    # host (on a GPU, a wait), so a tensor weight joins a factor instead: (w g) g, the same product to the bit
    weight = h["beta2_weight"]
    if isinstance(weight, torch.Tensor):
        v.mul_(h["beta2"]).addcmul_(g * weight, g)
    else:
        v.mul_(h["beta2"]).addcmul_(g, g, value=weight)
    denominator = (v.sqrt() / h["beta2_correction_root"]).add_(h["eps"])
    return m / denominator, h["step_size"]


def keep(h, learned, g, state):
    return {}


def hypergradient_dots(h, learned, state, u, dot):
    denominator = (state["v"].sqrt() / h["beta2_correction_root"]).add_(h["eps"])
    return [dot(state["m"], u / denominator)]


def hypergradient_terms(h, learned, sums):
    # ∂(Adam's step)/∂α; the decay's terms are added to it by the decoupled decay
    return [divide(sums[0], h["beta1_correction"]) if name == "lr" else 0.0 for name in learned]


class AdamW(Hyperoptimizer):
    """AdamW(lr, beta1, beta2, eps, weight_decay): torch.optim.AdamW, step for step, when nothing is learned. A
    level above learns its step size (``learn=("lr",)``, the default) and, if asked, its weight decay
    (``learn=("lr", "weight_decay")``); its betas are fixed.

    Example:
        ```python
        opt = hyperopt.AdamW(model.parameters(), 1e-3, weight_decay=0.01, hyper=hyperopt.Adam(lr=1e-3))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)   # scales the learned step size
        ```
    """

    NAME = "AdamW"
    LEARNED_AS = {"lr": IDENTITY, "beta1": None, "beta2": None, "eps": None, "weight_decay": IDENTITY}

    def __init__(self, params: Params = None, lr: Value = 1e-3, beta1: Value = 0.9, beta2: Value = 0.999,
                 eps: Value = 1e-8, weight_decay: Value = 1e-2, *, betas: tuple[float, float] | None = None,
                 **options: Any):
        """
        Args:
            params: the tensors or param groups to optimize; None for a level above (see Hyperoptimizer).
            lr: the step size α (learned by a level above).
            beta1: β1, as torch.optim.AdamW's; never learned.
            beta2: β2, as torch.optim.AdamW's; never learned.
            eps: ε, added to √v̂; never learned. v starts at 0, as torch.optim.AdamW's.
            weight_decay: λ, decoupled: the step shrinks the weights by 1 - αλ. Learned with α where
                ``learn=("lr", "weight_decay")``.
            betas: torch.optim's spelling, (β1, β2), in place of beta1= and beta2=.
            **options: every optimizer's options (hyper=, learn=, check_finite=, keep_in_range=, compile=,
                foreach=, maximize=, runs=, process_group=, log_lr=: see Hyperoptimizer).
        """
        super().__init__(params, lr, beta1=beta1, beta2=beta2, betas=betas, eps=eps,
                         weight_decay=weight_decay, **options)
    DECOUPLED_DECAY = True
    step_scalars, update, keep = staticmethod(step_scalars), staticmethod(update), staticmethod(keep)
    hypergradient_dots, hypergradient_terms = staticmethod(hypergradient_dots), staticmethod(hypergradient_terms)

    @classmethod
    def default_learn(cls, values):
        return ("lr",)
