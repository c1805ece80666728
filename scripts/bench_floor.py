"""How far the step's bookkeeping is from the least its arithmetic needs: the MNIST MLP's whole step with
SGD(0.01)/SGD(0.01), Adam/SGD(1e-5) and RMSProp/SGD(1e-4), each against the same arithmetic written out by hand (its
floor), each against torch.optim's optimizer of the same base. Prints JSON (and writes it with --out).

A floor is what the stack does on a lone run on the CPU, and nothing else: the gradients copied into one flat
tensor, the hypergradient's operations on the flat tensors and its scalars in Python numbers, the level above's SGD
step on the raw values, the update, what the next hypergradient needs kept; a torch.optim.Optimizer, so that torch's
own wrapper of step() is timed in both. It makes the same passes over memory as the stack, and has none of the
stack's checks (but one that the hypergradient is finite), param groups, schedules or options
(tests/test_experiments.py holds each floor to its stack's numbers). The difference between the two is what the
stack's Python costs.

Method: rounds; in each, every configuration is timed right after torch.optim's (a configuration timed right after
another of its own kind runs a few percent faster than one timed after different code), its ratio to that run of
torch.optim's; the ratios reported are medians over rounds. Each configuration's forward and backward are also timed
alone, right after its whole step: the difference is what its step costs where a training loop takes it, after the
backward has filled the caches with other data (several times what the same step costs timed alone, for
torch.optim's too).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import hyperopt
from experiments.benchmark import Loop
from experiments.provenance import provenance
from experiments.reports import publish
from models import MLP


class HandWritten(torch.optim.Optimizer):
    """What every floor does alike: the gradients copied into one flat tensor, the last step's kept by trading the
    two flat tensors (as the stack trades memory), the hyperparameters' raw values (1, k) in float64, as the stack
    keeps them, moved by the level above's SGD, and the weights moved by a flat direction in one foreach operation."""

    def __init__(self, params, raw: list[float], hyper_lr: float):
        super().__init__(params, {})
        self.params = self.param_groups[0]["params"]
        self.sizes = [p.numel() for p in self.params]
        self.flat_params = [p.view(-1) for p in self.params]
        self.grads = torch.zeros(sum(self.sizes), dtype=self.params[0].dtype)
        self.last = torch.zeros_like(self.grads)
        self.views, self.last_views = self.views_of(self.grads), self.views_of(self.last)
        self.raw = torch.tensor([raw], dtype=torch.float64)
        self.hyper_lr = hyper_lr
        self.updates = 0

    def views_of(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [view.view(p.shape) for view, p in zip(flat.split(self.sizes), self.params)]

    def gradients(self) -> torch.Tensor:
        torch._foreach_copy_(self.views, [p.grad for p in self.params])
        return self.grads

    def keep_gradients(self) -> None:
        self.grads, self.last = self.last, self.grads
        self.views, self.last_views = self.last_views, self.views

    def learn(self, hypergradient: list[float]) -> None:
        """The level above's step on the raw values, by ∂L/∂(raw values)."""
        if not all(map(math.isfinite, hypergradient)):
            raise RuntimeError("the hypergradient is not finite")
        self.raw.grad = self.raw.new_tensor([hypergradient])
        self.raw.add_(self.raw.grad, alpha=-self.hyper_lr)

    def subtract(self, direction: torch.Tensor, scale: float) -> None:
        torch._foreach_add_(self.flat_params, direction.split(self.sizes), alpha=-scale)


def unit(raw: float) -> tuple[float, float]:
    """β from its raw value atanh(2β - 1), and ∂β/∂raw."""
    y = math.tanh(raw)
    return (y + 1.0) / 2.0, (1.0 - y * y) / 2.0


class SGDFloor(HandWritten):
    """SGD(lr)/SGD(hyper_lr): α ← α + κ⟨g_t, g_{t-1}⟩, then w ← w - α g_t."""

    def __init__(self, params, lr: float = 0.01, hyper_lr: float = 0.01):
        super().__init__(params, [lr], hyper_lr)

    @torch.no_grad()
    def step(self, closure=None):
        g = self.gradients()
        if self.updates:
            self.learn([-torch.dot(g, self.last).tolist()])  # ∂L/∂α = -⟨g_t, g_{t-1}⟩
        self.updates += 1
        self.subtract(g, self.raw.tolist()[0][0])
        self.keep_gradients()


class AdamFloor(HandWritten):
    """Adam(lr, β1, β2)/SGD(hyper_lr), all three learned (β as atanh(2β - 1)); v starts at ε, as in the reference.
    With w = u / (√v̂ + ε) and q = m w / ((√v̂ + ε) √v̂), the hypergradient's four dot products are m·w, g·w, q·v
    and q·g², g the last gradient (hyperopt/adam.py)."""

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 hyper_lr: float = 1e-5):
        super().__init__(params, [lr, math.atanh(2 * beta1 - 1), math.atanh(2 * beta2 - 1)], hyper_lr)
        self.eps = eps
        self.m = torch.zeros_like(self.grads)
        self.v = torch.zeros_like(self.grads) + eps

    def values(self, t: int) -> tuple[float, float, float, float, float, list[float]]:
        """α, β1, β2, the bias corrections 1 - β^t, and ∂β/∂raw, from the raw values."""
        lr, raw1, raw2 = self.raw.tolist()[0]
        (beta1, slope1), (beta2, slope2) = unit(raw1), unit(raw2)
        return lr, beta1, beta2, 1.0 - beta1 ** t, 1.0 - beta2 ** t, [1.0, slope1, slope2]

    @torch.no_grad()
    def step(self, closure=None):
        u, m, v, t = self.gradients(), self.m, self.v, self.updates
        if t:  # the hypergradient of update t, whose values the raw values still give
            lr, beta1, beta2, c1, c2, derivatives = self.values(t)
            root = (v / c2).sqrt_()
            denominator = root + self.eps
            w = u / denominator
            m_w, g_w = torch.dot(m, w).tolist(), torch.dot(self.last, w).tolist()
            q = w.mul_(m).div_(denominator.mul_(root))
            q_v, q_gg = torch.dot(q, v).tolist(), torch.dot(q, torch.mul(self.last, self.last, out=root)).tolist()
            lr_term = m_w / c1
            beta1_term = (lr / c1) * ((m_w - g_w) / beta1) + (lr * (t * beta1 ** (t - 1) / c1)) * lr_term
            beta2_term = (lr / c1 * -0.5 / c2) * ((q_v - q_gg) / beta2 + q_v * (t * beta2 ** (t - 1) / c2))
            self.learn([-term * d for term, d in zip((lr_term, beta1_term, beta2_term), derivatives)])
        self.updates = t = t + 1
        lr, beta1, beta2, c1, c2, _ = self.values(t)
        m.lerp_(u, 1.0 - beta1)
        v.lerp_(u * u, 1.0 - beta2)
        self.subtract(m / (v / c2).sqrt_().add_(self.eps), lr / c1)
        self.keep_gradients()


