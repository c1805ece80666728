"""Adam(lr, beta1, beta2, eps) as the reference code defines it (v starts at ε; β stored as atanh(2β - 1)): its
update and its hypergradient terms.

The update is α m̂ / (√v̂ + ε). Its Jacobian is never made: with w = u / (√v̂ + ε), α's term is m·w / (1 - β1^t),
and β1's and β2's follow from g·w, q·v and (q g)·g with q = m w / ((√v̂ + ε) √v̂), g the last gradient.
"""

from __future__ import annotations

from typing import Any

import torch

from .hyperoptimizer import Hyperoptimizer, Params, Value
from .parameterisations import IDENTITY, UNIT_INTERVAL
from .scalars import constant, divide, nonzero


def step_scalars(h, t):
    # The bias corrections and their slopes, the weights 1 - β of the new gradient in m and v, β as the divisor of
    # the hypergradient's terms, and α / (1 - β1^t): once per group rather than per tensor. As tensors, both β at
    # once: the same arithmetic in half the kernels.
    beta1, beta2 = h["beta1"], h["beta2"]
    pair = both(beta1, beta2, t) if isinstance(t, torch.Tensor) else None
    if pair is None:
        (c1, slope1), (c2, slope2) = corrections(beta1, t), corrections(beta2, t)
    else:
        (c1, c2), (slope1, slope2) = (value.unbind() for value in corrections(pair, t))
    if pair is not None and isinstance(beta1, torch.Tensor):
        (weight1, weight2), (divisor1, divisor2) = (1.0 - pair).unbind(), nonzero(pair).unbind()
    else:
        weight1, weight2, divisor1, divisor2 = 1.0 - beta1, 1.0 - beta2, nonzero(beta1), nonzero(beta2)
    return {"beta1_correction": c1, "beta1_slope": slope1, "beta1_weight": weight1, "beta1_divisor": divisor1,
            "beta2_correction": c2, "beta2_slope": slope2, "beta2_weight": weight2, "beta2_divisor": divisor2,
            "step_size": divide(h["lr"], c1)}


def corrections(beta, t):
    """The bias correction 1 - β^t and its slope t β^(t-1) / (1 - β^t), as the reference computes them."""
    correction = 1.0 - beta ** t
    return correction, divide(t * beta ** (t - 1), correction)


def both(beta1, beta2, t: torch.Tensor) -> torch.Tensor | None:
    """β1 and β2 stacked into one tensor, where they are alike (both learned, or both fixed numbers); else None."""
    if isinstance(beta1, torch.Tensor) and isinstance(beta2, torch.Tensor) and beta1.shape == beta2.shape:
        return torch.stack((beta1, beta2))
    if isinstance(beta1, float) and isinstance(beta2, float):
        return constant((beta1, beta2), t.dtype, t.device)
    return None


def update(h, learned, g, state):
    if "m" not in state:
        state["m"], state["v"] = torch.zeros_like(g), torch.zeros_like(g) + h["eps"]
    m, v = state["m"], state["v"]
    # β m + (1 - β) g as m + (1 - β)(g - m), one pass over the tensor (as torch.optim.Adam), likewise for v
    m.lerp_(g, h["beta1_weight"])
    v.lerp_(g * g, h["beta2_weight"])
    denominator = (v / h["beta2_correction"]).sqrt_().add_(h["eps"])
    return m / denominator, h["step_size"]


def keep(h, learned, g, state):
    return {"grad_prev": g} if "beta1" in learned or "beta2" in learned else {}


def hypergradient_dots(h, learned, state, u, dot):
    m, v = state["m"], state["v"]
    root = (v / h["beta2_correction"]).sqrt_()
    denominator = root + h["eps"]
    w = u / denominator
    sums = [dot(m, w)]
    if "beta1" in learned or "beta2" in learned:
        g = state["grad_prev"]
    if "beta1" in learned:
        sums.append(dot(g, w))
    if "beta2" in learned:
        q = w.mul_(m).div_(denominator.mul_(root))
        # q·g² as q·(g g), not (q g)·g: where β2 is 0, v is g g to the bit and the two sums cancel exactly
        sums += [dot(q, v), dot(q, torch.mul(g, g, out=root))]
    return sums


def hypergradient_terms(h, learned, sums):
    m_w, rest = sums[0], list(sums[1:])
    step_size, c2 = h["step_size"], h["beta2_correction"]  # step_size: α / (1 - β1^t)
    terms = {"lr": divide(m_w, h["beta1_correction"])}
    if "beta1" in learned:
        # ∂m̂/∂β1 = (m_old - g) / (1 - β1^t) + m̂ t β1^(t-1) / (1 - β1^t), and m_old - g = (m - g) / β1
        g_w = rest.pop(0)
        terms["beta1"] = step_size * divide(m_w - g_w, h["beta1_divisor"]) + (h["lr"] * h["beta1_slope"]) * terms["lr"]
    if "beta2" in learned:
        # ∂step/∂β2 = -step / ((√v̂ + ε) 2√v̂) · ∂v̂/∂β2, and v_old - g² = (v - g²) / β2
        q_v, q_gg = rest
        terms["beta2"] = divide(step_size * -0.5, c2) * (divide(q_v - q_gg, h["beta2_divisor"])
                                                          + q_v * h["beta2_slope"])
    return [terms[name] for name in learned]


class Adam(Hyperoptimizer):
    """Adam(lr, beta1, beta2, eps). v starts at eps, as in the reference (√ is not differentiable at 0).
    ``learn=("lr",)`` is the paper's Adam^α (the reference's AdamBaydin): it keeps nothing beyond m and v.

    Example:
        ```python
        opt = hyperopt.Adam(model.parameters(), 1e-3, betas=(0.9, 0.99), hyper=hyperopt.SGD(lr=1e-5))
        assert str(opt) == "Adam(0.001, 0.9, 0.99)/SGD(1e-05)"
        alpha_only = hyperopt.Adam(model.parameters(), learn=("lr",), hyper=hyperopt.SGD(lr=1e-5))   # Adam^α
        ```
    """

    NAME = "Adam"
    LEARNED_AS = {"lr": IDENTITY, "beta1": UNIT_INTERVAL, "beta2": UNIT_INTERVAL, "eps": None}

    def __init__(self, params: Params = None, lr: Value = 1e-3, beta1: Value = 0.9, beta2: Value = 0.999,
                 eps: Value = 1e-8, *, betas: tuple[float, float] | None = None, **options: Any):
        """
        Args:
            params: the tensors or param groups to optimize; None for a level above (see Hyperoptimizer).
            lr: the step size α (learned by a level above).
            beta1: β1, the decay of the gradient's average m (learned, stored as atanh(2β1 - 1)).
            beta2: β2, the decay of the squared gradient's average v (learned, stored as atanh(2β2 - 1)).
            eps: ε, added to √v̂; never learned. v starts at ε, as in the reference code.
            betas: torch.optim's spelling, (β1, β2), in place of beta1= and beta2=.
            **options: every optimizer's options (hyper=, learn=, check_finite=, keep_in_range=, compile=,
                foreach=, maximize=, runs=, process_group=, log_lr=: see Hyperoptimizer).
        """
        super().__init__(params, lr, beta1=beta1, beta2=beta2, betas=betas, eps=eps, **options)
    step_scalars, update, keep = staticmethod(step_scalars), staticmethod(update), staticmethod(keep)
    hypergradient_dots, hypergradient_terms = staticmethod(hypergradient_dots), staticmethod(hypergradient_terms)
