"""SGD, Adam, AdaGrad and RMSProp as the reference code defines them (README, "What the reference code does").

Each writes its update once, on flat tensors, in the reference's order of operations (so float64 runs agree to
rounding), and its Jacobian with respect to each learnable hyperparameter in closed form; the tests check every
closed form against autograd of the update itself.
"""

from __future__ import annotations

import torch

from .base import IDENTITY, SQUARE, UNIT_INTERVAL, Hyperoptimizer


class SGD(Hyperoptimizer):
    """SGD(lr, momentum, weight_decay). As in the reference, momentum is used (and learned) only when it starts
    non-zero; pass ``learn=("lr", "momentum")`` to learn it from 0 as well. The buffer starts at the first
    gradient. Weight decay (not in the reference) adds weight_decay·w to the gradient, as torch.optim.SGD does."""

    NAME = "SGD"
    HYPERPARAMETERS = {"lr": (0.01, IDENTITY, True), "momentum": (0.0, IDENTITY, True),
                       "weight_decay": (0.0, IDENTITY, False)}

    @classmethod
    def _default_learn(cls, values):
        return ("lr", "momentum") if values["momentum"] != 0.0 else ("lr",)

    def _direction(self, h, g, state):
        # A learned momentum is a tensor: it is in use even while its value is 0.
        if not isinstance(h["momentum"], torch.Tensor) and h["momentum"] == 0.0:
            return g * h["lr"], {}, {"direction": g}
        buf = g if "buf" not in state else state["buf"] * h["momentum"] + g
        return buf * h["lr"], {"buf": buf}, {"direction": buf}

    def _jacobian(self, h, learned, g, state, new_state, step, intermediates):
        jacobian = {"lr": intermediates["direction"]}
        if "momentum" in learned:
            jacobian["momentum"] = state["buf"] * h["lr"] if "buf" in state else torch.zeros_like(g)
        return jacobian


class Adam(Hyperoptimizer):
    """Adam(lr, beta1, beta2, eps). v starts at eps, as in the reference (√ is not differentiable at 0).
    ``learn=("lr",)`` is the paper's Adam^α (the reference's AdamBaydin)."""

    NAME = "Adam"
    HYPERPARAMETERS = {"lr": (1e-3, IDENTITY, True), "beta1": (0.9, UNIT_INTERVAL, True),
                       "beta2": (0.999, UNIT_INTERVAL, True), "eps": (1e-8, IDENTITY, False)}

    @staticmethod
    def _moments(h, g, state):
        return state.get("m", torch.zeros_like(g)), state.get("v", torch.zeros_like(g) + h["eps"])

    def _step_scalars(self, h, t):
        # The bias corrections 1 - β^t and their slopes t β^(t-1) / (1 - β^t), as the reference computes them.
        scalars = {}
        for beta in ("beta1", "beta2"):
            correction = 1.0 - h[beta] ** float(t)
            scalars[f"{beta}_correction"] = correction
            scalars[f"{beta}_slope"] = t * h[beta] ** (t - 1) / correction
        return scalars

    def _direction(self, h, g, state):
        m, v = self._moments(h, g, state)
        beta1, beta2 = h["beta1"], h["beta2"]
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        m_hat = m / h["beta1_correction"]
        v_hat = v / h["beta2_correction"]
        root = v_hat ** 0.5
        direction = m_hat / (root + h["eps"])
        return h["lr"] * direction, {"m": m, "v": v}, {"direction": direction, "v_hat": v_hat, "root": root}

    def _jacobian(self, h, learned, g, state, new_state, step, intermediates):
        m_old, v_old = self._moments(h, g, state)
        lr = h["lr"]
        direction, v_hat, root = intermediates["direction"], intermediates["v_hat"], intermediates["root"]
        denominator = root + h["eps"]
        jacobian = {"lr": direction}
        if "beta1" in learned:
            # m̂ = m / (1 - β1^t), m = β1 m_old + (1 - β1) g:
            #   ∂m̂/∂β1 = (m_old - g) / (1 - β1^t) + m̂ · t β1^(t-1) / (1 - β1^t)
            jacobian["beta1"] = (lr / h["beta1_correction"]) * (m_old - g) / denominator \
                + (lr * h["beta1_slope"]) * direction
        if "beta2" in learned:
            # step = α m̂ / (√v̂ + ε):  ∂step/∂β2 = -step / (√v̂ + ε) / (2√v̂) · ∂v̂/∂β2, likewise for v̂
            dv_hat = (v_old - g * g) / h["beta2_correction"] + v_hat * h["beta2_slope"]
            jacobian["beta2"] = -step / (denominator * 2.0 * root) * dv_hat
        return jacobian


class AdaGrad(Hyperoptimizer):
    """AdaGrad(lr). The accumulator starts at 0.1, as in the reference."""

    NAME = "AdaGrad"
    HYPERPARAMETERS = {"lr": (0.01, IDENTITY, True)}
    EPS = 1e-10

    def _direction(self, h, g, state):
        accumulator = state.get("sum", torch.zeros_like(g) + 0.1) + torch.square(g)
        root = torch.sqrt(accumulator + self.EPS)
        return h["lr"] * g / root, {"sum": accumulator}, {"root": root}

    def _jacobian(self, h, learned, g, state, new_state, step, intermediates):
        return {"lr": g / intermediates["root"]}


class RMSProp(Hyperoptimizer):
    """RMSProp(lr, gamma). While learned, α is stored as √α and γ as atanh(2γ - 1), as in the reference.
    ``learn=("lr",)`` is the paper's RMSProp^α (the reference's RMSPropAlpha)."""

    NAME = "RMSProp"
    HYPERPARAMETERS = {"lr": (0.01, SQUARE, True), "gamma": (0.99, UNIT_INTERVAL, True)}
    EPS = 1e-8

    def _direction(self, h, g, state):
        gamma = h["gamma"]
        square_average = gamma * state.get("square_avg", torch.zeros_like(g)) + (1.0 - gamma) * torch.square(g)
        root = torch.sqrt(square_average + self.EPS)
        return h["lr"] * g / root, {"square_avg": square_average}, {"root": root}

    def _jacobian(self, h, learned, g, state, new_state, step, intermediates):
        root = intermediates["root"]
        jacobian = {"lr": g / root}
        if "gamma" in learned:
            # ∂/∂γ of α g (s + ε)^(-1/2) with s = γ s_old + (1 - γ) g²
            previous = state.get("square_avg", torch.zeros_like(g))
            jacobian["gamma"] = -0.5 * step / (new_state["square_avg"] + self.EPS) * (previous - torch.square(g))
        return jacobian
