"""How the benchmark scripts time: each way to train is a Loop; the loops run in interleaved rounds, so that drift
in the machine's speed hits all of them alike, and the median over rounds is reported."""

from __future__ import annotations

import itertools
import statistics
import time

import torch


class Loop:
    """One way to train, timed: batches from an endless iterator, and a step taking (x, y)."""

    def __init__(self, name: str, batches, step):
        self.name, self.batches, self.step = name, batches, step

    def run(self, steps: int, device: torch.device) -> float:
        """Mean seconds per step over `steps` consecutive steps, the device's queue drained before and after."""
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x, y in itertools.islice(self.batches, steps):
            self.step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps


def interleaved_rounds(loops: list[Loop], steps: int, rounds: int, warmup: int,
                       device: torch.device) -> dict[str, list[float]]:
    """{loop name: its mean seconds per step in each of `rounds` interleaved rounds}, after `warmup` untimed steps of
    each loop."""
    for loop in loops:
        loop.run(warmup, device)
    times = {loop.name: [] for loop in loops}
    for _ in range(rounds):
        for loop in loops:
            times[loop.name].append(loop.run(steps, device))
    return times


def interleaved(loops: list[Loop], steps: int, rounds: int, warmup: int, device: torch.device) -> dict[str, float]:
    """{loop name: median over `rounds` interleaved rounds of the mean seconds per step}."""
    times = interleaved_rounds(loops, steps, rounds, warmup, device)
    return {name: statistics.median(values) for name, values in times.items()}


def paired_ratio(times: list[float], baseline: list[float]) -> float:
    """The median over rounds of each round's time over the baseline's in the same round: drift in the machine's
    speed between rounds (a shared machine's speed wanders by tens of percent) cancels in each round's ratio."""
    return statistics.median(a / b for a, b in zip(times, baseline))
