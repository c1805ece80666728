"""SGD, Adam, AdaGrad and RMSProp as the reference code defines them (README, "What the reference code does").

Each writes its update of one tensor once, in place on its state as torch.optim does (so float64 runs agree with
the reference to rounding), and the Jacobian of that update with respect to each learnable hyperparameter in closed
form, rebuilt at the next step from the state the update leaves (and the last gradient where it needs it); the
tests check every closed form against autograd of the update itself.
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

    @staticmethod
    def _uses_momentum(h, learned) -> bool:
        # A learned (or per-run) momentum is in use even while its value is 0.
        return "momentum" in learned or isinstance(h["momentum"], torch.Tensor) or h["momentum"] != 0.0

    def _update(self, h, learned, g, state):
        if not self._uses_momentum(h, learned):
            return g, h["lr"]
        if "buf" in state:
            state["buf"].mul_(h["momentum"]).add_(g)
        else:
            state["buf"] = g.clone()
        return state["buf"], h["lr"]

    def _keep(self, h, learned, g, state):
        if not self._uses_momentum(h, learned):
            return {"grad_prev": g}
        if "momentum" in learned and "buf" in state:  # μ's column is α·(the buffer before the update)
            return {"buf_prev": state["buf"]}
        return {}

    def _jacobian(self, h, learned, state):
        if "buf" not in state:
            return {"lr": state["grad_prev"]}
        jacobian = {"lr": state["buf"]}
        if "momentum" in learned:
            jacobian["momentum"] = (state["buf_prev"] * h["lr"] if "buf_prev" in state
                                    else torch.zeros_like(state["buf"]))
        return jacobian


class Adam(Hyperoptimizer):
    """Adam(lr, beta1, beta2, eps). v starts at eps, as in the reference (√ is not differentiable at 0).
    ``learn=("lr",)`` is the paper's Adam^α (the reference's AdamBaydin): it keeps nothing beyond m and v."""

    NAME = "Adam"
    HYPERPARAMETERS = {"lr": (1e-3, IDENTITY, True), "beta1": (0.9, UNIT_INTERVAL, True),
                       "beta2": (0.999, UNIT_INTERVAL, True), "eps": (1e-8, IDENTITY, False)}

    def _step_scalars(self, h, t):
        # The bias corrections 1 - β^t and their slopes t β^(t-1) / (1 - β^t), as the reference computes them; the
        # weights 1 - β of the new gradient in m and v, and α / (1 - β1^t): once per group rather than per tensor.
        scalars = {}
        for beta in ("beta1", "beta2"):
            correction = 1.0 - h[beta] ** float(t)
            scalars[f"{beta}_correction"] = correction
            scalars[f"{beta}_slope"] = t * h[beta] ** (t - 1) / correction
            scalars[f"{beta}_weight"] = 1.0 - h[beta]
        scalars["step_size"] = h["lr"] / scalars["beta1_correction"]
        return scalars

    @staticmethod
    def _direction(h, m, v):
        """m̂ / (√v̂ + ε), and √v̂ and v̂: the update's direction, recomputed from m and v for the Jacobian."""
        v_hat = v / h["beta2_correction"]
        root = v_hat ** 0.5
        return m / h["beta1_correction"] / (root + h["eps"]), root, v_hat

    def _update(self, h, learned, g, state):
        if "m" not in state:
            state["m"], state["v"] = torch.zeros_like(g), torch.zeros_like(g) + h["eps"]
        m, v = state["m"], state["v"]
        # β m + (1 - β) g as m + (1 - β)(g - m), one pass over the tensor (as torch.optim.Adam), likewise for v
        m.lerp_(g, h["beta1_weight"])
        v.lerp_(g * g, h["beta2_weight"])
        denominator = (v / h["beta2_correction"]).sqrt_().add_(h["eps"])
        return m / denominator, h["step_size"]

    def _tensor_dots(self, h, learned, state, u, runs):
        # Dot products of m, v and the last gradient g with w = u / (√v̂ + ε), the columns (_jacobian) never made:
        # α's term is m·w / (1 - β1^t), and β1's and β2's follow from g·w, q·v and (q g)·g with
        # q = m w / ((√v̂ + ε) √v̂). About half the passes over the tensor that making each column takes.
        m, v = state["m"], state["v"]
        root = (v / h["beta2_correction"]).sqrt_()
        denominator = root + h["eps"]
        w = u / denominator
        sums = [self._run_dot(m, w, runs)]
        if "beta1" in learned or "beta2" in learned:
            g = state["grad_prev"]
        if "beta1" in learned:
            sums.append(self._run_dot(g, w, runs))
        if "beta2" in learned:
            q = w.mul_(m).div_(denominator.mul_(root))
            sums += [self._run_dot(q, v, runs), self._run_dot(q.mul_(g), g, runs)]
        return sums

    def _hypergradient_terms(self, h, learned, sums):
        m_w, rest = sums[0], list(sums[1:])
        lr, c1, c2 = h["lr"], h["beta1_correction"], h["beta2_correction"]
        terms = {"lr": m_w / c1}
        if "beta1" in learned:
            # ∂m̂/∂β1 = (m_old - g) / (1 - β1^t) + m̂ t β1^(t-1) / (1 - β1^t), and m_old - g = (m - g) / β1
            g_w = rest.pop(0)
            terms["beta1"] = (lr / c1) * ((m_w - g_w) / h["beta1"]) + (lr * h["beta1_slope"]) * terms["lr"]
        if "beta2" in learned:
            # ∂step/∂β2 = -step / ((√v̂ + ε) 2√v̂) · ∂v̂/∂β2, and v_old - g² = (v - g²) / β2
            q_v, q_gg = rest
            terms["beta2"] = -(lr / c1) / 2.0 * ((q_v - q_gg) / h["beta2"] / c2 + q_v / c2 * h["beta2_slope"])
        return [terms[name] for name in learned]

    def _keep(self, h, learned, g, state):
        return {"grad_prev": g} if "beta1" in learned or "beta2" in learned else {}

    def _jacobian(self, h, learned, state):
        m, v = state["m"], state["v"]
        lr = h["lr"]
        direction, root, v_hat = self._direction(h, m, v)
        denominator = root + h["eps"]
        jacobian = {"lr": direction}
        if "beta1" in learned or "beta2" in learned:
            g = state["grad_prev"]
        if "beta1" in learned:
            # m̂ = m / (1 - β1^t), m = β1 m_old + (1 - β1) g, so m_old - g = (m - g) / β1:
            #   ∂m̂/∂β1 = (m_old - g) / (1 - β1^t) + m̂ · t β1^(t-1) / (1 - β1^t)
            jacobian["beta1"] = (lr / h["beta1_correction"]) * ((m - g) / h["beta1"]) / denominator \
                + (lr * h["beta1_slope"]) * direction
        if "beta2" in learned:
            # step = α m̂ / (√v̂ + ε):  ∂step/∂β2 = -step / (√v̂ + ε) / (2√v̂) · ∂v̂/∂β2, likewise for v̂
            dv_hat = ((v - g * g) / h["beta2"]) / h["beta2_correction"] + v_hat * h["beta2_slope"]
            jacobian["beta2"] = -(lr * direction) / (denominator * 2.0 * root) * dv_hat
        return jacobian


