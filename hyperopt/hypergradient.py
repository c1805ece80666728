"""The step of a whole stack: hypergradients bottom-up, then updates top-down, and the chain rule between levels.

After step t-1 the parameters of level k are ``x_t = x_{t-1} - step_k(h_k)``, where the step is built from detached
gradients and state but the current hyperparameters ``h_k``. So

    ∂L(w_t)/∂h_0 = -Jac_0ᵀ ∇L(w_t),    ∂L(w_t)/∂h_k = -Jac_kᵀ ∂L(w_t)/∂h_{k-1}

which is exactly what the reference code gets from ``loss.backward(create_graph=True)`` (it detaches every gradient
inside the update, so nothing of second order survives): a plain ``loss.backward()`` and a few dot products per
learned hyperparameter and level. `hypergradient` below is that chain rule; each optimizer's module (sgd.py,
adam.py, adagrad.py, rmsprop.py) writes its ``Jacᵀ u`` as dot products (``hypergradient_dots``) and the scalars that
combine them (``hypergradient_terms``), from the state its update keeps, never making the Jacobian's columns.

Every value the step uses is a tensor on the parameters' device, the step count included, and nothing is read back
to the host while the step is compiled: divergence is recorded on the device (hyperopt.divergence). A lone run in
eager mode reads one flag before its updates, to raise DivergenceError with nothing changed, and on the CPU does its
scalar arithmetic in Python numbers (`on_host`).
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import warnings
from typing import NamedTuple

import torch

from . import polyak
from .divergence import DivergenceError, OutOfRangeWarning
from .parameterisations import IDENTITY, times_derivatives, to_value_columns
from .multi_tensor import FlatState, flat_state
from .scalars import constant, divide
from .shards import local, sum_over_shards


def run_dot(a: torch.Tensor, b: torch.Tensor, runs: int | None) -> torch.Tensor:
    """Σ a·b over each run's slice: a scalar for a lone run's tensor (or a tensor of one run), (runs,) for a tensor
    of runs."""
    if runs is None or runs == 1:
        return torch.dot(a.flatten(), b.flatten())
    return torch.bmm(a.reshape(runs, 1, -1), b.reshape(runs, -1, 1)).reshape(runs)


def host_dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Σ a·b of two tensors of a level above a lone run on the host, (1, learned), a handful of values each, in
    Python numbers: reading them there costs less than the three operations of torch.dot on flat views."""
    return sum(map(operator.mul, a.tolist()[0], b.tolist()[0]))


def on_host(weights) -> bool:
    """The one switch between two ways of doing a step's scalar arithmetic. A lone run on the CPU in eager mode
    does it in Python numbers, read off its hyperparameter tensors (reading costs no synchronisation there, and an
    operation on a one-element tensor costs about a microsecond, on a number nothing; bench_overhead.py measures
    it); everything else (a GPU, a stack of runs, a compiled step) keeps them as tensors on the device."""
    group = weights.param_groups[0]
    return group["runs"] is None and group["hyper_raw"].is_cpu and not torch.compiler.is_compiling()


def operands(h: dict, runs: int | None, tensors: list[torch.Tensor], dtype, host: bool = False) -> list[dict]:
    """h as the tensor operations on each of `tensors` take it. A value per run, held as (runs, 1), is made to
    broadcast against a tensor of that rank: a scalar for a lone run, (runs, 1, ..., 1) for a stack of runs (rank 1:
    against the per-run sums). For a group of several tensors, numbers become one-element tensors once for all of
    them: an operation on a small tensor costs about three times as much with a Python number; a fixed 0 stays a
    number, since it switches a term off (SGD without momentum). On the host path (`host`: numbers) h against one
    tensor is taken as it is."""
    if host and len(tensors) == 1:
        return [h]
    ranks = [tensor.dim() for tensor in tensors]
    if len(ranks) > 1:
        numbers = [name for name, value in h.items() if isinstance(value, float) and value != 0.0]
        if numbers:
            h = {**h, **dict(zip(numbers, constant(tuple(h[name] for name in numbers), dtype).unbind()))}
    count = 1 if runs is None else runs
    per_run = [k for k, v in h.items() if isinstance(v, torch.Tensor) and v.shape == (count, 1)]
    if not per_run:
        return [h] * len(ranks)
    by_rank = {}
    for rank in set(ranks):
        shape = () if runs is None else (runs,) + (1,) * (rank - 1)
        by_rank[rank] = {**h, **{k: h[k].reshape(shape) for k in per_run}}
    return [by_rank[rank] for rank in ranks]


