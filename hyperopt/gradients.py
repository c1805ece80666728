"""The weights' gradients as backward() made them, for the hypergradient, whatever is done to ``p.grad`` before
step(): clipping (clip_grad_norm_, clip_grad_value_), a GradScaler's unscaling, or anything else in place.

The hypergradient is the derivative of the loss (the reference code gets it from the graph): the current gradient as
backward made it, the previous step as it was taken. The update uses ``p.grad`` as the caller left it. A hook after
each parameter's gradient is accumulated marks it; once backward is over (after every callback backward runs, so
after DistributedDataParallel has written the averaged gradient into ``p.grad``), the gradient and its version
counter are noted. At step() a gradient whose version has not moved is used as it is (no copy). Once one has moved
(clipping), a copy is noted from then on; clipping starts at the first step, whose hypergradient is 0, so nothing
is lost.

A GradScaler hands itself to step() (`_step_supports_amp_scaling`, with a ``grad_scaler`` argument): its scale is
taken off the gradients as backward made them exactly as the scaler takes it off ``p.grad``, whether the caller
unscaled first (to clip) or not, and a step the scaler would skip is skipped.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch.amp.grad_scaler import OptState
from torch.autograd import Variable

from .shards import is_dtensor, local

# GradScaler says, at each step, that it will one day stop handing itself to an optimizer that takes it; ours
# needs the scale (hyperopt/hyperoptimizer.py refuses to step if a later torch stops), so the notice is not
# shown to our users every step.
warnings.filterwarnings("ignore", message="GradScaler is going to stop passing itself", category=FutureWarning)


class ClippedGradientWarning(UserWarning):
    """The hypergradient cannot see the gradient as backward made it, and will use the one step() finds: said
    when a stack is made over FSDP1's flat parameters, whose gradients no hook sees, so that clipping them changes
    the hypergradient (see "Training on several processes")."""


class BackwardGradients:
    """What backward made, for the weights' optimizer: {parameter: (its grad, its version)}, and a copy of each
    gradient where p.grad is changed before step() (clipping) or the step is compiled (it cannot read versions)."""

    def __init__(self):
        # Keyed by id(p), not p: a tensor's hash is a Python call, two per parameter a step otherwise (the
        # optimizer holds its parameters, so an id is not reused while it lives; a copy starts anew)
        self.seen: dict[int, tuple] = {}
        self.copies: dict[int, torch.Tensor] = {}  # kept from step to step, written in place
        self.marked: list[torch.Tensor] = []  # accumulated into by the backward under way
        self.copying = False
        self.blind = False  # whether in-place changes of the gradients can go unseen
        self.compiled = False
        self.handles = []

    def watch(self, params) -> None:
        hook = _Hook(weakref.ref(self))
        self.handles += [p.register_post_accumulate_grad_hook(hook) for p in params if p.requires_grad]
        if not hasattr(self, "_unhook"):  # a dropped stack leaves nothing on the parameters it trained
            self._unhook = weakref.finalize(self, _remove, self.handles)
        # In-place operations on a DTensor (FSDP2's gradients: clip_grad_norm_) move no version counter, so a
        # change cannot be seen: a copy of each gradient is kept (memory: this process's shard of one gradient).
        self.blind = self.blind or any(is_dtensor(p) for p in params)
        self.copying = self.copying or self.blind
        if any(getattr(p, "_fsdp_flattened", False) for p in params):
            warnings.warn(ClippedGradientWarning(
                "FSDP1 computes the gradients of its flat parameters, not of these: no hook sees them as backward "
                "makes them, so the hypergradient uses p.grad as step() finds it, clipped if you clip. Without "
                "clipping it is exact; to clip, use FSDP2's fully_shard, whose gradients the hooks see"),
                stacklevel=4)

    def mark(self, p: torch.Tensor) -> None:
        if not self.marked:
            # (a callback queued now would run before those queued later in this backward, DDP's among them)
            Variable._execution_engine.queue_callback(
                lambda: Variable._execution_engine.queue_callback(self.note_marked))
        self.marked.append(p)

    def note_marked(self) -> None:
        for p in self.marked:
            grad = p.grad
            if grad is None:
                continue
            # (a DTensor's version is its shard's; a tensor is its own shard, and asking costs a failed lookup)
            self.seen[id(p)] = (grad, (local(grad) if self.blind else grad)._version)
            if self.copying or self.compiled:
                copy, grad = self.copies.get(id(p)), local(grad)
                if copy is None or copy.shape != grad.shape:
                    self.copies[id(p)] = grad.clone()
                else:
                    copy.copy_(grad)
        self.marked = []

    def made(self, params: list[torch.Tensor], unscale: torch.Tensor | None) -> list[torch.Tensor | None]:
        """The parameters' gradients as backward made them (`unscale`: a GradScaler's 1/scale, which p.grad has
        had, or is about to have, taken off in place; None without a scaler); p.grad itself where nothing changed
        it since (or there is none)."""
        compiling = torch.compiler.is_compiling()
        if compiling:
            self.compiled = True  # from the next backward on, every gradient is copied for the compiled step
        elif not self.blind:  # the common case in one pass: every gradient as backward left it (or set by hand)
            grads = [p.grad for p in params]
            seen = list(map(self.seen.get, map(id, params)))
            if all(s is None or s[0] is g and s[1] == g._version for s, g in zip(seen, grads)):
                return grads
        made = []
        for p in params:
            grad = p.grad
            if grad is None:
                made.append(None)
                continue
            if compiling:
                copy = self.copies.get(id(p))
            else:
                seen = self.seen.get(id(p))
                if seen is None or not self.blind and seen[0] is grad and seen[1] == local(grad)._version:
                    made.append(grad)  # unchanged since backward (or set by hand, not by backward)
                    continue
                copy = self.copies.get(id(p)) if self.copying else None
                # the first step with clipping: its hypergradient is 0 (or, later, this step's is off)
                self.copying = True
            made.append(grad if copy is None else copy if unscale is None else copy * unscale.to(copy.device))
        return made

    def forget(self) -> None:
        self.seen.clear()



def _remove(handles: list) -> None:
    for handle in handles:
        handle.remove()


class _Hook:
    # holds the record weakly: a model outlives its optimizer
    def __init__(self, record):
        self.record = record

    def __call__(self, p: torch.Tensor) -> None:
        record = self.record()
        if record is not None:
            record.mark(p)


def made_gradients(weights, unscale: torch.Tensor | None = None) -> list[list[torch.Tensor | None]]:
    """Each param group's gradients as backward made them (None for a parameter without one)."""
    if weights.backward is None:
        return [[p.grad for p in group["params"]] for group in weights.param_groups]
    return [weights.backward.made(group["params"], unscale) for group in weights.param_groups]


def take_scale_off(weights, grad_scaler) -> tuple[list[list[torch.Tensor | None]], bool]:
    """From GradScaler.step(weights): the gradients as backward made them, divided by the scale as the scaler
    divides p.grad, and whether the scaler found an infinite gradient. p.grad is unscaled in place by the scaler
    (here, unless the caller did it first, to clip), which also records what its update() reads."""
    state = grad_scaler._per_optimizer_states[id(weights)]
    unscale = torch.tensor(grad_scaler.get_scale(), dtype=torch.float64).reciprocal().float()
    made = made_gradients(weights, unscale)
    if state["stage"] is not OptState.UNSCALED:
        grad_scaler.unscale_(weights)
    found_inf = sum(float(found) for found in state["found_inf_per_device"].values())
    return made, found_inf > 0
