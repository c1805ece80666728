"""The weights' gradients as backward() made them, for the hypergradient, whatever is done to ``p.grad`` before
step(): clipping (clip_grad_norm_, clip_grad_value_) or anything else in place.

The hypergradient is the derivative of the loss (the reference code gets it from the graph): the current gradient as
backward made it, the previous step as it was taken. The update uses ``p.grad`` as the caller left it. A hook after
each parameter's gradient is accumulated notes the tensor and its version counter; at step() a gradient whose
version has not moved is used as it is (no copy). Once one has moved (clipping), the hooks keep a copy from then
on; clipping starts at the first step, whose hypergradient is 0, so nothing is lost.

A GradScaler's scale is taken off (hyperopt steps take part in its protocol, `_step_supports_amp_scaling`: the
scaler hands over its scale and whether it found an infinite gradient, and a step it would skip is skipped). Where
the caller unscales first (scaler.unscale_(opt), to clip), the scale is no longer known: the hypergradient then
uses the gradient as step() finds it, and says so once (ClippedGradientWarning).
"""

from __future__ import annotations

import warnings
import weakref

import torch


class ClippedGradientWarning(UserWarning):
    """The hypergradient could not see the gradient as backward made it, and uses the one step() found."""


class BackwardGradients:
    """What the hooks saw, for the weights' optimizer: {parameter: (its grad, its version, a copy or None)}."""

    def __init__(self):
        self.seen: dict[torch.Tensor, tuple] = {}
        self.copying = False
        self.warned = False
        self.handles = []

    def watch(self, params) -> None:
        hook = _Hook(weakref.ref(self))
        self.handles += [p.register_post_accumulate_grad_hook(hook) for p in params if p.requires_grad]

    def note(self, p: torch.Tensor) -> None:
        grad = p.grad
        self.seen[p] = (grad, grad._version, grad.clone() if self.copying else None)

    def made(self, p: torch.Tensor, unscale) -> torch.Tensor:
        """The parameter's gradient as backward made it (`unscale`: a GradScaler's 1/scale, which the caller is
        about to take off p.grad in place, or None); p.grad itself where nothing changed it since."""
        seen = self.seen.get(p)
        if seen is None or torch.compiler.is_compiling():
            return p.grad  # a gradient set by hand, not by backward (or a compiled step, which reads no versions)
        tensor, version, copy = seen
        if tensor is p.grad and version == p.grad._version:
            return p.grad
        if copy is not None:
            return copy if unscale is None else copy * unscale
        self.copying = True  # the first step with clipping: its hypergradient is 0 (or, later, this step's is off)
        return p.grad

    def unscaled_first(self) -> None:
        """The caller unscaled the gradients with a GradScaler before step(): what backward made is scaled by a
        number no longer known."""
        self.copying = False
        if not self.warned:
            self.warned = True
            warnings.warn(ClippedGradientWarning(
                "GradScaler.unscale_(optimizer) before step(): the hypergradient uses the gradients as step() finds "
                "them (clipped, if they were), since what backward made is scaled by a scale no longer known. "
                "Clip without the scaler (bf16 autocast needs none) for the reference code's hypergradient."),
                stacklevel=5)

    def forget(self) -> None:
        self.seen.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _Hook:
    # holds the record weakly: a model outlives its optimizer
    def __init__(self, record):
        self.record = record

    def __call__(self, p: torch.Tensor) -> None:
        record = self.record()
        if record is not None:
            record.note(p)
