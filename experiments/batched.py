"""Runs trained together as one network (hydra/launcher=batched): which runs can share one, and training them.

A group shares everything but what a run alone may choose freely: its seed (so its initial weights, data order and
augmentation), its optimizer's values, and what only labels it. The network is models.batch_models of each run's
own model (built under its own seed, as a lone run builds it), the optimizer one hyperopt stack of runs; each step
stacks every run's own batch. Each run's record is the one a lone run writes, with `batched` in its summary (the
group's size and its members). What differs from a lone run: the epoch's seconds are the whole group's, and a
group checkpoints at each epoch's end only, into its first run's folder (the same sweep run again resumes the group
from it; what it had trained of an unfinished epoch is trained again).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import hyperopt
from experiments.checkpoints import Checkpoints
from experiments.config import validate
from experiments.loggers import make_logger
from experiments.optimizers import stack_levels
from experiments.provenance import machine
from experiments.tasks import make_task
from experiments.train import (BeforeTraining, OpenRun, TrainingDiverged, failed, log_every, report, resolve_device,
                               seeded_model)
from models import batch_models

log = logging.getLogger("train")

# What the runs of one group may differ in: the seed, the optimizer's values (through the experiments' numbers that
# build it), and what only labels or reports a run.
FREE = {"seed", "optimizer", "row", "rerun_of", "experiment", "rnn", "cifar", "sensitivity", "logger", "wandb",
        "checkpoint", "progress"}


def group_key(config: dict) -> str | None:
    """Runs with equal keys can be trained as one network; None for a run that must train alone."""
    if config.get("schedule") is not None or config.get("backend") != "ours" or config.get("channels_last"):
        # a step schedule drives one fixed step size per run; the reference code trains one run; a batched
        # network lays its images out as (batch, runs·channels, ...), not channels_last
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


def _run_log(directory: str) -> logging.Logger:
    """The run's own train.log, which a lone run's Hydra job log would be."""
    logger = logging.getLogger(f"train.run.{directory}")
    logger.propagate = False
    if not logger.handlers:
        handler = logging.FileHandler(Path(directory) / "train.log")
        handler.setFormatter(logging.Formatter("[%(asctime)s][train][%(levelname)s] - %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def train_together(runs: list[OpenRun]) -> None:
    """Train these runs (one group) as one network and write each one's record."""
    ready = []
    for run in runs:
        try:
            validate(run.config)
            ready.append(run)
        except ValueError as error:
            failed(run, BeforeTraining(str(error)))
    if not ready:
        return
    try:
        _train(ready)
    except Exception as error:  # a failure of the group is each unfinished run's
        for run in ready:
            if run.record.summary.get("status") in (None, "running"):
                failed(run, error)


