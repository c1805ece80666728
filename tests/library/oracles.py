"""The tests' oracle for the closed forms: the hypergradient by forward-mode autograd through an optimizer's own
update, which the library never computes."""

import torch
from torch.func import jacfwd

from hyperopt.hypergradient import operands


def snapshot(level, group: dict):
    """What the group's next update starts from: its state and its parameters' gradients (before the step)."""
    state = [{k: v.clone() for k, v in level.state[p].items() if isinstance(v, torch.Tensor)}
             for p in group["params"]]
    return state, [p.grad.clone() for p in group["params"]], [p.detach().clone() for p in group["params"]]


def autograd_hypergradient(level, group: dict, before, upstream: list[torch.Tensor]) -> torch.Tensor:
    """-Σ ⟨∂(last step)/∂raw, u⟩ over the group's tensors, (runs, learned): the Jacobian of the update the group
    made from `before` (snapshot) with the raw values it used, by autograd, dotted with u (a decoupled decay's
    shrinking of the parameters is part of the step)."""
    states, grads, params = before
    raw = group["hyper_raw"].detach()
    t = level.state[group["params"][0]]["step"]  # (the weights' optimizer's: its group's step count)
    learned, runs = level.learned(group), group["runs"]

    def steps(raw):
        h = level.values(group, t, raw=raw)
        hs = operands(h, runs, group["params"], raw.dtype)
        taken = []
        for h_p, g, state, p in zip(hs, grads, states, params):
            # (without the quotient AdaGrad and RMSProp keep for the next hypergradient: the update writes it, not
            # reads it, and writes it with out=, which cannot hold jacfwd's dual numbers)
            kept = {k: v.clone() for k, v in state.items() if k != "grad_scaled"}
            direction, scale = level.update(h_p, learned, g, kept)
            decay = h_p["lr"] * h_p["weight_decay"] * p if level.DECOUPLED_DECAY else 0.0
            taken.append(direction * scale + decay)
        return taken
    jacobians = jacfwd(steps)(raw)  # each: the parameter's shape + raw's shape
    return -sum(torch.tensordot(u, jacobian, dims=u.dim()) for u, jacobian in zip(upstream, jacobians))
