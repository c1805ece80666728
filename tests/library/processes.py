"""Several processes on the CPU for the tests: each runs `function(rank, world_size, *args)` in a gloo process group
of its own, and what each returns (tensors, numbers, lists and dicts of them) comes back, rank by rank. A rank that
fails raises here with its traceback; a collective that a rank never enters fails within the timeout instead of
hanging the suite."""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_processes(function, world_size: int, *args, timeout: float = 120.0) -> list:
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        processes = [context.Process(target=_rank_main, args=(function, rank, world_size, folder, timeout, args))
                     for rank in range(world_size)]
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        if hung:
            raise TimeoutError(f"ranks {hung} of {world_size} did not finish within {timeout} s (a collective "
                               "that another rank never entered?)")
        errors = [open(os.path.join(folder, f"{rank}.error")).read() for rank in range(world_size)
                  if os.path.exists(os.path.join(folder, f"{rank}.error"))]
        if errors:
            raise RuntimeError("a rank failed:\n" + "\n".join(errors))
        died = [(rank, processes[rank].exitcode) for rank in range(world_size)
                if not os.path.exists(os.path.join(folder, f"{rank}.pt"))]
        if died:
            raise RuntimeError(f"ranks exited without a result: {died} (rank, exit code)")
        return [torch.load(os.path.join(folder, f"{rank}.pt"), weights_only=True) for rank in range(world_size)]


def _rank_main(function, rank: int, world_size: int, folder: str, timeout: float, args) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(folder, 'store')}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout / 2))
        result = function(rank, world_size, *args)
        torch.save(result, os.path.join(folder, f"{rank}.pt"))
    except BaseException:
        with open(os.path.join(folder, f"{rank}.error"), "w") as error:
            error.write(f"rank {rank}: {traceback.format_exc()}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        # Done, its result or error written: leave without the interpreter's teardown, where a communication
        # thread still being torn down now and then aborts the process ("terminate called without an active
        # exception") after its work is over.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
