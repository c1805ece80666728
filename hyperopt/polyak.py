"""The step size held under Polyak's bound (``polyak=share``, not in the paper): the safeguard against a step size
too large, and with ``polyak_start=True`` the first step's size.

A one-step hypergradient lowers α only after a step too large has been taken, and a level above moves α by about
its own step size κ a step, so a run started at α = 1 is wrecked before α has come down. Polyak's step size bounds
the step before it is taken: a step S whose first-order decrease g·S exceeds the loss L (which is at least 0)
overshoots whatever the curvature. So after the update, where g·S > cL (c the share given, 1 for True), the step
is shortened to S·cL/(g·S) and every learned step size of the weights' optimizer is multiplied by the same factor:
the level above goes on from the step size actually used, and its hypergradient is that of the step taken. A step
within the bound is left as it is, so a run whose steps never reach it takes the paper's steps exactly. A share
below 1 asks each step to promise less than the whole loss, which a loss whose least value is well above 0 needs.

With ``polyak_start=True`` the first step is scaled to the bound, up or down (where g·S > 0): its step size is
cL/(g·d) for the update's direction d, whatever step size was given, which then sets only that direction (Adam's
first direction does not depend on it). That update is taken at step size 1 and then scaled (`probe`). The level
above moves the step size from there; so a run's result does not depend on the step size it starts from, by
construction, and what remains to tune is the level above's.

As MoMo (Schaipp et al., 2023) bounds Adam's step, with the loss's lower bound taken as 0; g is the loss's
gradient as backward made it (before clipping). Costs: one copy of the weights while the step is taken and one of
the gradients as backward made them (kept from the first step, clipped or not), one dot product a step, and the
loss handed to step (``opt.step(loss=loss)``), averaged over the processes where there are several.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .shards import local, sum_over_shards


def weights_before(weights) -> list[list[torch.Tensor]]:
    """Each param group's weights (this process's shards) as they are before the update."""
    return [[local(p).detach().clone() for p in group["params"]] for group in weights.param_groups]


def mean_loss(weights, loss: torch.Tensor) -> torch.Tensor:
    """The loss the weights' gradient is the gradient of: each run's, averaged over the processes where several
    train (as DistributedDataParallel averages their gradients)."""
    loss = loss.detach().to(torch.float64).reshape(-1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        group = weights.process_group if isinstance(weights.process_group, dist.ProcessGroup) else None
        loss = loss.clone()
        dist.all_reduce(loss, group=group)
        loss /= dist.get_world_size(group)
    return loss


def cap(weights, made: list[list[torch.Tensor | None]], before: list[list[torch.Tensor]],
        loss: torch.Tensor, dot, given: torch.Tensor | None) -> None:
    """After the update: shorten the step taken from `before` where its first-order decrease g·S exceeds the
    share of the loss, or at polyak_start's first step (`given`: the step sizes `probe` replaced) set it there,
    and scale the learned step sizes with it."""
    taken = []  # S = x_before - x_after, per param group
    decrease = torch.zeros(len(weights.param_groups), loss.numel(), dtype=torch.float64, device=loss.device)
    for index, (group, grads, kept) in enumerate(zip(weights.param_groups, made, before)):
        params = [local(p) for p in group["params"]]
        torch._foreach_sub_(kept, params)
        taken.append(kept)
        for g, step in zip(grads, kept):
            if g is not None:
                decrease[index] += dot(local(g), step).to(torch.float64).reshape(-1)
    if weights.shard_group is not None:  # a sharded group's dot products are this process's shares
        sharded = torch.tensor(weights.sharded, device=decrease.device).unsqueeze(1)
        whole = sum_over_shards(weights.shard_group, [torch.where(sharded, decrease, 0.0)])[0]
        decrease = torch.where(sharded, whole, decrease)
    total, bound = decrease.sum(0), weights.param_groups[0]["polyak"] * loss
    # (runs,) or (1,): in (0, 1], 1 for a NaN loss; at the start whatever reaches the bound
    if given is None:
        factor = torch.where(total > bound, bound / total, 1.0)
    else:  # back to the step size given where there is no bound to set (a NaN loss) or no decrease to scale
        factor = torch.where((total > 0) & bound.isfinite(), bound / total, given)
    for group, steps in zip(weights.param_groups, taken):
        runs = group["runs"]
        back = [(1.0 - factor).reshape((-1,) + (1,) * (s.dim() - 1)) if runs else (1.0 - factor).reshape(())
                for s in steps]
        torch._foreach_addcmul_([local(p) for p in group["params"]], steps,
                                [b.to(s.dtype) for b, s in zip(back, steps)])
        raw = group["hyper_raw"][:, weights.learned(group).index("lr")]
        weights.stored_as(group, "lr").scale_(raw, factor.to(raw.dtype))


def probe(weights) -> torch.Tensor:
    """polyak_start's first update is taken with the first param group's step size at 1 (the others' in the same
    ratio to it) and then scaled to the bound: measured from a step of the weights' own scale, the step loses no
    digits to the weights' (a step size given far below them would). The first group's step size given, per run:
    the factor that takes the step back to it where the bound sets nothing."""
    first = weights.param_groups[0]
    given = weights.stored_as(first, "lr").to_value(first["hyper_raw"][:, weights.learned(first).index("lr")])
    given = given.detach().clone().to(torch.float64)
    for group in weights.param_groups:
        raw = group["hyper_raw"][:, weights.learned(group).index("lr")]
        weights.stored_as(group, "lr").scale_(raw, (1.0 / given).to(raw.dtype))
    return given


def check_loss(weights, loss) -> torch.Tensor:
    """The loss handed to step, as `cap` takes it; refused where missing or negative. A loss that is NaN or
    infinite bounds nothing: the divergence checks see its gradients (DivergenceError; a run of a stack of runs
    frozen)."""
    if loss is None:
        raise ValueError(f"{weights.NAME}: polyak=True bounds the step by the loss: hand it over, "
                         "opt.step(loss=loss) (or scaler.step(opt, loss=loss))")
    loss = torch.as_tensor(loss)
    count = weights.param_groups[0]["hyper_raw"].shape[0]
    if loss.numel() != count:
        raise ValueError(f"{weights.NAME}: polyak=True needs one loss per run ({count}), not {loss.numel()}")
    values = loss.tolist() if loss.dim() else [loss.item()]  # (one value read back a step)
    if any(value < 0.0 for value in values):
        raise ValueError(f"{weights.NAME}: polyak=True takes the loss as at least 0 (Polyak's bound with the "
                         f"optimum at 0), but it is {values}: drop polyak=True for this loss")
    return loss