def hypergradient(level, group: dict, upstream: list[torch.Tensor | None], t, host: bool,
                  flat: FlatState | None = None) -> tuple[torch.Tensor, Handed | None]:
    """∂L/∂(the group's raw hyperparameters), (runs, learned), from u = ∂L/∂(each of its parameters) (None for one
    without a gradient), t updates after the first (None before it: the loss does not depend on h yet), and the
    group's tensors as it was handed them (None where it was handed none), which the update takes again where its
    gradients are these. A parameter adds to it if it has a gradient now and was updated by the last step. It is
    linear in u: over shards (a DTensor's), this process's share, which the processes holding the others complete
    by a sum. With `flat` (the multi-tensor path), the group's tensors are handed over as one."""
    raw, runs = group["hyper_raw"], group["runs"]
    chosen = [i for i, u in enumerate(upstream) if u is not None]
    if group["without_grad"]:
        skipped = set(group["without_grad"])
        chosen = [i for i in chosen if i not in skipped]
    if t is None or not chosen:
        return torch.zeros_like(raw), None
    handed = group_tensors(level, group, chosen, picked(upstream, chosen), flat)
    states, upstream = handed.states, handed.grads
    learning = level.learning(group)
    learned = learning.names
    h, moved = level.values_used(group, t, host)
    dot = host_dot if host and level._owner is not None else functools.partial(run_dot, runs=runs)
    hs = operands(h, runs, upstream, raw.dtype, host)
    per_tensor = [level.hypergradient_dots(h_u, learned, state, u, dot) for h_u, state, u in zip(hs, states, upstream)]
    sums = per_tensor[0] if len(per_tensor) == 1 else torch.stack(
        [total for totals in per_tensor for total in totals]).unflatten(0, (len(per_tensor), -1)).sum(0)
    if host:
        # (a lone run's sums are scalars, read by tolist: float() would dispatch an operation for each)
        totals = sums.tolist() if isinstance(sums, torch.Tensor) else [
            total.tolist() if isinstance(total, torch.Tensor) else total for total in sums]
        terms = level.hypergradient_terms(h, learned, totals)
    else:
        totals = list(sums)
        h = operands(h, runs, totals[:1], raw.dtype)[0]  # (as against a per-run sum)
        terms = level.hypergradient_terms(h, learned, totals)
    if level.DECOUPLED_DECAY:
        params = handed.params if handed.flat is None else [handed.flat.copy("params", handed.params, runs)]
        terms = decoupled_decay_terms(h, learned, terms, params, upstream, runs, host)
    slopes = level.schedule_slopes(moved)
    columns = []
    for name, term in zip(learned, terms):  # the chain rule through a schedule's factor, then each parameterisation
        if name in slopes:
            slope = slopes[name]
            term = term * (slope if host or not isinstance(slope, torch.Tensor) else slope.reshape(-1))
        columns.append(term)
    if host:
        if not learning.as_themselves:  # (raw values read only where a derivative needs them)
            columns = [c if kind is IDENTITY else c * kind.derivative(x)
                       for c, kind, x in zip(columns, learning.kinds, raw.tolist()[0])]
        if len(columns) == 1:  # (α alone, the usual case: torch.full is two operations where new_tensor is four)
            return torch.full((1, 1), -columns[0], dtype=raw.dtype), handed
        return raw.new_tensor([[-c for c in columns]]), handed
    count = raw.shape[0]
    stacked = torch.stack([column.reshape(count) for column in columns], dim=-1)
    return times_derivatives(learning.kinds, raw.detach(), stacked).to(raw.dtype).neg_(), handed


