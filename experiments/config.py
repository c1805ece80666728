"""The run configuration: Table 1's experiments, registered from the paper's rows (experiments/paper.py) rather than
written out as 32 files, and the check of every value a run is given before it starts."""

from __future__ import annotations

import re

from hydra.core.config_store import ConfigStore

from experiments.paper import TABLE_1
from experiments.robustness import register_resolvers
from experiments.schedules import check as check_schedule


def register_configs() -> None:
    """What the configs need beyond configs/: `+exp=mnist_sgd_adam` and the 31 others, one experiment per row of
    Table 1 (the stack, its epochs and, for a rerun with the learned values fixed, the stack that learned them), and
    the resolvers of the robustness benchmark's config."""
    register_resolvers()
    store = ConfigStore.instance()
    for row in TABLE_1:
        store.store(group="exp", name=row.config_name, package="_global_",
                    node={"experiment": "table1", "optimizer": row.stack, "epochs": row.epochs,
                          "rerun_of": row.rerun_of})


class ConfigError(ValueError):
    """A config value that is not allowed; the message is one line naming the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"bad config value {key}={value!r}: {key} must be {allowed}")


def _whole(minimum: int):
    def check(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    return check, f"a whole number ≥ {minimum}"


def _optional_whole(minimum: int):
    check, allowed = _whole(minimum)
    return (lambda value: value is None or check(value)), f"null (all) or {allowed}"


def _number(low: float, high: float | None = None, low_open: bool = True, high_open: bool = True):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return False
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        return above and below
    if high is None:
        allowed = f"a number {'>' if low_open else '≥'} {low:g}"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return check, allowed


def _one_of(*choices):
    return (lambda value: isinstance(value, (str, bool)) and value in choices), \
        "one of " + ", ".join(str(c).lower() if isinstance(c, bool) else c for c in choices)


_BOOLEAN = (lambda value: isinstance(value, bool)), "true or false"
_TEXT = (lambda value: isinstance(value, str) and value.strip() != ""), "a non-empty string"
_DEVICE = (lambda value: isinstance(value, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) is not None,
           "auto, cpu, cuda, cuda:N or mps")
_OPTIMIZER = (lambda value: (isinstance(value, str) and value.strip() != "")
              or (isinstance(value, dict) and isinstance(value.get("_target_"), str)),
              "a stack in the paper's notation, e.g. \"Adam/SGD(1e-5)\" (quoted for the shell and for Hydra), a "
              "learning-rate-free optimizer, or a builder {_target_: ...}")
_STEP_SIZE = (lambda value: value == "auto" or _number(0.0, low_open=False)[0](value)), "auto or a number ≥ 0"
_UPPER = (lambda value: value == "same" or _number(0.0, low_open=False)[0](value)), "same or a number ≥ 0"

# Every key a run may hold and what it allows. A key absent from a run's config is not checked (the text has no
# test_subset, MNIST no sequence_length); a key the experiment lacks cannot be set without Hydra's `+`.
RULES = {
    "experiment": _TEXT,
    "optimizer": _OPTIMIZER,
    "row": _TEXT,
    "compile": _BOOLEAN,
    "backend": _one_of("ours", "reference"),
    "precision": _one_of("fp32", "bf16"),
    "channels_last": _BOOLEAN,
    "seed": _whole(0),
    "epochs": _whole(1),
    "batch_size": _whole(1),
    "device": _DEVICE,
    "distributed": ((lambda value: value is None or value in ("ddp", "fsdp")),
                    "null (one process), ddp or fsdp (the processes torchrun starts)"),
    "logger": _one_of("local", "wandb"),
    "wandb.project": _TEXT,
    "wandb.mode": _one_of("online", "offline", "disabled"),
    "progress": _one_of("auto", True, False),
    "log_every_steps": ((lambda value: value == "auto" or _whole(1)[0](value)), "auto or a whole number ≥ 1"),
    "checkpoint.every_minutes": ((lambda value: value is None or _number(0.0)[0](value)),
                                 "null (at the end of each epoch only) or a number of minutes > 0"),
    "checkpoint.keep": _BOOLEAN,
    "data.name": _one_of("mnist", "cifar10", "text"),
    "data.root": _TEXT,
    "data.download": _BOOLEAN,
    "data.subset": _optional_whole(1),
    "data.test_subset": _optional_whole(1),
    "data.augment": _BOOLEAN,
    "data.eval_batch_size": _whole(1),
    "data.file": _TEXT,
    "data.sequence_length": _whole(1),
    "data.sample_length": _whole(0),
    "data.temperature": _number(0.0),
    "model.name": _one_of("mlp", "resnet20", "char_rnn", "char_gpt"),
    "model.embedding": _whole(1),
    "model.hidden": _whole(1),
    "model.layers": _whole(1),
    "model.dropout": _number(0.0, 1.0, low_open=False),
    "model.width": _whole(1),
    "model.heads": _whole(1),
    "model.context": _whole(1),
    "sensitivity.method": _TEXT,
    "sensitivity.alpha": _number(0.0, low_open=False),
    "sensitivity.height": _whole(0),
    "sensitivity.upper": _UPPER,
    "robustness.method": _TEXT,
    "robustness.alpha": _number(0.0, low_open=False),
    "robustness.trial": _whole(0),
    "rnn.alpha": _number(0.0, low_open=False),
    "rnn.hyper": _BOOLEAN,
    "rnn.kappa": _number(0.0, low_open=False),
    "cifar.alpha": _number(0.0, low_open=False),
    "cifar.momentum": _number(0.0, 1.0, low_open=False),
    "cifar.weight_decay": _number(0.0, low_open=False),
    "cifar.hyper": _BOOLEAN,
    "cifar.kappa_alpha": _STEP_SIZE,
    "cifar.kappa_momentum": _STEP_SIZE,
}
_MISSING = object()


def _lookup(config: dict, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def validate(config: dict) -> None:
    """Raise ConfigError for the first value of a resolved run config that is not allowed."""
    for key, (check, allowed) in RULES.items():
        value = _lookup(config, key)
        if value is not _MISSING and not check(value):
            raise ConfigError(key, value, allowed)
    schedule = config.get("schedule")
    if schedule is not None:
        problem = check_schedule(schedule) if isinstance(schedule, dict) else (
            "schedule", schedule, "null or {name: step | warmup_cosine | one_cycle, ...}")
        if problem:
            raise ConfigError(*problem)
