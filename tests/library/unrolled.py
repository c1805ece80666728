"""The tests' independent oracle for a stack X/SGD(κ): its training unrolled, with autograd through the updates
actually taken. It reads nothing of the library.

Each learned value of the weights' optimizer is a leaf for one update: the weights after it are a function of the
values that update used (its schedule's factor times the learned value, on the gradient as that update saw it:
clipped, unscaled), and the next loss's gradient with respect to those leaves is the hypergradient, by which
SGD(κ) moves the learned values. SGD and Adam are written from the paper's formulas as the reference code takes
them (SGD's buffer starts at the first gradient; Adam's v starts at ε; a β learned as atanh(2β - 1); a step size
learned as log α where asked, log_lr=True). With Polyak's bound (polyak=c), a step whose first-order decrease
g·S exceeds c times the loss is scaled down to reach it, and the learned step size with it; with polyak_start, the
first step is scaled to reach it, up or down.
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call

UNIT = ("beta1", "beta2")  # learned through atanh(2β - 1); SGD's α and μ, and Adam's α, as themselves


def to_raw(name: str, value: float, in_log: tuple[str, ...] = ()) -> float:
    return math.atanh(2.0 * value - 1.0) if name in UNIT else math.log(value) if name in in_log else value


def to_value(name: str, raw: torch.Tensor, in_log: tuple[str, ...] = ()) -> torch.Tensor:
    return (raw.tanh() + 1.0) / 2.0 if name in UNIT else raw.exp() if name in in_log else raw


def sgd_step(values: dict, grads: dict, state: dict, t: int) -> dict:
    """SGD(α, μ): the buffer is the first gradient, then μ·buffer + g; the step α·buffer."""
    steps = {}
    for name, g in grads.items():
        momentum = values.get("momentum", 0.0)
        if not isinstance(momentum, torch.Tensor) and momentum == 0.0:
            steps[name] = values["lr"] * g
            continue
        buffer = g if name not in state else momentum * state[name] + g
        state[name] = buffer.detach()
        steps[name] = values["lr"] * buffer
    return steps


def adam_step(values: dict, grads: dict, state: dict, t: int) -> dict:
    """Adam(α, β1, β2, ε) with m from 0 and v from ε, bias-corrected: α m̂ / (√v̂ + ε)."""
    beta1, beta2, eps, steps = values["beta1"], values["beta2"], values["eps"], {}
    for name, g in grads.items():
        m, v = state.get(name, (torch.zeros_like(g), torch.zeros_like(g) + eps))
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        state[name] = (m.detach(), v.detach())
        steps[name] = values["lr"] * (m / (1.0 - beta1 ** t)) / ((v / (1.0 - beta2 ** t)).sqrt() + eps)
    return steps


STEPS = {"SGD": sgd_step, "Adam": adam_step}
DEFAULTS = {"SGD": {"lr": 0.01, "momentum": 0.0}, "Adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}}


def clip_norm(grads: dict, max_norm: float) -> dict:
    """torch.nn.utils.clip_grad_norm_'s arithmetic: every gradient times min(1, max_norm / (‖g‖ + 1e-6))."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return {name: g * factor for name, g in grads.items()}


def unrolled(model, loss_of, batches, optimizer: str, values: dict, learned: tuple[str, ...], kappa: float,
             factors: dict | None = None, clip: float | None = None,
             gradient_factor: float = 1.0, in_log: tuple[str, ...] = (),
             capped: list[bool] | None = None, share: float = 1.0, start: bool = False) -> tuple[list[dict], dict]:
    """The learned values after each step, in natural units, and the weights at the end. `factors`: {name: [the schedule's factor at each
    step]} (the value an update uses is the factor times the learned value); `clip`: the max norm the update's
    gradient is clipped to (the hypergradient is from the gradient as backward made it); `gradient_factor`: what
    every derivative is multiplied by on its way (a GradScaler's scale times its 1/scale, rounded to float32);
    `in_log`: the learned values held as their logarithm; `capped`, where given: Polyak's bound on `share` of the
    loss holds the steps (and with `start` sets the first), and whether it scaled each step is appended to it."""
    fixed = {**DEFAULTS[optimizer], **values}
    raw = {name: torch.tensor(to_raw(name, fixed[name], in_log), dtype=torch.float64) for name in learned}
    factors = factors or {}
    weights = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    leaves, state, history = None, {}, []
    for t, (x, y) in enumerate(batches):
        loss = loss_of(functional_call(model, weights, (x,)), y)
        names = list(weights)
        inputs = [weights[name] for name in names] + ([leaves[name] for name in learned] if leaves else [])
        derivatives = torch.autograd.grad(loss, inputs, allow_unused=True)  # (μ is unused by the first update)
        grads = {name: g * gradient_factor for name, g in zip(names, derivatives[:len(names)])}
        if leaves:
            for name, hypergradient in zip(learned, derivatives[len(names):]):
                if hypergradient is not None:
                    raw[name] = raw[name] - kappa * (hypergradient * gradient_factor)
        leaves = {name: raw[name].clone().requires_grad_() for name in learned}
        used = dict(fixed)
        for name in learned:
            used[name] = to_value(name, leaves[name], in_log)
        for name, per_step in factors.items():
            used[name] = used[name] * per_step[t]
        steps = STEPS[optimizer](used, clip_norm(grads, clip) if clip else grads, state, t + 1)
        if capped is not None:  # the step is linear in α: α·c takes the step c·S
            decrease, bound = sum((grads[name] * steps[name].detach()).sum() for name in names), share * loss.detach()
            capped.append(bool(decrease > 0 if start and t == 0 else decrease > bound))
            if capped[-1]:
                factor = bound / decrease
                raw["lr"] = raw["lr"] + factor.log() if "lr" in in_log else raw["lr"] * factor
                shorter = raw["lr"].clone().requires_grad_()
                ratio = to_value("lr", shorter, in_log) / to_value("lr", leaves["lr"], in_log).detach()
                steps = {name: step * ratio for name, step in steps.items()}
                leaves["lr"] = shorter
        weights = {name: weights[name].detach() - steps[name] for name in names}
        history.append({name: float(to_value(name, raw[name], in_log)) for name in learned})
    return history, {name: w.detach() for name, w in weights.items()}


def learned_values(stack, learned: tuple[str, ...], in_log: tuple[str, ...] = ()) -> dict:
    """The weights' optimizer's learned values (not the values used: a schedule scales those), natural units."""
    raw = stack.param_groups[0]["hyper_raw"][0]
    return {name: float(to_value(name, raw[stack.param_groups[0]["learn"].index(name)], in_log)) for name in learned}


def schedule_factors(make_scheduler, values: dict, steps: int) -> dict:
    """{name: the factor a torch.optim.lr_scheduler sets on each of `steps` steps}, read off a torch.optim.SGD
    holding the same values (every value the scheduler moves, divided by where it started)."""
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], **values)
    scheduler = make_scheduler(dummy)
    group, factors = dummy.param_groups[0], {name: [] for name in values}
    for _ in range(steps):
        for name, initial in values.items():
            factors[name].append(group[name] / initial)
        dummy.step()
        scheduler.step()
    return {name: per_step for name, per_step in factors.items() if any(f != 1.0 for f in per_step)}