class RMSPropFloor(HandWritten):
    """RMSProp(lr, γ)/SGD(hyper_lr), both learned (α as √α, γ as atanh(2γ - 1)). The update keeps
    w = g / √(s + ε); the hypergradient's dot products are w·u and (w (s / (s + ε) - w²))·u (hyperopt/rmsprop.py)."""

    EPS = 1e-8

    def __init__(self, params, lr: float = 0.01, gamma: float = 0.99, hyper_lr: float = 1e-4):
        super().__init__(params, [math.sqrt(lr), math.atanh(2 * gamma - 1)], hyper_lr)
        self.square_average = torch.zeros_like(self.grads)

    @torch.no_grad()
    def step(self, closure=None):
        # (w is kept where the other floors keep the last gradient, which RMSProp's hypergradient does not need)
        u, s, w = self.gradients(), self.square_average, self.last
        root_lr, raw_gamma = self.raw.tolist()[0]
        gamma, slope = unit(raw_gamma)
        if self.updates:  # the hypergradient of the last update, whose values the raw values still give
            shifted = s + self.EPS
            w_u = torch.dot(w, u).tolist()
            gamma_u = torch.dot(torch.div(s, shifted, out=shifted).addcmul_(w, w, value=-1.0).mul_(w), u).tolist()
            gamma_term = -(root_lr * root_lr) * gamma_u / (2.0 * gamma)
            self.learn([-w_u * (2.0 * root_lr), -gamma_term * slope])
            root_lr, raw_gamma = self.raw.tolist()[0]
            gamma, _ = unit(raw_gamma)
        self.updates += 1
        s.mul_(gamma).add_((1.0 - gamma) * (u * u))
        root = (s + self.EPS).sqrt_()
        torch.div(u, root, out=w)
        self.subtract((root_lr * root_lr * u).div_(root), 1.0)


