"""How far the step's bookkeeping is from the least its arithmetic needs: the MNIST MLP's whole step with
SGD(0.01)/SGD(0.01), against the same arithmetic written out by hand (`Floor`), each against torch.optim.SGD(0.01).
Prints JSON (and writes it with --out).

`Floor` is what the stack does on a lone run on the CPU, and nothing else: the gradients copied into one flat
tensor, one dot product with the last step's gradient (the hypergradient of α), the level above's SGD step on α,
the update, the gradient kept, the step count moved; a torch.optim.Optimizer, so that torch's own wrapper of step()
is timed in both. It has none of the stack's checks, param groups, schedules or options (tests/test_experiments.py
holds it to the stack's numbers). The difference between the two is what the stack's Python costs.

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

SPEC = "SGD(0.01)/SGD(0.01)"


class Floor(torch.optim.Optimizer):
    """SGD(lr)/SGD(hyper_lr) of a lone run, written out: α ← α + κ⟨g_t, g_{t-1}⟩, then w ← w - α g_t."""

    def __init__(self, params, lr: float = 0.01, hyper_lr: float = 0.01):
        super().__init__(params, {"lr": lr})
        self.params = self.param_groups[0]["params"]
        sizes = [p.numel() for p in self.params]
        self.flat = torch.zeros(sum(sizes), dtype=self.params[0].dtype)
        self.last = torch.zeros_like(self.flat)
        self.views = [view.view(p.shape) for view, p in zip(self.flat.split(sizes), self.params)]
        self.alpha = torch.tensor([[lr]], dtype=torch.float64)  # as the stack keeps α
        self.hyper_lr = hyper_lr
        self.count = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def step(self, closure=None):
        torch._foreach_copy_(self.views, [p.grad for p in self.params])
        if self.count > 0:
            hypergradient = -float(torch.dot(self.flat, self.last))  # ∂L/∂α = -⟨g_t, g_{t-1}⟩
            if not math.isfinite(hypergradient):
                raise RuntimeError("the hypergradient is not finite")
            self.alpha.grad = self.alpha.new_tensor([[hypergradient]])
            self.alpha.add_(self.alpha.grad, alpha=-self.hyper_lr)
        self.count.add_(1)
        lr = self.alpha.tolist()[0][0]
        self.last.copy_(self.flat)
        torch._foreach_add_(self.params, self.views, alpha=-lr)


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
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device("cpu")

    torch.manual_seed(0)
    base_model = MLP()
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(256, 1, 28, 28, generator=generator), torch.randint(0, 10, (256,), generator=generator))
               for _ in range(20)]
    makers = {"torch.optim": lambda params: torch.optim.SGD(params, lr=0.01),
              "ours": lambda params: hyperopt.stack(SPEC, params),
              "floor": lambda params: Floor(params)}
    loops, backward_only = {}, {}
    for name, make in makers.items():
        model = copy.deepcopy(base_model)
        optimizer = make(model.parameters())
        loops[name] = trainer(name, model, optimizer, batches)
        backward_only[name] = trainer(name, model, optimizer, batches, stepping=False)
        loops[name].run(5, device)  # (warm-up)
    times = {name: [] for name in loops}
    ratios = {name: [] for name in loops if name != "torch.optim"}
    in_context = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name in ratios:
            plain = loops["torch.optim"].run(args.steps, device)
            timed = loops[name].run(args.steps, device)
            times["torch.optim"].append(plain)
            times[name].append(timed)
            ratios[name].append(timed / plain)
        for name in loops:
            in_context[name].append(loops[name].run(args.steps, device) - backward_only[name].run(args.steps, device))
    results = [{"configuration": name, "ms": statistics.median(times[name]) * 1e3,
                "vs_torch_optim": statistics.median(ratios[name]) if name in ratios else 1.0,
                "step_in_context_ms": statistics.median(in_context[name]) * 1e3}
               for name in loops]
    report = {
        "benchmark": f"the whole step (forward, backward, step) of the MNIST MLP 784-128-10, batch 256, random "
                     f"inputs: {SPEC} (ours) against the same arithmetic written out by hand (floor), each "
                     f"against torch.optim.SGD(0.01)",
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
