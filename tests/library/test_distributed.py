"""A stack trained by several processes (gloo on the CPU, float64) against one process on the concatenated batch:
every rank must learn what the one process learns (at 1e-10), stop where it stops, and resume bitwise."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.nn.parallel import DistributedDataParallel

import hyperopt
from hyperopt import hypergradient
from models import MLP
from tests.library.processes import run_processes

pytestmark = pytest.mark.slow  # each test starts processes: a few seconds

PER_RANK = 16  # examples per process and step


@dataclasses.dataclass(frozen=True)
class Run:
    """One training: the stack, and how it is run."""
    spec: str
    steps: int = 6
    clip: float | None = None
    layout: str = "one group"  # or "a group per parameter"
    hidden: int = 128
    nan_at: tuple[int, int] | None = None  # (step, rank): a NaN in that rank's share of that step's batch
    tensor_path: bool = False  # the step's scalars as tensors (a GPU's way), not Python numbers
    # several processes only
    wrapper: str = "ddp"  # "ddp", "fsdp2" (fully_shard), "fsdp1", "zero"
    mesh: tuple[int, ...] | None = None  # FSDP2's device mesh, (replicate, shard) for HSDP; else the world
    bucket_view: bool = False  # DDP's gradient_as_bucket_view
    no_sync: bool = False  # two micro-batches, DDP's all-reduce on the second only
    resume_at: int | None = None  # save every rank's state after this step, rebuild, load, go on
    compile: bool = False  # compile=True on every rank (the oracle steps eagerly)


def batches(world_size: int, run: Run):
    """The global batches (world_size × PER_RANK examples each), the same in every process."""
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(28 * 28, 10, generator=generator, dtype=torch.float64)
    made = []
    for step in range(run.steps):
        x = torch.rand(world_size * PER_RANK, 1, 28, 28, generator=generator, dtype=torch.float64)
        y = ((x.flatten(1) - 0.5) @ teacher).argmax(1)
        if run.nan_at is not None and run.nan_at[0] == step:
            x[run.nan_at[1] * PER_RANK, 0, 0, 0] = float("nan")
        made.append((x, y))
    return made


def param_groups(model, layout: str):
    return model.parameters() if layout == "one group" else [{"params": [p]} for p in model.parameters()]


def train(model, optimizer, data, run: Run, rank=None):
    """The loop; a rank trains on its share of each global batch, one process (rank None) on all of it. A
    DivergenceError ends it: (step, level)."""
    for step, (x, y) in enumerate(data, 1):
        if rank is not None:
            x, y = x[rank * PER_RANK:(rank + 1) * PER_RANK], y[rank * PER_RANK:(rank + 1) * PER_RANK]
        optimizer.zero_grad()
        if run.no_sync:  # one process accumulates the same two halves
            with model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext():
                first = F.nll_loss(model(x[::2]), y[::2]) / 2
                first.backward()
            second = F.nll_loss(model(x[1::2]), y[1::2]) / 2
            second.backward()
            loss = first + second
        else:
            loss = F.nll_loss(model(x), y)
            loss.backward()
        if run.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.clip)
        try:  # (polyak=True takes this rank's loss, which the stack averages over the ranks)
            optimizer.step(**{"loss": loss.detach()} if getattr(optimizer, "needs_loss", False) else {})
        except hyperopt.DivergenceError as error:
            return (error.step, error.level)
    return None


def outcome(model, optimizer, error=None) -> dict:
    """The weights (whole: a DTensor's gathered), every param group's learned values, the error."""
    weights = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
    return {"weights": [w.detach().clone() for w in weights], "error": error,
            "learned": [optimizer.hyperparameters(group=i) for i in range(len(optimizer.param_groups))]}


def one_process(run: Run, world_size: int) -> dict:
    """The oracle: one process, no wrapper, on the concatenated batches."""
    hypergradient.on_host = (lambda weights: False) if run.tensor_path else ON_HOST
    try:
        torch.manual_seed(0)
        model = MLP(hidden=run.hidden).double()
        optimizer = hyperopt.stack(run.spec, param_groups(model, run.layout))
        error = train(model, optimizer, batches(world_size, run), run)
        return outcome(model, optimizer, error)
    finally:
        hypergradient.on_host = ON_HOST


ON_HOST = hypergradient.on_host


def wrapped_training(rank: int, world_size: int, run: Run):
    """The model as `run.wrapper` shards or replicates it, and its stack."""
    torch.manual_seed(0)
    model = MLP(hidden=run.hidden).double()
    if run.wrapper == "ddp":
        wrapped = DistributedDataParallel(model, gradient_as_bucket_view=run.bucket_view)
        return model, wrapped, hyperopt.stack(run.spec, param_groups(wrapped, run.layout), compile=run.compile)
    if run.wrapper == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        shape = run.mesh or (world_size,)
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=("replicate", "shard")[-len(shape):])
        fully_shard(model.layer1, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model, model, hyperopt.stack(run.spec, param_groups(model, run.layout), compile=run.compile)
    if run.wrapper == "fsdp1":
        wrapped = FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"))
        return model, wrapped, hyperopt.stack(run.spec, wrapped.parameters(), process_group=wrapped.process_group)
    if run.wrapper == "zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer
        wrapped = DistributedDataParallel(model)
        zero = ZeroRedundancyOptimizer(wrapped.parameters(), functools.partial(
            hyperopt.stack, run.spec, process_group=dist.group.WORLD))
        return model, wrapped, zero
    raise ValueError(run.wrapper)


def several_processes(rank: int, world_size: int, run: Run, folder: str | None = None) -> dict:
    hypergradient.on_host = (lambda weights: False) if run.tensor_path else ON_HOST
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        model, wrapped, optimizer = wrapped_training(rank, world_size, run)
    data = batches(world_size, run)
    if run.resume_at is None:
        error = train(wrapped, optimizer, data, run, rank)
    else:
        error = train(wrapped, optimizer, data[:run.resume_at], run, rank)
        path = os.path.join(folder, f"rank{rank}.pt")
        torch.save({"model": [p.detach() for p in map(local_tensor, model.parameters())],
                    "optimizer": optimizer.state_dict()}, path)
        del model, wrapped, optimizer
        model, wrapped, optimizer = wrapped_training(rank, world_size, run)
        saved = torch.load(path, weights_only=True)
        with torch.no_grad():
            for p, value in zip(map(local_tensor, model.parameters()), saved["model"]):
                p.copy_(value)
        optimizer.load_state_dict(saved["optimizer"])
        error = error or train(wrapped, optimizer, data[run.resume_at:], run, rank)
    dist.barrier()
    if run.wrapper == "zero":
        optimizer = optimizer.optim
    context = FullyShardedDataParallel.summon_full_params(wrapped) if run.wrapper == "fsdp1" else \
        warnings.catch_warnings()
    with context:
        return {**outcome(model, optimizer, error),
                "warned": " ".join(str(w.message) for w in warned if w.category is hyperopt.ClippedGradientWarning)}


def local_tensor(p):
    return p.to_local() if hasattr(p, "to_local") else p


def assert_same(ranks: list[dict], expected: dict, exactly: bool = False) -> None:
    for rank, got in enumerate(ranks):
        assert got["error"] == expected["error"], f"rank {rank}"
        for group, (stacks, expected_stacks) in enumerate(zip(got["learned"], expected["learned"])):
            for level, (ours, theirs) in enumerate(zip(stacks, expected_stacks)):
                for name, value in theirs.items():
                    assert ours[name] == pytest.approx(value, rel=0 if exactly else 1e-10, abs=0 if exactly else
                                                       1e-15), f"rank {rank} group {group} level {level} {name}"
        for index, (a, b) in enumerate(zip(got["weights"], expected["weights"])):
            if exactly:
                assert torch.equal(a, b), f"rank {rank} weight {index}"
            else:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=f"rank {rank} weight {index}")


def check(run: Run, world_size: int = 2) -> list[dict]:
    ranks = run_processes(several_processes, world_size, run)
    assert_same(ranks, one_process(run, world_size))
    return ranks


@pytest.mark.parametrize("run", [
    Run("SGD(0.1, 0.9)/SGD(1e-3)"),
    Run("SGD(0.1, 0.9)/SGD(1e-3)", clip=0.05),
    Run("Adam/SGD(1e-5)", clip=0.05, bucket_view=True),
    Run("Adam/SGD(1e-5)/SGD(1e-4)/SGD(1e-4)", clip=0.05, tensor_path=True),
    Run("SGD(0.1, 0.9)/SGD(1e-3)", clip=0.05, no_sync=True),
    Run("Adam(0.5, polyak=1)/SGD(1e-5)", clip=0.05, no_sync=True),
], ids=["height 1", "clipped", "bucket view", "height 3, tensor path", "no_sync accumulation",
        "Polyak's bound on each rank's loss, clipped, accumulated"])
def test_ddp_learns_what_one_process_learns_on_the_whole_batch(run):
    """DDP writes the averaged gradient into p.grad after backward's hooks: the hypergradient is from that one,
    clipped or not, so the ranks never drift apart (nothing is summed: every rank holds the whole sums)."""
    check(run)


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
@pytest.mark.parametrize("step", [1, 4])
def test_a_nan_in_one_ranks_batch_stops_every_rank_at_the_same_step(wrapper, step):
    run = Run("Adam/SGD(1e-5)", nan_at=(step - 1, 1), wrapper=wrapper)
    [first, _] = check(run)
    assert first["error"] == (step, 0)


@pytest.mark.parametrize("run, world_size", [
    (Run("SGD(0.1, 0.9)/SGD(1e-3)", wrapper="fsdp2"), 2),
    (Run("SGD(0.1, 0.9)/SGD(1e-3)", clip=0.05, layout="a group per parameter", wrapper="fsdp2"), 2),
    (Run("Adam/Adam/SGD(1e-4)", clip=0.05, wrapper="fsdp2"), 2),
    (Run("AdamW(0.01, wd=0.1)/SGD(1e-4)", layout="a group per parameter", wrapper="fsdp2"), 2),
    (Run("Adam/SGD(1e-5)", clip=0.05, hidden=129, wrapper="fsdp2"), 4),
    (Run("SGD(0.1, 0.9)/SGD(1e-3)", clip=0.05, tensor_path=True, wrapper="fsdp2"), 2),
    (Run("Adam(1e-3, log_lr=1)/SGD(1e-2)", clip=0.05, wrapper="fsdp2"), 2),
    (Run("Adam(1e-6, log_lr=1, polyak=0.3, polyak_start=1)/SGD(1e-2)", clip=0.05, layout="a group per parameter",
         wrapper="fsdp2"), 2),
], ids=["height 1", "a group per parameter, clipped", "Adam/Adam/SGD, clipped", "AdamW's decay",
        "uneven shards", "tensor path", "a step size in log space, clipped",
        "Polyak's bound on a share, started, a group per parameter, clipped"])
def test_fsdp2_learns_what_one_process_learns(run, world_size):
    """Each rank's hypergradient is its shards' share: summed over the ranks in one all-reduce a step. Clipping a
    DTensor's gradient moves no version counter: the hooks keep a copy."""
    check(run, world_size)


def test_hsdp_sums_over_the_shard_dimension_only():
    """A 2 × 2 mesh (replicate, shard): summed over the whole world the sums would count each shard twice."""
    check(Run("SGD(0.1, 0.9)/SGD(1e-3)", clip=0.05, wrapper="fsdp2", mesh=(2, 2)), 4)


def test_a_rank_that_holds_nothing_of_a_group_still_takes_part():
    """hidden=2 over 4 ranks: two ranks hold no row of the first layer; with a param group per parameter they
    have nothing of those groups, yet every rank enters the step's one all-reduce and learns the same values."""
    check(Run("Adam/SGD(1e-5)", steps=5, clip=0.05, layout="a group per parameter", hidden=2, wrapper="fsdp2"), 4)


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_a_distributed_run_resumes_from_its_checkpoint_bitwise(wrapper, tmp_path):
    run = Run("Adam/SGD(1e-5)", clip=0.05, wrapper=wrapper)
    uninterrupted = run_processes(several_processes, 2, run)
    resumed = run_processes(several_processes, 2, dataclasses.replace(run, resume_at=3), str(tmp_path))
    for got, expected in zip(resumed, uninterrupted):
        assert_same([got], expected, exactly=True)


def test_fsdp1_learns_what_one_process_learns_given_its_process_group():
    """Without clipping: FSDP1's gradients are of its flat parameters, which no hook of ours sees (it says so)."""
    ranks = check(Run("Adam/SGD(1e-5)", wrapper="fsdp1"))
    assert all("FSDP1 computes the gradients of its flat parameters" in rank["warned"] for rank in ranks)


def refusal(rank, world_size, how):
    torch.manual_seed(0)
    model = MLP().double()
    try:
        if how == "fsdp1":
            wrapped = FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"))
            hyperopt.stack("SGD(0.1)/SGD(1e-3)", wrapped.parameters())
        elif how == "zero keyword arguments":
            from torch.distributed.optim import ZeroRedundancyOptimizer
            ZeroRedundancyOptimizer(DistributedDataParallel(model).parameters(), optimizer_class=hyperopt.SGD,
                                    lr=0.1, hyper=hyperopt.SGD(lr=1e-3))
        else:
            from torch.distributed.optim import ZeroRedundancyOptimizer
            ZeroRedundancyOptimizer(DistributedDataParallel(model).parameters(),
                                    functools.partial(hyperopt.stack, "SGD(0.1)/SGD(1e-3)"))
    except ValueError as error:
        return str(error)
    return None


@pytest.mark.parametrize("how, says", [
    ("fsdp1", "FSDP1 (FullyShardedDataParallel) parameters do not say which processes hold their other shards: "
              "pass process_group=model.process_group"),
    ("zero keyword arguments", "build the stack with ZeroRedundancyOptimizer(params, functools.partial("
                               "hyperopt.stack"),
    ("zero without a process group", "a stack made by ZeroRedundancyOptimizer holds this process's partition of "
                                     "the weights, whose hypergradient the other processes complete: pass "
                                     "process_group="),
])
def test_what_cannot_be_found_is_refused_with_what_to_do(how, says):
    for message in run_processes(refusal, 2, how):
        assert message is not None and says in message


def test_zero_learns_what_one_process_learns_with_the_stack_summed_over_its_group():
    check(Run("SGD(0.1, 0.9)/SGD(1e-3)", clip=0.05, wrapper="zero"))


@pytest.mark.parametrize("run", [
    Run("Adam/SGD(1e-5)", clip=0.05, compile=True),
    Run("SGD(0.1, 0.9)/SGD(1e-3)", clip=0.05, wrapper="fsdp2", compile=True),
], ids=["DDP", "FSDP2"])
def test_compile_true_on_every_rank_learns_what_one_process_learns(run):
    """The whole step compiled on each rank (from its third step), clipped: under FSDP2 the all-reduce of the
    shards' sums is inside the compiled step."""
    check(run)
