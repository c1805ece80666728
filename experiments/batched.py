"""Which runs of a sweep can be trained together as one network (hydra/launcher=batched; experiments/loop.py
trains them).

A group shares everything but what a run alone may choose freely: its seed (so its initial weights, data order and
augmentation), its optimizer's values, and what only labels it. Each run's record is the one a lone run writes,
with `batched` in its summary (the group's size and its members); the epoch's seconds are the whole group's.
"""

from __future__ import annotations

import json

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import hyperopt
from experiments.optimizers import stack_levels
from models import BATCHABLE

# What the runs of one group may differ in: the seed, the optimizer's values (through the experiments' numbers that
# build it), and what only labels or reports a run.
FREE = {"seed", "optimizer", "row", "rerun_of", "experiment", "rnn", "cifar", "sensitivity", "robustness", "logger",
        "wandb", "checkpoint", "progress"}


def group_key(config: dict) -> str | None:
    """Runs with equal keys can be trained as one network; None for a run that must train alone."""
    if config.get("model", {}).get("name") not in BATCHABLE:
        return None  # an architecture batch_models has no batched version of (the GPT)
    if config.get("backend") != "ours" or config.get("channels_last"):
        # the reference code trains one run; a batched network lays its images out as (batch, runs·channels, ...),
        # not channels_last
        return None
    try:
        levels = stack_levels(config["optimizer"])
    except (ValueError, TypeError):
        return None  # a bad stack is reported by its own run
    if levels is None:
        return None  # a learning-rate-free optimizer
    shared = {key: value for key, value in config.items() if key not in FREE}
    return json.dumps([shared, repr(hyperopt.notation.structure(levels))], sort_keys=True, default=str)


def group_jobs(jobs: list[DictConfig], max_runs: int | None = None) -> list[list[int]]:
    """The sweep's jobs (their configs) as groups of indices, in the order of their first job."""
    groups: dict[str, list[list[int]]] = {}
    order: list[list[int]] = []
    for index, job in enumerate(jobs):
        HydraConfig.instance().set_config(job)
        task = job.copy()
        with open_dict(task):
            del task["hydra"]  # (which refers to the run folder run_job has yet to make)
        key = group_key(OmegaConf.to_container(task, resolve=True))
        if key is None:
            order.append([index])
            continue
        chunks = groups.setdefault(key, [])
        if not chunks or (max_runs is not None and len(chunks[-1]) >= max_runs):
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(index)
    return order
