"""The multi-tensor path (``foreach=True``): a param group's tensors handed to its update and hypergradient as one
flat tensor, so that each operation of the step is one kernel however many tensors the group holds.

The optimizers' arithmetic is the single-tensor path's, unchanged (each optimizer's ``update`` and
``hypergradient_dots`` run once, on the flat tensors); only what they are handed differs. A group's state buffers
(Adam's m and v, SGD's buffer, ...) are kept as flat tensors, and each parameter's state holds views of them, so
that ``optimizer.state[p]`` reads and saves as torch.optim's does. Each step the gradients are copied into a
flat tensor kept from step to step (one foreach copy), and the direction the update returns is split into pieces
added to kept flat views of the parameters (one foreach operation). Views are made once and kept: on a CPU one
view costs about what an element-wise pass over a small tensor does, and ResNet-20 has 59 tensors; the flat
gradients' memory is freed after each step all the same (`release`). Where the state keeps the gradients for the
next hypergradient (SGD's and Adam's `grad_prev`), the flat gradients' memory is handed to that buffer at the end of
the step instead of copied into it (`hand_over`). In a group of runs the flat tensors are (runs, elements), each
run's elements in a row.
"""

from __future__ import annotations

import operator

import torch


def flatten(tensors: list[torch.Tensor], runs: int | None) -> torch.Tensor:
    """The tensors as one: (elements,), or (runs, elements) for tensors of runs."""
    if runs is None:
        return torch.cat([t.reshape(-1) for t in tensors])
    return torch.cat([t.reshape(runs, -1) for t in tensors], dim=1)


