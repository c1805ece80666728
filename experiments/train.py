"""Train one run and write its record.

    python experiments/train.py +exp=mnist_sgd                         # one row of Table 1
    python experiments/train.py +exp=mnist_adam_sgd seed=1 epochs=1    # any value can be overridden
    python experiments/train.py 'optimizer="Adam^α/SGD(1e-5)"'         # any stack (quoted for the shell and Hydra)
    python experiments/train.py -m +exp=mnist_sgd seed=0,1,2           # a sweep (Hydra multirun)

The record (run.json, metrics.jsonl, summary.json; see experiments/records.py) goes into Hydra's run folder,
hydra.run.dir=PATH to choose it. Every value is checked before the run starts (experiments/config.py). A run that
diverges is recorded as such; a run that fails, before its first step or during training, is recorded with its
error; a sweep goes on either way, and ends with a tally and a non-zero exit if any run failed.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import hyperopt
from experiments.checkpoints import Checkpoints
from experiments.config import register_table_1, validate
from experiments.loggers import make_logger
from experiments.optimizers import build_optimizer, build_schedule, set_mode
from experiments.provenance import machine, provenance
from experiments.records import RecordExistsError, RunFinished, RunRecord
from experiments.sweep import note_action
from experiments.tasks import make_task
from models import build_model

log = logging.getLogger("train")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
register_table_1()


class TrainingDiverged(FloatingPointError):
    def __init__(self, step: int):
        self.step = step
        super().__init__(f"the training loss became NaN or infinite at step {step}")


class BeforeTraining(RuntimeError):
    """A run that failed before its first step: bad input (a config value, a device, the data, the optimizer),
    reported in one line rather than a traceback."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but this machine has no CUDA device; use device=cpu or device=auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s), "
                         "cuda:0 to cuda:N-1")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name} but this machine has no MPS device; use device=cpu or device=auto")
    return device


