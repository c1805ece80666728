"""Several processes: which parameters are shards of a whole, and the one all-reduce a step that makes the weights'
level's sums over them global.

A hypergradient is a sum over every element of the weights (dot products ⟨u, ·⟩). A replicated parameter
(DistributedDataParallel: every process holds all of it, and the averaged gradient) gives every process the whole
sum already. A sharded one (FSDP2's DTensor parameters, FSDP1's flat parameters, a partition such as ZeRO's) gives
each process its share, to be summed over the processes that hold the other shards: over the mesh dimension it is
sharded on, not over replicas (HSDP's replicas hold the same shard). Only the weights' level holds shards; the levels
above hold the same learned values on every process, so their sums are never reduced.
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.distributed as dist


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this process (FSDP2's parameters and gradients), any other tensor as it is."""
    return tensor._local_tensor if hasattr(tensor, "_local_tensor") else tensor


def is_dtensor(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "_local_tensor") and hasattr(tensor, "placements")


def shard_group(p: torch.Tensor, given):
    """The process group over which `p` is sharded (its sums are partial), or None for a whole parameter.
    `given`: the optimizer's process_group=, for what the parameter cannot tell."""
    if is_dtensor(p):
        dims = [dim for dim, placement in enumerate(p.placements) if placement.is_shard()]
        if len(dims) > 1:
            raise ValueError(f"a parameter of shape {tuple(p.shape)} is sharded on {len(dims)} dimensions of its "
                             f"device mesh ({p.placements}); hyperopt sums over one: shard it on one dimension "
                             "(FSDP2's fully_shard, or HSDP's (replicate, shard) mesh)")
        return p.device_mesh.get_group(dims[0]) if dims else None
    if getattr(p, "_fsdp_flattened", False) and given is None:
        raise ValueError("FSDP1 (FullyShardedDataParallel) parameters do not say which processes hold their other "
                         "shards: pass process_group=model.process_group to the weights' optimizer (with "
                         "sharding_strategy=NO_SHARD nothing is sharded: use DistributedDataParallel), or use FSDP2's "
                         "fully_shard, whose parameters say it")
    return given


def made_by_zero() -> bool:
    """Whether ZeroRedundancyOptimizer is making this optimizer for its process's partition: its parameters are
    ordinary tensors, as DDP's are, and nothing else tells. (Its code is looked for among the callers; their
    locals are not read, which would keep them alive.)"""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.endswith("zero_redundancy_optimizer.py"):
            return True
        frame = frame.f_back
    return False


def groups_sharded(params, given) -> object:
    """The one process group a param group's parameters are sharded over (None: all whole), refusing a mix."""
    found = {id(group): group for group in (shard_group(p, given) for p in params)}
    if len(found) > 1:
        shapes = [tuple(p.shape) for p in params]
        raise ValueError(f"a param group mixes parameters sharded over different processes, or sharded and whole "
                         f"ones (shapes {shapes}); their hypergradient sums differ in kind: put each kind in a param "
                         "group of its own")
    return next(iter(found.values()))


def sum_over_shards(process_group, tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Each tensor summed over the processes of `process_group`, in one all-reduce (None stays None; every
    process must pass the same layout, which the step's counts and the groups' settings decide, never local data)."""
    present = [t for t in tensors if t is not None]
    if not present:
        return tensors
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in present])
    flat = torch.cat([t.reshape(-1).to(dtype) for t in present])
    dist.all_reduce(flat, group=process_group)
    pieces = iter(flat.split([t.numel() for t in present]))
    return [None if t is None else next(pieces).reshape(t.shape).to(t.dtype) for t in tensors]
