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
        self.diverged: str | None = None  # why its training stopped (interleaved_rounds), or None

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
    each loop. A loop whose training diverges (a FloatingPointError, as hyperopt's DivergenceError is) leaves the
    rounds and the result, and says why in its `diverged`; the others go on."""
    times = {loop.name: [] for loop in loops}
    for round_ in range(rounds + 1):  # (round 0: the warm-up, untimed)
        for loop in loops:
            if loop.diverged is not None:
                continue
            try:
                seconds = loop.run(steps if round_ else warmup, device)
            except FloatingPointError as error:
                loop.diverged = str(error)
                del times[loop.name]
                continue
            if round_:
                times[loop.name].append(seconds)
    return times


def raise_if_diverged(loops: list[Loop]) -> None:
    diverged = [f"{loop.name}: {loop.diverged}" for loop in loops if loop.diverged is not None]
    if diverged:
        raise FloatingPointError("training diverged, so there is no time to report: " + "; ".join(diverged))


def interleaved(loops: list[Loop], steps: int, rounds: int, warmup: int, device: torch.device) -> dict[str, float]:
    """{loop name: median over `rounds` interleaved rounds of the mean seconds per step}; a loop that diverged
    stops it, saying which and why."""
    times = interleaved_rounds(loops, steps, rounds, warmup, device)
    raise_if_diverged(loops)
    return {name: statistics.median(values) for name, values in times.items()}


def paired_ratio(times: list[float], baseline: list[float]) -> float:
    """The median over rounds of each round's time over the baseline's in the same round: drift in the machine's
    speed between rounds (a shared machine's speed wanders by tens of percent) cancels in each round's ratio."""
    return statistics.median(a / b for a, b in zip(times, baseline))