def pieces(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of a flat tensor shaped like each of `like` (the inverse of flatten)."""
    sizes = [t[0].numel() if flat.dim() == 2 else t.numel() for t in like]
    return [piece.view(t.shape) for piece, t in zip(flat.split(sizes, dim=-1), like)]


class FlatState:
    """A group's state buffers as flat tensors, for the parameters they were made for; each parameter's state
    holds views of them (`share`)."""

    def __init__(self):
        self.params: list[torch.Tensor] = []
        self.states: list[dict] = []  # theirs
        self.like: list[torch.Tensor] = []  # their local tensors (a DTensor's shard), which the views are shaped as
        self.buffers: dict[str, torch.Tensor] = {}
        self.views: dict[str, list[torch.Tensor]] = {}
        self.copied: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}  # refilled each step: flat, views
        self.params_flat: tuple[list[int], tuple] | None = None  # their storages, then flat_params'
        self.handed_to: torch.Tensor | None = None  # the state buffer the flat gradients' memory goes to (hand_over)
        self.compiling = False  # whether this step runs under torch.compile (asked once a step: it is two calls)
        # Whether `holds` was found true, for all the group's parameters, before this compiled step: the compiled
        # step then reads no parameter's state, and torch.compile guards on none of their tensors (each guard is
        # checked at every call: 2 of the 3 tensors per parameter it would guard on otherwise)
        self.held_before = False

    def begin(self) -> FlatState:
        """At the start of a step: whether it is compiled; nothing handed over yet (by a step that stopped short)."""
        self.compiling = torch.compiler.is_compiling()
        self.handed_to = None
        return self

    def holds(self, params: list, states: list[dict]) -> bool:
        """Whether the flat buffers are still those of these parameters' states (a load_state_dict replaces
        them, a param group's parameters may be chosen differently). (In C loops: this runs twice a step.)"""
        if len(params) != len(self.params) or not all(map(operator.is_, params, self.params)):
            return False
        views_held = all(all(map(operator.is_, map(operator.methodcaller("get", key), states), view))
                         for key, view in self.views.items())
        # and no other key but a step count (the group's, kept in its first parameter's state)
        steps = sum(map(operator.methodcaller("__contains__", "step"), states))
        return views_held and sum(map(len, states)) == len(states) * len(self.views) + steps

    def share(self) -> None:
        """Hand each parameter's state views of the buffers made (or remade) since the last time."""
        for key, buffer in self.buffers.items():
            if key in self.views and self.views[key][0]._base is buffer:
                continue
            self.views[key] = pieces(buffer, self.like)
            for state, view in zip(self.states, self.views[key]):
                state[key] = view

    def copy(self, name: str, tensors: list[torch.Tensor], runs: int | None) -> torch.Tensor:
        """The tensors (shaped as the parameters) copied into the flat tensor kept as `name`, which holds them
        until the next copy; flattened anew under torch.compile, which fuses the copy into what reads it."""
        if self.compiling:
            return flatten(tensors, runs)
        kept = self.copied.get(name)
        if kept is None or (kept[0].dtype, kept[0].device) != (tensors[0].dtype, tensors[0].device):
            flat = flatten(tensors, runs)
            self.copied[name] = (flat, pieces(flat, self.like))
            return flat
        flat, views = kept
        if flat.untyped_storage().nbytes() == 0:  # (released after the last step)
            flat.untyped_storage().resize_(flat.numel() * flat.element_size())
        torch._foreach_copy_(views, tensors)
        return flat

    def hand_over(self, buffer: torch.Tensor, kept: torch.Tensor) -> bool:
        """Whether `kept`, which the state's `buffer` is to hold from now on, is the flat gradients, whose memory
        then becomes the buffer's at the end of the step (`release`), the buffer's own being freed: in place of a
        copy (a pass over all the group's elements), the two memories trade places, the parameters' views of the
        buffer going with it."""
        grads = self.copied.get("grads")
        if self.compiling or grads is None or grads[0] is not kept or buffer.untyped_storage().nbytes() != \
                kept.untyped_storage().nbytes() or buffer.dtype != kept.dtype:
            return False
        self.handed_to = buffer
        return True

    def release(self) -> None:
        """At the end of a step: the memory of the flat tensors refilled each step freed, keeping them and their
        views: their storage resized to nothing (as FSDP frees its unsharded parameters), so that between steps,
        while the forward and backward need memory, they hold none, as torch.optim's step keeps nothing but its
        state. The flat gradients' memory handed over goes to its buffer first, and the buffer's is freed."""
        if self.compiling:  # (the compiled step flattens anew: it never refills them)
            return
        if self.handed_to is not None:
            # (a private method of torch's, which its CUDA graph trees use the same way: no public one moves the
            # memory under a tensor's views)
            self.handed_to.untyped_storage()._swap_data_ptr_(self.copied["grads"][0].untyped_storage())
            self.handed_to = None
        for flat, _ in self.copied.values():
            flat.untyped_storage().resize_(0)

    def subtract(self, params: list[torch.Tensor], direction: torch.Tensor, scale) -> None:
        """params -= direction · scale (a number or a tensor), the direction flat, in one foreach operation."""
        if isinstance(scale, torch.Tensor):
            direction, scale = direction * scale, 1.0
        compiling = self.compiling
        views = None if compiling else self.views_of(direction)
        if views is not None:  # (SGD's buffer, or the gradient: no split)
            torch._foreach_add_(params, views, alpha=-scale)
            return
        flat = None if compiling else self.flat_params(params, direction.dim())
        if flat is None:
            torch._foreach_add_(params, pieces(direction, params), alpha=-scale)
        else:
            torch._foreach_add_(flat[0], direction.split(flat[1], dim=-1), alpha=-scale)

    def views_of(self, flat: torch.Tensor) -> list[torch.Tensor] | None:
        """The kept views of `flat` where it is one of the flat tensors kept (a state buffer, the gradients)."""
        for key, buffer in self.buffers.items():
            if buffer is flat and key in self.views:
                return self.views[key]
        return next((views for buffer, views in self.copied.values() if buffer is flat), None)

    def flat_params(self, params: list[torch.Tensor], rank: int) -> tuple[list, list[int]] | None:
        """Flat views of the parameters (each run's elements in a row) and their sizes, kept while their storages
        stay (``p.data = ...`` moves one); None where one is not contiguous (channels_last), which no flat view
        can be."""
        storages = list(map(torch.Tensor.data_ptr, params))
        if self.params_flat is None or self.params_flat[0] != storages:
            if not all(p.is_contiguous() for p in params):
                return None
            views = [p.view(-1) if rank == 1 else p.view(p.shape[0], -1) for p in params]
            self.params_flat = (storages, (views, [view.shape[-1] for view in views]))
        return self.params_flat[1]


def flat_state(cache: FlatState, params: list[torch.Tensor], states: list[dict], like: list[torch.Tensor],
               runs: int | None) -> dict | None:
    """The states of `params` as one flat state (a dict of flat buffers, which the update may add to), made anew
    where the cache no longer holds them; None where the parameters' states hold different buffers (one whose
    state is not made yet among others whose is), which the single-tensor path then steps."""
    if cache.holds(params, states):
        return cache.buffers
    keys = [set(state) - {"step"} for state in states]
    if any(k != keys[0] for k in keys):
        return None
    cache.params, cache.states, cache.like, cache.views = list(params), states, like, {}
    cache.copied, cache.params_flat = {}, None
    cache.buffers = {key: flatten([state[key] for state in states], runs) for key in sorted(keys[0])}
    cache.share()
    return cache.buffers
