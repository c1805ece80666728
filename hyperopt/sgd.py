"""SGD(lr, momentum, weight_decay) as the reference code defines it: its update and its hypergradient terms.

The update's Jacobian is never made: ∂step/∂α is the buffer (or the gradient, without momentum) and ∂step/∂μ is
α·(the buffer before the update), so the hypergradient needs one dot product per learned value.
"""

from __future__ import annotations

from typing import Any

import torch

from .checks import numbers
from .hyperoptimizer import Hyperoptimizer, Params, Value
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
    if h["nesterov"]:  # the gradient plus μ times the new buffer, as torch.optim.SGD(nesterov=True) steps
        momentum = h["momentum"]
        if isinstance(momentum, torch.Tensor):
            return torch.addcmul(g, state["buf"], momentum), h["lr"]
        return g.add(state["buf"], alpha=momentum), h["lr"]
    return state["buf"], h["lr"]


def keep(h, learned, g, state):
    if not uses_momentum(h, learned):
        return {"grad_prev": g}
    kept = {"grad_prev": g} if h["nesterov"] else {}
    if "momentum" in learned and "buf" in state:
        kept["buf_prev"] = state["buf"]
    return kept


def hypergradient_dots(h, learned, state, u, dot):
    if h["nesterov"]:  # the step's direction g + μ b, from its parts
        sums = [dot(state["grad_prev"], u), dot(state["buf"], u)]
    else:
        sums = [dot(state["buf"] if "buf" in state else state["grad_prev"], u)]
    if "momentum" in learned and "buf_prev" in state:
        sums.append(dot(state["buf_prev"], u))
    elif "momentum" in learned:  # 0 after the first update, whose buffer had no past (a number where dot gives one)
        sums.append(torch.zeros_like(sums[0]) if isinstance(sums[0], torch.Tensor) else 0.0)
    return sums


def hypergradient_terms(h, learned, sums):
    if h["nesterov"]:
        # step = α (g + μ b), b = μ b_prev + g: ∂/∂α = g + μ b, ∂/∂μ = α (b + μ b_prev)
        g_u, b_u = sums[0], sums[1]
        terms = {"lr": g_u + h["momentum"] * b_u}
        if "momentum" in learned:
            terms["momentum"] = h["lr"] * (b_u + h["momentum"] * sums[2])
        return [terms[name] for name in learned]
    terms = {"lr": sums[0]}
    if "momentum" in learned:
        terms["momentum"] = h["lr"] * sums[1]
    return [terms[name] for name in learned]


class SGD(Hyperoptimizer):
    """SGD(lr, momentum, weight_decay, nesterov=False). As in the reference, momentum is used (and learned) only
    when it starts non-zero; pass ``learn=("lr", "momentum")`` to learn it from 0 as well. The buffer starts at the
    first gradient. Weight decay (not in the reference) adds weight_decay·w to the gradient, and nesterov=True
    steps along g + μ·buffer, as torch.optim.SGD does.

    Example:
        ```python
        opt = hyperopt.SGD(model.parameters(), lr=0.1, momentum=0.9, hyper=hyperopt.SGD(lr=1e-3))
        assert opt.learned(opt.param_groups[0]) == ("lr", "momentum")   # both learned: μ starts non-zero
        ```
    """

    NAME = "SGD"
    LEARNED_AS = {"lr": IDENTITY, "momentum": IDENTITY, "weight_decay": None}
    OPTIONS = {**Hyperoptimizer.OPTIONS, "nesterov": False}

    def __init__(self, params: Params = None, lr: Value = 0.01, momentum: Value = 0.0, weight_decay: Value = 0.0, *,
                 nesterov: bool = False, **options: Any):
        """
        Args:
            params: the tensors or param groups to optimize; None for a level above (see Hyperoptimizer).
            lr: the step size α (learned by a level above).
            momentum: μ, learned by a level above where it starts non-zero (as in the reference code);
                ``learn=("lr", "momentum")`` learns it from 0 too.
            weight_decay: λ, added to the gradient as λ·w, as torch.optim.SGD adds it; never learned.
            nesterov: step along g + μ·buffer, as torch.optim.SGD(nesterov=True).
            **options: every optimizer's options (hyper=, learn=, check_finite=, keep_in_range=, compile=,
                foreach=, maximize=, runs=, process_group=, log_lr=: see Hyperoptimizer).
        """
        super().__init__(params, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, **options)
    update, keep = staticmethod(update), staticmethod(keep)
    hypergradient_dots, hypergradient_terms = staticmethod(hypergradient_dots), staticmethod(hypergradient_terms)

    def check_options(self, group):
        if group["nesterov"] and not uses_momentum(group, self.learned(group)):
            raise ValueError("SGD: nesterov=True needs a momentum (as in torch.optim.SGD): give one, or learn it")

    @classmethod
    def default_learn(cls, values):
        return ("lr", "momentum") if any(numbers(values["momentum"])) else ("lr",)