def decoupled_decay_terms(h: dict, learned: tuple[str, ...], terms: list, params, upstream, runs, host) -> list:
    """The terms of an optimizer whose step is ``x ← x (1 - αλ) - step(α)``, from those of its own step (linear in
    α): ∂/∂α gains λ⟨u, x_prev⟩, and ∂/∂λ is α⟨u, x_prev⟩. The parameters before the last step are not kept:
    ⟨u, x_prev⟩ = (⟨u, x⟩ + α ⟨u, ∂step/∂α⟩) / (1 - αλ)."""
    alpha, decay = h["lr"], h["weight_decay"]
    if "weight_decay" not in learned and not isinstance(decay, torch.Tensor) and decay == 0.0:
        return terms
    now = functools.reduce(torch.add, (run_dot(p, u, runs) for p, u in zip(params, upstream)))
    own = dict(zip(learned, terms))
    before = divide((now.tolist() if host else now) + alpha * own["lr"], 1.0 - alpha * decay)
    own["lr"] = own["lr"] + decay * before
    if "weight_decay" in learned:
        own["weight_decay"] = alpha * before
    return [own[name] for name in learned]


def picked(tensors: list, chosen: list[int]) -> list:
    """The tensors at the indices chosen (the list itself where that is all of them)."""
    return tensors if len(chosen) == len(tensors) else [tensors[i] for i in chosen]


class Handed(NamedTuple):
    """What the update and the hypergradient of a group's parameters are handed: their (local) tensors; their
    states and their gradients, one of each per parameter, or on the multi-tensor path (`flat` not None) one flat
    state and gradient for them all; and the list of gradients they were made from (`given`), by which a step's
    update knows it is handed what its hypergradient was (the same list: every parameter has a gradient)."""
    params: list[torch.Tensor]
    states: list[dict]
    grads: list[torch.Tensor]
    flat: FlatState | None
    given: list[torch.Tensor]


def group_tensors(level, group: dict, chosen: list[int], grads: list[torch.Tensor], flat: FlatState | None) -> Handed:
    """The parameters `chosen` of a group, and their gradients, as Handed: flat where `flat` is given and their
    states can be made one."""
    tensors = picked(group["params"], chosen)
    params = list(map(local, tensors)) if level.dtensors else tensors  # (a DTensor's shard: element by element)
    if flat is not None and flat.compiling and flat.held_before and len(tensors) == len(flat.params):
        return Handed(params, [flat.buffers], [flat.copy("grads", grads, group["runs"])], flat, grads)
    states = list(map(level.state.__getitem__, tensors))
    if flat is not None:
        state = flat_state(flat, tensors, states, params, group["runs"])
        if state is not None:
            return Handed(params, [state], [flat.copy("grads", grads, group["runs"])], flat, grads)
    return Handed(params, states, grads, None, grads)


def update(level, group: dict, grads: list[torch.Tensor | None], active: torch.Tensor | None, t, first: bool,
           host: bool, flat: FlatState | None = None, handed: Handed | None = None) -> None:
    """Update t of a group's parameters (`first`: the group's first); a run not active (diverged) keeps its
    parameters, and a parameter without a gradient (None) is left as it is, state and all, as torch.optim leaves
    it. With `flat` (the multi-tensor path), the group's tensors are handed over as one; `handed`: as this step's
    hypergradient was handed them, taken again where it was handed these gradients."""
    # (tensor by tensor: torch.compile before torch 2.14 cannot trace `is` between two lists)
    if handed is not None and len(handed.given) == len(grads) and all(map(operator.is_, handed.given, grads)):
        group["without_grad"] = []
    else:
        chosen = [i for i, g in enumerate(grads) if g is not None]
        group["without_grad"] = [] if len(chosen) == len(grads) else [i for i, g in enumerate(grads) if g is None]
        if not chosen:
            return
        handed = group_tensors(level, group, chosen, picked(grads, chosen), flat)
    runs, raw = group["runs"], group["hyper_raw"]
    h = level.values_for_update(group, t, host)
    # the settings (a schedule's) of the update the next hypergradient differentiates
    group["last_step"] = dict(zip(level.HYPERPARAMETERS, map(group.__getitem__, level.HYPERPARAMETERS)))
    hs = operands(h, runs, handed.grads, raw.dtype, host)
    learned = level.learned(group)
    steps = []  # (direction, scale) of each tensor, its state updated in place with what the next hypergradient keeps
    for h_g, g, state in zip(hs, handed.grads, handed.states):
        if learned:
            for name, tensor in level.keep(h_g, learned, g, state).items():
                if name not in state:
                    state[name] = tensor.clone()
                elif handed.flat is None or not handed.flat.hand_over(state[name], tensor):
                    state[name].copy_(tensor)  # (a caller's in-place zero_grad, or the update, must not change it)
        steps.append(level.update(h_g, learned, g, state))
    params = handed.params
    if level.DECOUPLED_DECAY:
        decay = 1.0 - hs[0]["lr"] * hs[0]["weight_decay"]
        if isinstance(decay, torch.Tensor) or decay != 1.0:
            going = None if active is None else running(active, handed.grads[0].dim(), runs)
            shrink(params, decay if going is None else torch.where(going, decay, 1.0), runs)
    if handed.flat is not None:
        handed.flat.share()  # (the buffers the first update made)
        (direction, scale), = steps
        direction = direction if active is None else torch.where(running(active, direction.dim(), runs),
                                                                 direction, 0.0)
        handed.flat.subtract(params, direction, scale)
        handed.flat.release()
        return
    for p, (direction, scale) in zip(params, steps):
        if active is not None:
            direction = torch.where(running(active, p.dim(), runs), direction, 0.0)
        if isinstance(scale, torch.Tensor):
            p.addcmul_(direction, scale, value=-1.0)
        else:
            p.add_(direction, alpha=-scale)