def log_every(setting, total_steps: int) -> int:
    """Steps between two logs of every level's hyperparameters: `auto` gives about 250 points per run."""
    return max(1, -(-total_steps // 250)) if setting == "auto" else int(setting)


def show_progress(setting, multirun: bool) -> bool:
    if setting == "auto":
        return sys.stderr.isatty() and not multirun and not os.environ.get("CI")
    return bool(setting)


def seeded_model(cfg: DictConfig, config: dict, task, device: torch.device) -> torch.nn.Module:
    """The run's model, its initial weights drawn under the run's seed (alone or as one of a batched group)."""
    torch.manual_seed(cfg.seed)
    options = {k: v for k, v in config["model"].items() if k != "name"}
    return build_model(cfg.model.name, **task.model_options, **options).to(device)


def prepare(cfg: DictConfig, config: dict, record: RunRecord, directory: str):
    """Everything a run needs before its first step: the device, the data, the model, the optimizer, the
    schedule and the logger. Any failure here is the run's input, raised as BeforeTraining."""
    try:
        validate(config)
        device = resolve_device(cfg.device)
        record.amend(machine=machine(device))
        task = make_task(cfg, device)
        model = seeded_model(cfg, config, task, device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.backend == "reference":
            from experiments.reference import ReferenceBackend
            if cfg.schedule is not None:
                raise ValueError("backend=reference runs the reference code's stacks, which take no schedule")
            optimizer = ReferenceBackend(config["optimizer"], model)
        else:
            optimizer = build_optimizer(config["optimizer"], model.parameters(), compile=cfg.compile)
        schedule = build_schedule(cfg.schedule, optimizer, cfg.epochs)
        logger = make_logger(cfg.logger, config["wandb"], config, directory, name=f"{cfg.row} seed={cfg.seed}",
                             group=f"{cfg.experiment}/{cfg.row}")
    except Exception as error:
        plain = isinstance(error, (ValueError, FileNotFoundError, ImportError))  # messages written for users
        raise BeforeTraining(str(error) if plain else f"{type(error).__name__}: {error}") from error
    return device, task, model, optimizer, schedule, logger


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: the run was checkpointed at a step boundary and stops (a sweep stops with it)."""

    def __init__(self, signal_number: int, step: int):
        self.signal_number, self.step = signal_number, step
        super().__init__(f"{signal.Signals(signal_number).name} at step {step}")


class StopRequest:
    """Turns SIGTERM and SIGINT into a request that the training loop honours at its next step boundary."""

    def __init__(self):
        self.signal_number = None

    def __call__(self, signal_number, frame) -> None:
        self.signal_number = signal_number

    def __enter__(self):
        self.previous = {number: signal.signal(number, self) for number in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def train(cfg: DictConfig, task, model, optimizer, schedule, record: RunRecord, logger, progress: bool,
          checkpoints: Checkpoints, stop: StopRequest) -> dict:
    shuffle = torch.Generator().manual_seed(cfg.seed)
    epoch, done, step, losses, epoch_seconds = 1, 0, 0, [], []
    epoch_start = shuffle.get_state()  # the generator's state before the epoch draws its order (and augmentation)
    saved = checkpoints.load() if record.attempt > 1 else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        epoch, done, step, epoch_start = saved["epoch"], saved["batches_done"], saved["step"], saved["epoch_start"]
        losses, epoch_seconds = list(saved["losses"].to(next(model.parameters()).device)), saved["epoch_seconds"]
        log.info("resumed from the checkpoint at epoch %d, step %d (attempt %d)", epoch, step, record.attempt)
    elif record.attempt > 1:
        log.warning("no usable checkpoint in %s: the run starts again from its first step", record.directory)
    record.forget_from(epoch, step)
    every = log_every(cfg.log_every_steps, task.steps_per_epoch * cfg.epochs)
    metrics = record.last_metrics()  # what a run stopped after its last epoch but before it finished had logged
    initial = record.summary.setdefault("optimizer_initial", str(optimizer))
    log.info("%s on %s: %s, %s", str(optimizer), next(model.parameters()).device, task.description, cfg.experiment)

    def state(epoch_seconds_so_far: float) -> dict:
        return {"epoch": epoch, "batches_done": done, "step": step, "epoch_start": epoch_start,
                "losses": torch.stack(losses).cpu() if losses else torch.zeros(0), "epoch_seconds": epoch_seconds,
                "seconds_in_epoch": epoch_seconds_so_far, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "schedule": None if schedule is None else schedule.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "task": task.state_dict()}

    outcome, seconds_before = {}, saved["seconds_in_epoch"] if saved else 0.0
    epochs = tqdm(range(epoch, cfg.epochs + 1), desc=str(cfg.row), unit="epoch", disable=not progress)
    for epoch in epochs:
        start = time.perf_counter() - seconds_before
        shuffle.set_state(epoch_start)
        batches = task.batches(shuffle)
        if done:  # resuming within the epoch: its order is drawn again, the batches already taken are passed over
            batches = itertools.islice(batches, done, None)
            task.load_state_dict(saved["task"])
        try:
            for batch in tqdm(batches, total=task.steps_per_epoch, initial=done, leave=False, unit="step",
                              disable=not progress):
                losses.append(task.step(model, optimizer, batch))
                step, done = step + 1, done + 1
                if step % every == 0:
                    record.log_hyperparameters(step, optimizer.hyperparameters())
                if stop.signal_number is not None or checkpoints.due():
                    checkpoints.save(state(time.perf_counter() - start))
                    if stop.signal_number is not None:
                        raise Interrupted(stop.signal_number, step)
        except hyperopt.DivergenceError as error:
            outcome = {"status": "diverged", "diverged_at_step": error.step, "error": str(error)}
        stacked = torch.stack(losses) if losses else torch.zeros(0)
        finite = torch.isfinite(stacked)
        if not outcome and not bool(finite.all()):
            first = int((~finite).nonzero()[0])
            outcome = {"status": "diverged", "diverged_at_step": step - len(stacked) + first + 1,
                       "error": str(TrainingDiverged(step - len(stacked) + first + 1))}
        train_loss = float(stacked.mean()) if len(stacked) else float("nan")
        set_mode(optimizer, "eval")
        evaluation = task.evaluate(model, train_loss)
        set_mode(optimizer, "train")
        epoch_seconds.append(time.perf_counter() - start)
        metrics = {"epoch": epoch, "step": step, "train_loss": train_loss, **evaluation,
                   "hyperparameters": optimizer.hyperparameters(), "epoch_seconds": epoch_seconds[-1]}
        record.log_epoch(metrics)
        record.progress(last_epoch=epoch, steps=step)
        logger.log(metrics, step=epoch)
        epochs.set_postfix(loss=f"{train_loss:.4f}", evaluation=task.describe(metrics))
        log.info("epoch %d: train loss %.4f, %s, %.2f s", epoch, train_loss, task.describe(metrics),
                 epoch_seconds[-1])
        if outcome:
            log.warning("diverged: %s", outcome["error"])
            break
        if schedule is not None:
            schedule.step()
        epoch, done, losses, seconds_before, epoch_start = epoch + 1, 0, [], 0.0, shuffle.get_state()
        checkpoints.save(state(0.0))
    set_mode(optimizer, "eval")
    finished = task.finish(model, record.directory, cfg.seed)
    return {"status": outcome.get("status", "ok"), **outcome, "data": task.description,
            "train_examples": task.train_examples, "epochs_completed": metrics["epoch"], "steps": step,
            **{k: v for k, v in metrics.items() if k not in ("epoch", "step", "epoch_seconds")}, **finished,
            "optimizer_initial": initial, "optimizer_final": str(optimizer),
            "seconds_per_epoch": statistics.median(epoch_seconds)}


class OpenRun:
    """A run whose record is open in its folder: what training it, alone or with others, needs."""

    def __init__(self, cfg: DictConfig, config: dict, record: RunRecord, directory: str, multirun: bool):
        self.cfg, self.config, self.record, self.directory, self.multirun = cfg, config, record, directory, multirun


def open_run(cfg: DictConfig) -> OpenRun | None:
    """Open the run's record in Hydra's run folder; None when there is nothing to train (finished, or another run's
    folder)."""
    runtime = HydraConfig.get()
    multirun = runtime.mode == RunMode.MULTIRUN
    config = OmegaConf.to_container(cfg, resolve=True)
    directory = runtime.runtime.output_dir
    try:
        record = RunRecord(directory, config, provenance())
    except RunFinished as finished:
        log.info("%s", finished)
        note_action(runtime, directory, "skipped")
        return None
    except RecordExistsError as error:
        log.error("%s", error)
        note_action(runtime, directory, "refused")
        if multirun:
            return None
        sys.exit(1)
    note_action(runtime, directory, {None: "new", "failed": "retried"}.get(record.earlier_status, "resumed"))
    return OpenRun(cfg, config, record, directory, multirun)


def failed(run: OpenRun, error: BaseException, logger=None) -> dict:
    """Record the run as failed with its error; a failure before training in one line."""
    summary = run.record.finish("failed", error=str(error) if isinstance(error, BeforeTraining)
                                else f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    if logger is not None:
        logger.finish(summary)
    if isinstance(error, BeforeTraining):
        log.error("run failed before training: %s (record: %s)", summary["error"], run.directory)
    elif isinstance(error, Exception) and run.multirun:
        log.error("run failed, the sweep goes on: %s (record: %s)", summary["error"], run.directory)
    return summary


def run_alone(run: OpenRun) -> None:
    cfg = run.cfg
    logger = None
    progress = show_progress(cfg.progress, run.multirun)
    checkpoints = Checkpoints(run.directory, cfg.checkpoint.every_minutes)
    try:
        with StopRequest() as stop:
            device, task, model, optimizer, schedule, logger = prepare(cfg, run.config, run.record, run.directory)
            with logging_redirect_tqdm(loggers=[logging.getLogger()] if progress else []):
                outcome = train(cfg, task, model, optimizer, schedule, run.record, logger, progress, checkpoints,
                                stop)
        summary = run.record.finish(outcome.pop("status"), **outcome)
    except Interrupted as interruption:
        summary = run.record.finish("interrupted", interrupted_at_step=interruption.step, error=str(interruption))
        if logger is not None:
            logger.finish(summary)
        log.warning("interrupted by %s; checkpointed, run the same command again to continue (record: %s)",
                    interruption, run.directory)
        sys.exit(128 + interruption.signal_number)
    except BaseException as error:
        failed(run, error, logger)
        if isinstance(error, BeforeTraining) and not run.multirun:
            sys.exit(1)
        if isinstance(error, BeforeTraining) or run.multirun and isinstance(error, Exception):
            return
        raise
    if not cfg.checkpoint.keep:
        checkpoints.remove()
    logger.finish(summary)
    report(cfg.row, summary, run.directory)


def report(row: str, summary: dict, directory) -> None:
    final = ", ".join(f"{key} {summary[key]:.4g}" for key in ("test_error", "test_bpc") if key in summary)
    log.info("%s: %s, %s, %s (record: %s)", row, summary["status"], final, summary["optimizer_final"], directory)


@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="config")
def main(cfg: DictConfig) -> None:
    run = open_run(cfg)
    if run is not None:
        run_alone(run)


if __name__ == "__main__":
    # Run the importable module's main rather than this script's copy: a launcher that pickles the task to run it
    # elsewhere (SLURM through submitit) can then refer to it by name.
    from experiments.train import main as importable_main

    importable_main()