def _train(runs: list[OpenRun]) -> None:
    cfg = runs[0].cfg
    device = resolve_device(cfg.device)
    task = make_task(cfg, device)
    for run in runs:
        run.record.amend(machine=machine(device))
    network = batch_models([seeded_model(run.cfg, run.config, task, device) for run in runs]).to(device)
    optimizer = hyperopt.stack([stack_levels(run.config["optimizer"]) for run in runs], network.parameters(),
                               compile=cfg.compile)
    count = len(runs)
    members = [run.directory for run in runs]
    loggers = [make_logger(run.cfg.logger, run.config["wandb"], run.config, run.directory,
                           name=f"{run.cfg.row} seed={run.cfg.seed}", group=f"{run.cfg.experiment}/{run.cfg.row}")
               for run in runs]
    run_logs = [_run_log(run.directory) for run in runs]
    initial = [hyperopt.format_stack(optimizer, run=i) for i in range(count)]
    shuffles = [torch.Generator().manual_seed(run.cfg.seed) for run in runs]
    outcomes: dict[int, dict] = {}
    last: dict[int, dict] = {}
    step, epoch_seconds, first_epoch = 0, [], 1
    # The group's checkpoint, at each epoch's end, lives in its first run's folder and names every member.
    checkpoints = Checkpoints(runs[0].directory)
    saved = checkpoints.load() if any(run.record.attempt > 1 for run in runs) else None
    if saved is not None and saved["members"] == members:
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        for shuffle, state in zip(shuffles, saved["shuffles"]):
            shuffle.set_state(state)
        torch.set_rng_state(saved["torch_rng"])
        initial, outcomes, last = saved["initial"], saved["outcomes"], saved["last"]
        step, epoch_seconds, first_epoch = saved["step"], saved["epoch_seconds"], saved["epoch"] + 1
        log.info("%d runs as one network resumed from the checkpoint after epoch %d", count, saved["epoch"])
    elif saved is not None:
        log.warning("the checkpoint in %s is of another group of runs: this group starts from its first step",
                    runs[0].directory)
    for run, stack in zip(runs, initial):
        run.record.forget_from(first_epoch, step)
        run.record.summary["optimizer_initial"] = stack
    log.info("%d runs as one network on %s: %s, %s", count, device, task.description, cfg.experiment)
    every = log_every(cfg.log_every_steps, task.steps_per_epoch * cfg.epochs)
    for epoch in range(first_epoch, cfg.epochs + 1):
        start = time.perf_counter()
        first_step = step + 1
        losses = []
        for batches in zip(*(task.batches(shuffle) for shuffle in shuffles)):
            x = torch.stack([batch[0] for batch in batches])
            y = torch.stack([batch[1] for batch in batches])
            losses.append(task.step_runs(network, optimizer, x, y))
            step += 1
            if step % every == 0:
                for i, run in enumerate(runs):
                    if i not in outcomes:
                        run.record.log_hyperparameters(step, optimizer.hyperparameters(run=i))
        stacked = torch.stack(losses).cpu()  # (steps, runs)
        frozen = {event["run"]: event for event in optimizer.diverged()}
        train_losses, steps = [], []
        for i in range(count):
            # A run frozen at step s stopped before it: its lone run raised there, with s - 1 steps behind it.
            taken = frozen[i]["step"] - first_step if i in frozen and frozen[i]["step"] >= first_step else len(stacked)
            run_losses = stacked[:taken, i]
            train_losses.append(float(run_losses.mean()) if taken else float("nan"))
            steps.append(first_step - 1 + taken)
        evaluations = task.evaluate_runs(network, train_losses)
        epoch_seconds.append(time.perf_counter() - start)
        for i, run in enumerate(runs):
            if i in outcomes:
                continue
            outcome = {}
            if i in frozen and frozen[i]["step"] >= first_step:
                event = frozen[i]
                outcome = {"status": "diverged", "diverged_at_step": event["step"], "error": str(
                    hyperopt.DivergenceError(event["level"], event["optimizer"], event["hyperparameter"],
                                             event["step"], float("nan")))}
            else:
                finite = torch.isfinite(stacked[:, i])
                if not bool(finite.all()):
                    at = first_step + int((~finite).nonzero()[0])
                    outcome = {"status": "diverged", "diverged_at_step": at, "error": str(TrainingDiverged(at))}
            metrics = {"epoch": epoch, "step": steps[i], "train_loss": train_losses[i], **evaluations[i],
                       "hyperparameters": optimizer.hyperparameters(run=i), "epoch_seconds": epoch_seconds[-1]}
            run.record.log_epoch(metrics)
            run.record.progress(last_epoch=epoch, steps=steps[i])
            loggers[i].log(metrics, step=epoch)
            run_logs[i].info("epoch %d: train loss %.4f, %s, %.2f s (%d runs as one)", epoch, train_losses[i],
                             task.describe(metrics), epoch_seconds[-1], count)
            last[i] = metrics
            if outcome:
                run_logs[i].warning("diverged: %s", outcome["error"])
                outcomes[i] = outcome
        done = sum(1 for i in range(count) if i in outcomes)
        log.info("epoch %d: %d runs as one, %.2f s%s", epoch, count, epoch_seconds[-1],
                 f", {done} diverged" if done else "")
        if done == count:
            break
        checkpoints.save({"members": members, "epoch": epoch, "step": step, "network": network.state_dict(),
                          "optimizer": optimizer.state_dict(), "shuffles": [g.get_state() for g in shuffles],
                          "torch_rng": torch.get_rng_state(), "initial": initial, "outcomes": outcomes,
                          "last": last, "epoch_seconds": epoch_seconds})
    for i, run in enumerate(runs):
        metrics = last[i]
        finished = task.finish(network.run_model(i).eval(), run.record.directory, run.cfg.seed)
        outcome = outcomes.get(i, {"status": "ok"})
        summary = run.record.finish(
            outcome.pop("status"), **outcome, data=task.description, train_examples=task.train_examples,
            epochs_completed=metrics["epoch"], steps=metrics["step"],
            **{k: v for k, v in metrics.items() if k not in ("epoch", "step", "epoch_seconds")}, **finished,
            optimizer_initial=initial[i], optimizer_final=hyperopt.format_stack(optimizer, run=i),
            seconds_per_epoch=statistics.median(epoch_seconds), batched={"runs": count, "members": members})
        loggers[i].finish(summary)
        report(run.cfg.row, summary, run.directory)
    if not cfg.checkpoint.keep:
        checkpoints.remove()