def running(active: torch.Tensor, rank: int, runs: int | None) -> torch.Tensor:
    """Which runs go on (not diverged), shaped to broadcast against a tensor of this rank."""
    return active.reshape((-1,) + (1,) * (rank - 1)) if runs else active.reshape(())


def shrink(params: list[torch.Tensor], decay, runs: int | None) -> None:
    """x ← x · decay (a decoupled weight decay's 1 - αλ): a number, a scalar tensor, or one value per run."""
    if runs is None or not isinstance(decay, torch.Tensor):
        torch._foreach_mul_(params, decay)
    else:
        torch._foreach_mul_(params, [decay.reshape((-1,) + (1,) * (p.dim() - 1)) for p in params])


def gradients(level, group: dict, grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """The gradients g of a group's parameters as torch.optim's optimizers take them: negated where the objective
    is maximized, and with weight decay added as torch.optim.SGD adds it (unless the level decouples it): the
    update and the hypergradient are then those of ∓(the loss) plus (weight_decay / 2)·|w|². None for a parameter
    without one; this process's shard of a DTensor's."""
    if any(g is not None and g.layout != torch.strided for g in grads):
        raise RuntimeError(f"{level.NAME} does not support sparse gradients (its update and hypergradient need "
                           "dense ones): use torch.optim.SparseAdam for them, or nn.Embedding(sparse=False)")
    grads = [g if g is None else local(g) for g in grads] if level.dtensors else grads
    decay = 0.0 if level.DECOUPLED_DECAY else group.get("weight_decay", 0.0)
    if not level.maximize and not isinstance(decay, torch.Tensor) and not decay:
        return grads  # (as they are: the common case, in one pass)
    changed = []
    for p, g in zip(group["params"], grads):
        if g is not None:
            p, g = local(p), -g if level.maximize else g
            if isinstance(decay, torch.Tensor):  # one per run
                g = g + operands({"decay": decay}, group["runs"], [p], p.dtype)[0]["decay"] * p
            elif decay:
                g = g + decay * p
        changed.append(g)
    return changed


class Step(NamedTuple):
    """What one step of a stack carries from phase to phase: for each param group of the weights (each level above
    has one group per group below), whether it steps, its updates so far (None before the first; `ts`: as the
    hypergradient takes them, on the host path numbers read once a step), and its multi-tensor state (None on the
    single-tensor path); for each level, each group's gradients, those the update uses (the weights' p.grad; a
    level above's hypergradient); and the weights' gradients as backward made them, which the hypergradient
    differentiates."""
    stepping: list[bool]
    counts: list[torch.Tensor | None]
    ts: list[torch.Tensor | float | None]
    flats: list[FlatState | None]
    grads: list[list[list[torch.Tensor | None]]]
    made: list[list[torch.Tensor | None]]
    host: bool
    handed: list[tuple[Handed | None, ...]]


def step_stack(weights, made: list[list[torch.Tensor | None]], loss: torch.Tensor | None = None) -> None:
    """One step of the stack whose weights' optimizer is `weights`, in four phases: its gradients gathered,
    hypergradients bottom-up, divergence checked, updates top-down (each level's hyperparameters are updated by the
    level above before they update the level below: the reference code's order). Every level of a param group steps
    once a step, so the group's step count, kept by the weights' optimizer, is every level's. A param group none of
    whose parameters has a gradient takes no step at any level, as torch.optim leaves it: its step count (Adam's
    bias correction) and the update its next hypergradient differentiates stay as they are. With `loss` (each
    run's, with polyak=), Polyak's bound shortens the step after the updates (hyperopt/polyak.py)."""
    levels = weights.levels()
    step = gathered(weights, made)
    if step is None:
        return
    checking = weights.check_finite and len(levels) > 1
    first = None  # the weights' gradients summed, at a group's first step, which has no hypergradient yet
    if checking and any(steps and count is None for steps, count in zip(step.stepping, step.counts)):
        first = weights_gradient_sums(weights, step.grads[0])
    step, first = hypergradients_bottom_up(weights, levels, step, first)
    if not any(step.stepping):
        return
    lead = step.stepping.index(True)  # the group whose step count the divergence checks report
    active = check(weights, levels, step.grads[1:], step.counts[lead], first, step.host) if checking else None
    before = polyak.weights_before(weights) if loss is not None else None
    starts = loss is not None and weights.param_groups[0]["polyak_start"] and all(
        count is None for count in step.counts)  # (polyak_start, and no group has stepped before)
    given = polyak.probe(weights) if starts else None
    updates_top_down(weights, levels, step, active)
    if loss is not None:
        polyak.cap(weights, step.made, before, loss, functools.partial(run_dot, runs=weights.param_groups[0]["runs"]),
                   given)
    if checking:
        check_ranges(weights, levels, weights.state[weights.param_groups[lead]["params"][0]]["step"], step.host)


def gathered(weights, made: list[list[torch.Tensor | None]]) -> Step | None:
    """The weights' gradients, as the update takes them (p.grad) and as backward made them, and the path, chosen
    here once: the tensors one by one, or each group's as one (multi_tensor.py). None where no group steps (and
    no other process holds shards of one)."""
    now = [[p.grad for p in group["params"]] for group in weights.param_groups]
    stepping = [any(g is not None for g in group_now) for group_now in now]
    if weights.shard_group is None and not any(stepping):
        return None
    grads = [gradients(weights, group, group_now) for group, group_now in zip(weights.param_groups, now)]
    # (state.get: a group that has not stepped gets no state, as in torch.optim)
    counts = [weights.state.get(group["params"][0], {}).get("step") for group in weights.param_groups]
    made = [taken if all(map(operator.is_, group_now, group_made)) else gradients(weights, group, group_made)
            for group, group_now, group_made, taken in zip(weights.param_groups, now, made, grads)]
    flats = [weights.flat_state(index).begin() if weights.uses_foreach() else None
             for index in range(len(weights.param_groups))]
    host = on_host(weights)
    ts = [None if count is None else count.tolist() for count in counts] if host else counts  # (tolist: hypergradient)
    return Step(stepping, counts, ts, flats, [grads], made, host, [])


def hypergradients_bottom_up(weights, levels, step: Step, first: torch.Tensor | None) -> tuple[Step, torch.Tensor]:
    """Each level's hypergradient from the one below it (the chain rule: the weights' gradients first), set as
    the level above's gradients (``hyper_raw.grad``, as torch.optim would see them). Where the weights are shards
    held by several processes, what they decide together is summed over them in one all-reduce
    (`decide_together`)."""
    upstream, flats = step.made, step.flats
    for k, level in enumerate(levels[:-1]):
        hypergradients, handed = zip(*[hypergradient(level, group, us, t, step.host, flat)
                                       for group, us, t, flat in zip(level.param_groups, upstream, step.ts, flats)])
        step.handed.append(handed)
        if k == 0 and weights.shard_group is not None:
            stepping, first, hypergradients = decide_together(weights, step.stepping, first, hypergradients,
                                                              step.counts)
            step = step._replace(stepping=stepping)
        step.grads.append([[h] for h in hypergradients])
        upstream, flats = step.grads[-1], [None] * len(flats)  # (a level above: one tensor per group)
        for group, h in zip(level.param_groups, hypergradients):
            group["hyper_raw"].grad = h
    return step, first


def updates_top_down(weights, levels, step: Step, active: torch.Tensor | None) -> None:
    """Each stepping group's count moved on, then each level's update from the top (`active`: the runs that go
    on, where runs are stacked and checked)."""
    moving = []  # each group's count, None where the group does not step
    for group, count, steps in zip(weights.param_groups, step.counts, step.stepping):
        if not steps:  # (its state is not touched: a group that has not stepped gets none, as in torch.optim)
            moving.append(None)
            continue
        if count is None:  # (else the count is the tensor its state holds, moved in place)
            count = weights.state[group["params"][0]]["step"] = torch.zeros(
                (), dtype=group["hyper_raw"].dtype, device=group["hyper_raw"].device)
        moving.append(count)
    if step.host:  # (each count was read as a number when the step began; filling in t is one operation, adding 1 four)
        ts = []
        for count, before in zip(moving, step.ts):
            t = None if count is None else (0.0 if before is None else before) + 1.0
            if t is not None:
                count.fill_(t)  # (which holds t exactly up to 2^24, float32's every integer: above, read it back)
                t = t if t <= 2.0 ** 24 else count.tolist()
            ts.append(t)
    else:
        # (as torch.optim moves its counts: torch.compile before torch 2.14 dropped a plain add_ to a count, and the
        # compiled step then took every later one at the wrong t)
        torch._foreach_add_([count for count in moving if count is not None], 1.0)  # (one group at least steps)
        ts = moving
    nones = [None] * len(step.flats)  # (a level above has no flat state; the top, no hypergradient)
    for k, (level, grads) in reversed(list(enumerate(zip(levels, step.grads)))):
        flats = step.flats if k == 0 else nones
        handed = step.handed[k] if k < len(step.handed) else nones
        for group, g, t, count, steps, flat, given in zip(level.param_groups, grads, ts, step.counts, step.stepping,
                                                           flats, handed):
            if steps:
                update(level, group, g, active, t, count is None, step.host, flat, given)


def decide_together(weights, stepping: list[bool], first: torch.Tensor | None, hypergradients: list, counts):
    """What the processes holding the weights' shards decide together, summed over them in one all-reduce that
    every one enters every step, whatever it holds (hyperopt/shards.py): whether each sharded group steps (any
    process has a gradient for it), the first step's gradient sum (a NaN on any shard), and each sharded group's
    hypergradient (linear in the gradients, so the sum of each process's share)."""
    count = weights.param_groups[0]["hyper_raw"].shape[0]
    device = weights.param_groups[0]["hyper_raw"].device
    shared = [hypergradient if sharded and t is not None else None
              for hypergradient, sharded, t in zip(hypergradients, weights.sharded, counts)]
    flags = torch.tensor(stepping, dtype=torch.float64, device=device)
    first_slot = torch.zeros(count, dtype=torch.float64, device=device) if first is None else first
    flags, first_slot, *shared = sum_over_shards(weights.shard_group, [flags, first_slot, *shared])
    anywhere = flags.tolist()
    stepping = [(steps or bool(anywhere[i])) if sharded else steps
                for i, (steps, sharded) in enumerate(zip(stepping, weights.sharded))]
    needed = weights.check_finite and any(steps and c is None for steps, c in zip(stepping, counts))
    hypergradients = [own if total is None else total for own, total in zip(hypergradients, shared)]
    return stepping, first_slot if needed else None, hypergradients


def check_ranges(weights, levels, step: torch.Tensor, host: bool) -> None:
    """Record, for each run, the first learned value that left the range its optimizer needs (a step size below
    0, a momentum outside [0, 1)), said at once (OutOfRangeWarning) by a lone run in eager mode on the CPU; with
    keep_in_range, put it back at the edge (where it is stored as itself: a parameterisation keeps the others in
    range, but for a β that rounds to 1)."""
    checked = [(k, level, group) for k, level in enumerate(levels[:-1]) for group in level.param_groups]
    if host:  # numbers: the tensors are written only when a value first leaves its range
        for k, level, group in checked:
            if weights.divergence.left_range_said:
                break
            learning = level.learning(group)
            values = group["hyper_raw"].tolist()[0]
            if not learning.as_themselves:
                values = [kind.to_value(x) for kind, x in zip(learning.kinds, values)]
            outside = [value < 0.0 or value >= upper for value, upper in zip(values, learning.upper)]
            if any(outside):
                weights.divergence.note_left(step, torch.tensor([outside]), torch.tensor([values], dtype=torch.float64),
                                             k)
                weights.divergence.left_range_said = True
                index = outside.index(True)
                warnings.warn(OutOfRangeWarning(k, level.NAME, learning.names[index], int(step), values[index],
                                                weights.keep_in_range), stacklevel=6)
    else:
        note_ranges(weights, checked, step)
    if weights.keep_in_range:
        for k, level, group in checked:
            learning = level.learning(group)
            for i, (kind, upper) in enumerate(zip(learning.kinds, learning.upper)):
                if kind is IDENTITY:
                    group["hyper_raw"][:, i].clamp_(0.0, math.nextafter(1.0, 0.0) if upper == 1.0 else None)


def note_ranges(weights, checked: list, step: torch.Tensor) -> None:
    """check_ranges on the device: the (runs, learned) values of every level and group as one matrix, checked and
    recorded in a few operations whatever the number of levels and values."""
    columns, uppers, of_level, indices, as_themselves = [], [], [], [], True
    for k, level, group in checked:
        learning = level.learning(group)
        as_themselves = as_themselves and learning.as_themselves
        columns += to_value_columns(learning.kinds, group["hyper_raw"])
        uppers += learning.upper
        of_level += [k] * len(learning.names)
        indices += range(len(learning.names))
    if not uppers:
        return
    one_group = len(checked) == 1
    if one_group and as_themselves:
        values = checked[0][2]["hyper_raw"]  # (as it is: no operation)
    else:
        values = torch.cat(columns, dim=1)
    upper = constant(tuple(uppers), values.dtype, values.device)
    outside = (values < 0.0) | (values >= upper)
    level = of_level[0] if one_group else constant(tuple(of_level), torch.long, values.device)
    weights.divergence.note_left(step.to(values.device), outside, values, level, None if one_group else
                                 constant(tuple(indices), torch.long, values.device))


def check(weights, levels, hypergradients, count, first: torch.Tensor | None, host: bool) -> torch.Tensor | None:
    """Record, on the device, the runs whose hypergradient (each level's) is not finite and return which go on
    (count: the updates so far). At the first step, which has no hypergradient yet, the sum of the weights'
    gradients (`first`) is looked at instead. A lone run in eager mode reads one flag and raises DivergenceError
    before anything changes (on the host, where reading costs nothing, the hypergradients themselves)."""
    if host or weights.param_groups[0]["runs"] is None and not torch.compiler.is_compiling():
        total = None if first is None else float(first.sum())
        if total is not None and not math.isfinite(total):
            raise DivergenceError(0, weights.NAME, None, 1, total)
        raise_if_not_finite(levels, hypergradients, count, host)
        return None
    step = torch.ones((), dtype=torch.long) if count is None else count + 1
    if first is not None:
        weights.divergence.note(step.to(first.device), 0, first.reshape(-1, 1), gradient=True)
    for k, groups in enumerate(hypergradients):
        for (hypergradient,) in groups:
            weights.divergence.note(step.to(hypergradient.device), k, hypergradient)
    return weights.divergence.active()


def weights_gradient_sums(weights, grads: list[list]) -> torch.Tensor | None:
    """Σ of every gradient of the weights, per run ((runs,), one for a lone run): NaN or infinite if any is."""
    count = weights.param_groups[0]["hyper_raw"].shape[0]
    sums = [g.reshape(count, -1).sum(1) for group_grads in grads for g in group_grads if g is not None]
    return functools.reduce(torch.add, sums) if sums else None


def raise_if_not_finite(levels, hypergradients, count: torch.Tensor | None, host: bool) -> None:
    """DivergenceError for the first hypergradient that is not finite, at the step after `count` updates (`host`:
    their values read as numbers, not summed on the device first)."""
    flat = [g[0] for groups in hypergradients for g in groups]
    if host:
        total = sum(map(sum, itertools.chain.from_iterable(map(torch.Tensor.tolist, flat))))
    else:
        total = float(flat[0].sum() if len(flat) == 1 else torch.cat([g.reshape(-1) for g in flat]).sum())
    if math.isfinite(total):  # NaN and ±inf survive a sum (a finite sum that overflows is looked into)
        return
    for k, (level, groups) in enumerate(zip(levels, hypergradients)):
        for group, (hypergradient,) in zip(level.param_groups, groups):
            for name, value in zip(level.learned(group), hypergradient.reshape(-1).tolist()):
                if not math.isfinite(value):
                    raise DivergenceError(k, level.NAME, name, 1 if count is None else int(count) + 1, value)