class AdaGrad(Hyperoptimizer):
    """AdaGrad(lr). The accumulator starts at 0.1, as in the reference."""

    NAME = "AdaGrad"
    HYPERPARAMETERS = {"lr": (0.01, IDENTITY, True)}
    EPS = 1e-10

    def _update(self, h, learned, g, state):
        if "sum" not in state:
            state["sum"] = torch.zeros_like(g) + 0.1
        accumulator = state["sum"].add_(g * g)
        return (h["lr"] * g).div_((accumulator + self.EPS).sqrt_()), 1.0  # α·g first, as the reference (RMSProp)

    def _keep(self, h, learned, g, state):
        return {"grad_prev": g}

    def _jacobian(self, h, learned, state):
        return {"lr": state["grad_prev"] / torch.sqrt(state["sum"] + self.EPS)}


class RMSProp(Hyperoptimizer):
    """RMSProp(lr, gamma). While learned, α is stored as √α and γ as atanh(2γ - 1), as in the reference.
    ``learn=("lr",)`` is the paper's RMSProp^α (the reference's RMSPropAlpha)."""

    NAME = "RMSProp"
    HYPERPARAMETERS = {"lr": (0.01, SQUARE, True), "gamma": (0.99, UNIT_INTERVAL, True)}
    EPS = 1e-8

    def _step_scalars(self, h, t):
        return {"gamma_weight": 1.0 - h["gamma"]}  # the weight of the new g², once per group

    def _update(self, h, learned, g, state):
        if "square_avg" not in state:
            state["square_avg"] = torch.zeros_like(g)
        square_average = state["square_avg"].mul_(h["gamma"]).add_(h["gamma_weight"] * (g * g))
        # α·g first, as the reference: its first steps are near α·sign(g) (s starts at 0), which amplifies the last
        # bit of (g / √s)·α against (α·g) / √s past 1e-9 of the weights within 30 steps on MNIST
        return (h["lr"] * g).div_((square_average + self.EPS).sqrt_()), 1.0

    def _keep(self, h, learned, g, state):
        return {"grad_prev": g}

    def _tensor_dots(self, h, learned, state, u, runs):
        # w·u and (w (s - g²) / (s + ε))·u with w = g / √(s + ε), the columns (_jacobian) never made: nine passes
        # over the tensor rather than fifteen
        g, square_average = state["grad_prev"], state["square_avg"]
        shifted = square_average + self.EPS
        w = g / shifted.sqrt()
        sums = [self._run_dot(w, u, runs)]
        if "gamma" in learned:
            sums.append(self._run_dot((square_average - g * g).div_(shifted).mul_(w), u, runs))
        return sums

    def _hypergradient_terms(self, h, learned, sums):
        terms = {"lr": sums[0]}
        if "gamma" in learned:  # the γ column is -α / (2γ) · w (s - g²) / (s + ε)
            terms["gamma"] = -h["lr"] / (2.0 * h["gamma"]) * sums[1]
        return [terms[name] for name in learned]

    def _jacobian(self, h, learned, state):
        g, square_average = state["grad_prev"], state["square_avg"]
        root = torch.sqrt(square_average + self.EPS)
        jacobian = {"lr": g / root}
        if "gamma" in learned:
            # ∂/∂γ of α g (s + ε)^(-1/2) with s = γ s_old + (1 - γ) g², so s_old - g² = (s - g²) / γ
            step = h["lr"] * g / root
            jacobian["gamma"] = -0.5 * step / (square_average + self.EPS) * ((square_average - torch.square(g))
                                                                            / h["gamma"])
        return jacobian
