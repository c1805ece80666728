"""One run trained by several processes started by torchrun (distributed=ddp or fsdp): the process group, each
process's share of a batch, what the processes decide together each step, and who writes (rank 0: the record and
the checkpoints; the others nothing).

    torchrun --nproc_per_node=2 experiments/train.py +exp=mnist_adam_sgd distributed=ddp

Every process draws the same global batches (the same seed) and trains on its equal share of each, with
DistributedDataParallel (each process holds the whole model) or FSDP2's fully_shard (each holds a shard of every
layer), so the averaged gradient is the one process's on the whole batch, and so is the step; the loss recorded is
the mean over the processes, the global batch's. The hyperoptimizer finds the shards itself (hyperopt/shards.py).
A checkpoint holds the state as one process holds it (under fsdp every shard gathered), so a run resumes with any
number of processes.
"""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hyperopt.shards import is_dtensor

SETTINGS = ("ddp", "fsdp")


class World:
    """This process's place among the run's processes."""

    def __init__(self, setting: str, rank: int, size: int, local_rank: int):
        self.setting, self.rank, self.size, self.local_rank = setting, rank, size, local_rank

    @classmethod
    def from_environment(cls, setting: str | None) -> World | None:
        """The processes torchrun started (WORLD_SIZE, RANK, LOCAL_RANK), or None for a run of one process."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if setting is None:
            if size > 1:
                raise ValueError(f"this is one of {size} processes (WORLD_SIZE={size}: torchrun?) but "
                                 "distributed=null, so each would train the whole run: add distributed=ddp (or "
                                 "fsdp)")
            return None
        if setting not in SETTINGS:
            raise ValueError(f"distributed={setting!r}; choose null (one process) or one of {list(SETTINGS)}")
        if "RANK" not in os.environ:
            raise ValueError(f"distributed={setting} trains one run on the processes torchrun starts: torchrun "
                             f"--nproc_per_node=N experiments/train.py ... distributed={setting}")
        return cls(setting, int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def writes(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this process: its own GPU (LOCAL_RANK) on a machine of several."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def start(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=self.rank, world_size=self.size,
                                timeout=datetime.timedelta(minutes=10))

    def stop(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def describe(self, device: torch.device) -> dict:
        return {"setting": self.setting, "world_size": self.size,
                "backend": "nccl" if device.type == "cuda" else "gloo"}

    def check_shares(self, rows: set[int]) -> None:
        """Each batch must split into equal shares, or the averaged gradient is not the whole batch's."""
        uneven = sorted(size for size in rows if size % self.size)
        if uneven:
            # Every process finds the same batches uneven. They stop together: torchrun ends the others once one
            # has failed, and the writer, still loading its data, would be stopped before it wrote why.
            dist.barrier()
            raise ValueError(f"batches of {', '.join(map(str, uneven))} rows do not split into {self.size} equal "
                             "shares, one per process (the averaged gradient would not be the whole batch's): "
                             "choose a batch size, and a number of processes, that divide every batch")

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """What trains: DDP around the model, or the model itself, each layer with parameters and the whole sharded
        in place (fully_shard)."""
        if self.setting == "ddp":
            return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        from torch.distributed.fsdp import fully_shard
        for child in model.children():
            if any(True for _ in child.parameters()):
                fully_shard(child)
        fully_shard(model)
        return model

    def full_state(self, model: torch.nn.Module, optimizer) -> dict:
        """The model's and the optimizer's state as one process holds them; under fsdp every shard gathered (each
        process must call it: it is a collective)."""
        model_state, optimizer_state = model.state_dict(), optimizer.state_dict()
        if self.setting == "fsdp":
            model_state = {key: value.full_tensor() if is_dtensor(value) else value
                           for key, value in model_state.items()}
            params = [p for group in optimizer.param_groups for p in group["params"]]
            optimizer_state = {**optimizer_state, "state": {
                index: {name: _whole(value, params[index]) for name, value in state.items()}
                for index, state in optimizer_state["state"].items()}}
        return {"model": model_state, "optimizer": optimizer_state}

    def load_full_state(self, model: torch.nn.Module, optimizer, state: dict) -> None:
        """The inverse of full_state: under fsdp each process keeps its shards."""
        model_state, optimizer_state = state["model"], state["optimizer"]
        if self.setting == "fsdp":
            from torch.distributed.tensor import distribute_tensor
            model_state = {key: distribute_tensor(model_state[key], template.device_mesh, template.placements)
                           if is_dtensor(template) else model_state[key]
                           for key, template in model.state_dict().items()}
            params = [p for group in optimizer.param_groups for p in group["params"]]
            optimizer_state = {**optimizer_state, "state": {
                index: {name: _shard(value, params[index]) for name, value in saved.items()}
                for index, saved in optimizer_state["state"].items()}}
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)

    def share(self, batch: tuple) -> tuple:
        """This process's rows of each of the batch's tensors."""
        return tuple(tensor.tensor_split(self.size)[self.rank] for tensor in batch)

    def together(self, loss: torch.Tensor, stop: bool, due: bool) -> tuple[torch.Tensor, bool, bool]:
        """The step's loss averaged over the processes (the global batch's), whether any process was asked to
        stop (torchrun passes SIGTERM to each, not at the same step) and whether a checkpoint is due (under fsdp
        every process gathers its shards for it): one all-reduce."""
        flags = loss.new_tensor([float(stop), float(due)], dtype=torch.float64)
        together = torch.cat([loss.detach().reshape(1).double(), flags])
        dist.all_reduce(together)
        return (together[0] / self.size).to(loss.dtype).reshape(loss.shape), bool(together[1]), bool(together[2])

    def from_writer(self, value):
        """Rank 0's value, on every process (a checkpoint it read, the run it opened)."""
        holder = [value if self.writes else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def tidy(self, own: str, writers: str | None) -> None:
        """A process that writes nothing still had a Hydra run folder made for it (its own time stamp): removed,
        where it holds nothing but Hydra's own files."""
        folder = Path(own)
        if self.writes or writers is None or folder.resolve() == Path(writers).resolve() or not folder.is_dir():
            return
        if {entry.name for entry in folder.iterdir()} <= {".hydra", "train.log"}:
            shutil.rmtree(folder, ignore_errors=True)


def _whole(value: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A parameter's optimizer state gathered from its shards (hyperopt keeps each process's shard as a tensor of
    the shard's shape; a step count is one number)."""
    if is_dtensor(value):
        return value.full_tensor()
    if not is_dtensor(p) or value.dim() == 0:
        return value
    from torch.distributed.tensor import DTensor
    return DTensor.from_local(value, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                              stride=p.stride()).full_tensor()


def _shard(value: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    if not is_dtensor(p) or value.dim() == 0:
        return value
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(value, p.device_mesh, p.placements).to_local()


class ReplicaRecord:
    """A run's record as a process other than rank 0 holds it: the writer's values, nothing written."""

    def __init__(self, attempt: int, summary: dict, last: dict | None):
        self.attempt, self.summary, self._last = attempt, dict(summary), last

    def progress(self, **fields) -> None:
        self.summary.update(fields)

    def finish(self, status: str, **fields) -> dict:
        self.summary.update(fields, status=status)
        return self.summary

    def forget_from(self, epoch: int, step: int) -> None:
        pass

    def amend(self, **fields) -> None:
        pass

    def log_hyperparameters(self, step: int, hyperparameters: list[dict]) -> str:
        return ""

    def log_epoch(self, metrics: dict) -> str:
        return ""

    def last_metrics(self) -> dict | None:
        return self._last
