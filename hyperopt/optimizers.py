"""SGD, Adam, AdaGrad and RMSProp as the reference code defines them (PAPER.md section 2).

Each writes its update once, on flat tensors, in the reference's order of operations (so float64 runs agree to
rounding), and its Jacobian with respect to each learnable hyperparameter in closed form; the tests check every
closed form against autograd of the update itself.
"""

from __future__ import annotations

import torch

from .base import IDENTITY, SQUARE, UNIT_INTERVAL, Hyperoptimizer


class SGD(Hyperoptimizer):
    """SGD(lr, momentum). As in the reference, momentum is used (and learned) only when it starts non-zero; pass
    ``learn=("lr", "momentum")`` to learn it from 0 as well. The buffer starts at the first gradient."""

    NAME = "SGD"
    HYPERPARAMETERS = {"lr": (0.01, IDENTITY, True), "momentum": (0.0, IDENTITY, True)}

    @classmethod
    def _default_learn(cls, values):
        return ("lr", "momentum") if values["momentum"] != 0.0 else ("lr",)

    @staticmethod
    def _uses_momentum(h):
        return isinstance(h["momentum"], torch.Tensor) or h["momentum"] != 0.0

    def _direction(self, h, g, state, t):
        if not self._uses_momentum(h):
            return g * h["lr"], {}
        buf = g if "buf" not in state else state["buf"] * h["momentum"] + g
        return buf * h["lr"], {"buf": buf}

    def _jacobian(self, h, learned, g, state, new_state, step, t):
        direction = new_state.get("buf", g)
        jacobian = {"lr": direction}
        if "momentum" in learned:
            jacobian["momentum"] = (state["buf"] * h["lr"] if "buf" in state else torch.zeros_like(g))
        return jacobian


class Adam(Hyperoptimizer):
    """Adam(lr, beta1, beta2, eps). v starts at eps, as in the reference (√ is not differentiable at 0).
    ``learn=("lr",)`` is the paper's Adam^α (the reference's AdamBaydin)."""

    NAME = "Adam"
    HYPERPARAMETERS = {"lr": (1e-3, IDENTITY, True), "beta1": (0.9, UNIT_INTERVAL, True),
                       "beta2": (0.999, UNIT_INTERVAL, True), "eps": (1e-8, IDENTITY, False)}

    def _moments(self, h, g, state, t):
        m = state.get("m", torch.zeros_like(g))
        v = state.get("v", torch.zeros_like(g) + h["eps"])
        return m, v

    def _direction(self, h, g, state, t):
        m, v = self._moments(h, g, state, t)
        beta1, beta2 = h["beta1"], h["beta2"]
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        m_hat = m / (1.0 - beta1 ** float(t))
        v_hat = v / (1.0 - beta2 ** float(t))
        return h["lr"] * (m_hat / (v_hat ** 0.5 + h["eps"])), {"m": m, "v": v}

    def _jacobian(self, h, learned, g, state, new_state, step, t):
        m_old, v_old = self._moments(h, g, state, t)
        beta1, beta2, lr = h["beta1"], h["beta2"], h["lr"]
        bias1, bias2 = 1.0 - beta1 ** float(t), 1.0 - beta2 ** float(t)
        v_hat = new_state["v"] / bias2
        denominator = v_hat ** 0.5 + h["eps"]
        jacobian = {}
        if "lr" in learned:
            jacobian["lr"] = new_state["m"] / bias1 / denominator
        if "beta1" in learned:
            # m̂ = m / (1 - β1^t): ∂m̂/∂β1 = (m_old - g) / (1 - β1^t) + m̂ · t β1^(t-1) / (1 - β1^t)
            dm_hat = (m_old - g) / bias1 + new_state["m"] / bias1 * (t * beta1 ** (t - 1) / bias1)
            jacobian["beta1"] = lr * dm_hat / denominator
        if "beta2" in learned:
            dv_hat = (v_old - g * g) / bias2 + v_hat * (t * beta2 ** (t - 1) / bias2)
            jacobian["beta2"] = -step / denominator * dv_hat / (2.0 * v_hat ** 0.5)
        return jacobian


class AdaGrad(Hyperoptimizer):
    """AdaGrad(lr). The accumulator starts at 0.1, as in the reference."""

    NAME = "AdaGrad"
    HYPERPARAMETERS = {"lr": (0.01, IDENTITY, True)}
    EPS = 1e-10

    def _direction(self, h, g, state, t):
        accumulator = state.get("sum", torch.zeros_like(g) + 0.1) + torch.square(g)
        return h["lr"] * g / torch.sqrt(accumulator + self.EPS), {"sum": accumulator}

    def _jacobian(self, h, learned, g, state, new_state, step, t):
        return {"lr": g / torch.sqrt(new_state["sum"] + self.EPS)}


class RMSProp(Hyperoptimizer):
    """RMSProp(lr, gamma). While learned, α is stored as √α and γ as atanh(2γ - 1), as in the reference.
    ``learn=("lr",)`` is the paper's RMSProp^α (the reference's RMSPropAlpha)."""

    NAME = "RMSProp"
    HYPERPARAMETERS = {"lr": (0.01, SQUARE, True), "gamma": (0.99, UNIT_INTERVAL, True)}
    EPS = 1e-8

    def _direction(self, h, g, state, t):
        gamma = h["gamma"]
        square_average = gamma * state.get("square_avg", torch.zeros_like(g)) + (1.0 - gamma) * torch.square(g)
        return h["lr"] * g / torch.sqrt(square_average + self.EPS), {"square_avg": square_average}

    def _jacobian(self, h, learned, g, state, new_state, step, t):
        root = torch.sqrt(new_state["square_avg"] + self.EPS)
        jacobian = {"lr": g / root}
        if "gamma" in learned:
            previous = state.get("square_avg", torch.zeros_like(g))
            # ∂/∂γ of α g (s + ε)^(-1/2) with s = γ s_old + (1 - γ) g²
            jacobian["gamma"] = -0.5 * step / (new_state["square_avg"] + self.EPS) * (previous - torch.square(g))
        return jacobian