# stack: (torch.optim's optimizer of its base, the floor)
STACKS = {
    "SGD(0.01)/SGD(0.01)": (lambda params: torch.optim.SGD(params, lr=0.01), SGDFloor),
    "Adam/SGD(1e-5)": (lambda params: torch.optim.Adam(params), AdamFloor),
    "RMSProp/SGD(1e-4)": (lambda params: torch.optim.RMSprop(params, lr=0.01, alpha=0.99, eps=1e-8),
                          RMSPropFloor),
}


def trainer(name, model, optimizer, batches, stepping: bool = True):
    """The loop of the whole step; without `stepping`, of its forward and backward alone."""
    def step(x, y):
        loss = F.nll_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if stepping:
            optimizer.step()
    return Loop(name, itertools.cycle(batches), step)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration per round")
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--stacks", default=",".join(STACKS), help="comma-separated, of: " + ", ".join(STACKS))
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    stacks = args.stacks.split(",")
    unknown = [spec for spec in stacks if spec not in STACKS]
    if unknown:
        parser.error(f"no floor for {', '.join(unknown)}: choose from {', '.join(STACKS)}")
    device = torch.device("cpu")

    torch.manual_seed(0)
    base_model = MLP()
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(256, 1, 28, 28, generator=generator), torch.randint(0, 10, (256,), generator=generator))
               for _ in range(20)]
    loops, backward_only = {}, {}  # by (stack, configuration)
    for spec in stacks:
        plain, floor = STACKS[spec]
        makers = {"torch.optim": plain, "ours": lambda params, spec=spec: hyperopt.stack(spec, params),
                  "floor": floor}
        for name, make in makers.items():
            model = copy.deepcopy(base_model)
            optimizer = make(model.parameters())
            loops[spec, name] = trainer(name, model, optimizer, batches)
            backward_only[spec, name] = trainer(name, model, optimizer, batches, stepping=False)
            loops[spec, name].run(5, device)  # (warm-up)
    times = {key: [] for key in loops}
    ratios = {key: [] for key in loops if key[1] != "torch.optim"}
    in_context = {key: [] for key in loops}
    for _ in range(args.rounds):
        for spec, name in ratios:
            plain = loops[spec, "torch.optim"].run(args.steps, device)
            timed = loops[spec, name].run(args.steps, device)
            times[spec, "torch.optim"].append(plain)
            times[spec, name].append(timed)
            ratios[spec, name].append(timed / plain)
        for key in loops:
            in_context[key].append(loops[key].run(args.steps, device) - backward_only[key].run(args.steps, device))
    results = [{"stack": spec, "configuration": name, "ms": statistics.median(times[spec, name]) * 1e3,
                "vs_torch_optim": statistics.median(ratios[spec, name]) if name != "torch.optim" else 1.0,
                "step_in_context_ms": statistics.median(in_context[spec, name]) * 1e3}
               for spec, name in loops]
    report = {
        "benchmark": "the whole step (forward, backward, step) of the MNIST MLP 784-128-10, batch 256, random "
                     f"inputs: each stack ({', '.join(stacks)}; ours) against the same arithmetic written out by "
                     "hand (floor), each against torch.optim's optimizer of the stack's base (torch.optim)",
        "method": f"{args.rounds} rounds; in each, every configuration timed for {args.steps} steps right after "
                  "torch.optim's, its ratio to that run; ms: median over its runs of the mean step, vs_torch_optim: "
                  "median over rounds of the ratio; step_in_context_ms: median over rounds of the mean whole step "
                  "less the mean forward and backward alone, timed right after it",
        **provenance(device),
        "results": results,
    }
    publish(report, args.out)


if __name__ == "__main__":
    main()
