"""The `schedule=` of a run: a factor on the weights' step size at every step, for any optimizer.

On a fixed step size it is the schedule itself; on a learned one it shapes what the levels above learn (the step
uses the factor times the learned value, hyperopt/hyperoptimizer.py). Three shapes, each a fraction of the run:
  {name: step, milestones: [fractions of the epochs], gamma: g}   × g at each milestone, once an epoch
  {name: warmup_cosine, warmup: fraction, final: f}               linear warmup, then cosine decay to f
  {name: one_cycle, warmup: fraction, div: d, final_div: e}       from 1/d up to 1 and down to 1/(d·e), cosines
The factor is a function of the step alone, so a resumed run continues its schedule with nothing saved.
"""

from __future__ import annotations

import math

SHAPES = {
    "step": {"milestones": None, "gamma": 0.1},
    "warmup_cosine": {"warmup": 0.05, "final": 0.0},
    "one_cycle": {"warmup": 0.3, "div": 25.0, "final_div": 1e4},
}


def check(schedule: dict) -> tuple[str, object, str] | None:
    """(key, value, what is allowed) for the first bad value of a resolved `schedule`, None if nothing is."""
    name = schedule.get("name", "step")
    if name not in SHAPES:
        return "schedule.name", name, f"one of {', '.join(SHAPES)}"
    unknown = sorted(set(schedule) - set(SHAPES[name]) - {"name"})
    if unknown:
        return (f"schedule.{unknown[0]}", schedule[unknown[0]],
                f"left out: a {name} schedule takes {', '.join(SHAPES[name])}")
    values = {**SHAPES[name], **schedule}
    number = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)  # noqa: E731
    if name == "step":
        milestones = values["milestones"]
        if not isinstance(milestones, list) or not milestones or not all(
                number(m) and 0.0 < m < 1.0 for m in milestones):
            return "schedule.milestones", milestones, "a list of fractions of the run's epochs, in (0, 1)"
        if not number(values["gamma"]) or values["gamma"] < 0:
            return "schedule.gamma", values["gamma"], "a factor ≥ 0"
        return None
    warmup = values["warmup"]
    if not number(warmup) or not (0.0 <= warmup < 1.0 if name == "warmup_cosine" else 0.0 < warmup < 1.0):
        interval = "[0, 1)" if name == "warmup_cosine" else "(0, 1)"
        return "schedule.warmup", warmup, f"the fraction of the run's steps spent warming up, in {interval}"
    if name == "warmup_cosine" and not (number(values["final"]) and 0.0 <= values["final"] <= 1.0):
        return "schedule.final", values["final"], "the factor at the end of the run, in [0, 1]"
    for key in ("div", "final_div") if name == "one_cycle" else ():
        if not number(values[key]) or values[key] <= 0:
            return f"schedule.{key}", values[key], "a factor > 0"
    return None


class Schedule:
    """The factor of each step (1-based) of a run of `epochs` epochs of `steps_per_epoch` steps, applied to the step
    sizes the param groups were made with."""

    def __init__(self, schedule: dict, steps_per_epoch: int, epochs: int, param_groups: list[dict]):
        problem = check(schedule)
        if problem:
            key, value, allowed = problem
            raise ValueError(f"bad config value {key}={value!r}: {key} must be {allowed}")
        self.name = schedule.get("name", "step")
        self.values = {**SHAPES[self.name], **schedule}
        self.steps_per_epoch, self.total = steps_per_epoch, steps_per_epoch * epochs
        if self.name == "step":  # as torch's MultiStepLR stepped at the end of each epoch
            self.milestones = sorted({max(1, round(fraction * epochs)) for fraction in self.values["milestones"]})
        self.param_groups = param_groups
        self.bases = [group["lr"] for group in param_groups]  # before a checkpoint's scheduled values are loaded

    def factor(self, step: int) -> float:
        if self.name == "step":
            finished = (step - 1) // self.steps_per_epoch  # epochs before this step's
            return self.values["gamma"] ** sum(finished >= milestone for milestone in self.milestones)
        warmup = round(self.values["warmup"] * self.total)
        if self.name == "warmup_cosine":
            if step <= warmup:
                return step / warmup
            final = self.values["final"]
            return final + (1.0 - final) * (1.0 + math.cos(math.pi * (step - warmup) / max(1, self.total - warmup))) / 2
        low, lowest = 1.0 / self.values["div"], 1.0 / (self.values["div"] * self.values["final_div"])
        if step <= warmup:
            return low + (1.0 - low) * (1.0 - math.cos(math.pi * step / warmup)) / 2
        return lowest + (1.0 - lowest) * (1.0 + math.cos(math.pi * (step - warmup) / max(1, self.total - warmup))) / 2

    def apply(self, step: int) -> None:
        """Set every group's step size for this step."""
        factor = self.factor(step)
        for group, base in zip(self.param_groups, self.bases):
            group["lr"] = base * factor
