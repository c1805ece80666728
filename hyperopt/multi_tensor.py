"""The multi-tensor path (``foreach=True``): a param group's tensors handed to its update and hypergradient as one
flat tensor, so that each operation of the step is one kernel however many tensors the group holds.

The optimizers' arithmetic is the single-tensor path's, unchanged (each optimizer's ``update`` and
``hypergradient_dots`` run once, on the flat tensors); only what they are handed differs. A group's state buffers
(Adam's m and v, SGD's buffer, ...) are kept as flat tensors, and each parameter's state holds views of them, so
that ``optimizer.state[p]`` reads and saves as torch.optim's does. The gradients are gathered into one tensor (one
copy), and the direction the update returns is subtracted from the parameters by one foreach operation. In a
group of runs the flat tensors are (runs, elements), each run's elements in a row.
"""

from __future__ import annotations

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
        self.gathered: tuple[list, torch.Tensor] | None = None  # the last tensors flattened, and their flat tensor

    def holds(self, params: list, states: list[dict]) -> bool:
        """Whether the flat buffers are still those of these parameters' states (a load_state_dict replaces
        them, a param group's parameters may be chosen differently)."""
        if len(params) != len(self.params) or any(a is not b for a, b in zip(params, self.params)):
            return False
        return all(len(state) - ("step" in state) == len(self.views) and
                   all(state.get(key) is view[i] for key, view in self.views.items())
                   for i, state in enumerate(states))

    def share(self) -> None:
        """Hand each parameter's state views of the buffers made (or remade) since the last time."""
        for key, buffer in self.buffers.items():
            if key in self.views and self.views[key][0]._base is buffer:
                continue
            self.views[key] = pieces(buffer, self.like)
            for state, view in zip(self.states, self.views[key]):
                state[key] = view

    def gather(self, tensors: list[torch.Tensor], runs: int | None) -> torch.Tensor:
        """The tensors flattened, once a step where the hypergradient and the update are handed the same ones."""
        if self.gathered is not None and len(self.gathered[0]) == len(tensors) and all(
                a is b for a, b in zip(self.gathered[0], tensors)):
            return self.gathered[1]
        self.gathered = (tensors, flatten(tensors, runs))
        return self.gathered[1]


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
    cache.buffers = {key: flatten([state[key] for state in states], runs) for key in sorted(keys[0])}
    cache.share()
    return cache.buffers
