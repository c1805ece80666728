"""The training loop: a group of runs, one run alone or many trained as one network, each writing its own record.

A lone run trains its model with any optimizer (a stack, a learning-rate-free one, the reference code) and may have
a schedule; a group of runs trains models.batch_models of each run's own model with one hyperopt stack of runs
(experiments/batched.py says which runs can share one). Everything else is one loop: the epochs and their batches
(each run its own order), the hyperparameter log, checkpoints (at each epoch's end, every checkpoint.every_minutes
and on SIGTERM/SIGINT, in the first run's folder), evaluation, and divergence, which a run reports as one event (the
step it diverged at and why) whether its stack raised, froze it, or its loss was not finite.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import hyperopt
from experiments.checkpoints import CheckpointNotSaved, Checkpoints, UnsafeCheckpoint
from experiments.config import register_configs, validate
from experiments.distributed import ReplicaRecord, World
from experiments.loggers import make_logger
from experiments.optimizers import Baseline, build_optimizer, set_mode, stack_levels
from experiments.provenance import machine
from experiments.runs import RunFailure, OpenRun, failed, open_run, report
from experiments.schedules import Schedule
from experiments.tasks import make_task
from models import batch_models, build_model

log = logging.getLogger("train")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
register_configs()


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


class Alone:
    """One run: its model and any optimizer, with its schedule; trained by one process, or by several (`world`:
    each takes its share of every batch, and DistributedDataParallel averages the gradients)."""

    def __init__(self, run: OpenRun, task, device: torch.device, world: World | None = None):
        cfg = run.cfg
        self.task, self.world = task, world
        self.model = seeded_model(cfg, run.config, task, device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.trained = self.model if world is None else world.wrap(self.model, device)
        if cfg.backend == "reference":
            from experiments.reference import ReferenceBackend
            if cfg.schedule is not None:
                raise ValueError("backend=reference runs the reference code's stacks, which take no schedule")
            if world is not None:
                raise ValueError(f"backend=reference trains one process: drop distributed={world.setting}")
            self.optimizer = ReferenceBackend(run.config["optimizer"], self.model)
            return
        self.optimizer = build_optimizer(run.config["optimizer"], self.model.parameters(), compile=cfg.compile)
        if world is not None and world.setting == "fsdp" and isinstance(self.optimizer, Baseline):
            raise ValueError(f"distributed=fsdp takes a hyperopt stack, not {run.config['optimizer']}: use "
                             "distributed=ddp")
        # the weights' step sizes, which a schedule sets
        self.param_groups = (self.optimizer.optimizer if isinstance(self.optimizer, Baseline)
                             else self.optimizer).param_groups

    def step(self, batches: list) -> torch.Tensor:
        batch = batches[0] if self.world is None else self.world.share(batches[0])
        return self.task.step(self.trained, self.optimizer, batch).reshape(1)

    def evaluate(self, train_losses: list[float]) -> list[dict]:
        set_mode(self.optimizer, "eval")
        evaluation = self.task.evaluate(self.model, train_losses[0])
        set_mode(self.optimizer, "train")
        return [evaluation]

    def hyperparameters(self, run: int) -> list[dict]:
        return self.optimizer.hyperparameters()

    def describe(self, run: int) -> str:
        return str(self.optimizer)

    def frozen(self) -> dict[int, dict]:
        return {}  # a lone stack raises DivergenceError instead

    def out_of_range(self, run: int) -> list[dict]:
        return self.optimizer.out_of_range() if isinstance(self.optimizer, hyperopt.Hyperoptimizer) else []

    def model_of(self, run: int) -> torch.nn.Module:
        set_mode(self.optimizer, "eval")
        return self.model

    def state_dict(self) -> dict:
        if self.world is not None:
            return self.world.full_state(self.model, self.optimizer)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.world is not None:
            return self.world.load_full_state(self.model, self.optimizer, state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class Together:
    """Runs trained as one network (models.batch_models of each run's own model) by one hyperopt stack of runs."""

    def __init__(self, runs: list[OpenRun], task, device: torch.device):
        self.task = task
        self.model = batch_models([seeded_model(run.cfg, run.config, task, device) for run in runs]).to(device)
        self.optimizer = hyperopt.stack([stack_levels(run.config["optimizer"]) for run in runs],
                                        self.model.parameters(), compile=runs[0].cfg.compile)
        self.param_groups = self.optimizer.param_groups

    def step(self, batches: list) -> torch.Tensor:
        x = torch.stack([batch[0] for batch in batches])
        y = torch.stack([batch[1] for batch in batches])
        return self.task.step_runs(self.model, self.optimizer, x, y)

    def evaluate(self, train_losses: list[float]) -> list[dict]:
        return self.task.evaluate_runs(self.model, train_losses)

    def hyperparameters(self, run: int) -> list[dict]:
        return self.optimizer.hyperparameters(run=run)

    def describe(self, run: int) -> str:
        return hyperopt.format_stack(self.optimizer, run=run)

    def frozen(self) -> dict[int, dict]:
        events = {}
        for event in self.optimizer.diverged():
            error = hyperopt.DivergenceError(event["level"], event["optimizer"], event["hyperparameter"],
                                             event["step"], float("nan"))
            events[event["run"]] = {"step": event["step"], "error": str(error)}
        return events

    def out_of_range(self, run: int) -> list[dict]:
        return [event for event in self.optimizer.out_of_range() if event["run"] == run]

    def model_of(self, run: int) -> torch.nn.Module:
        return self.model.run_model(run).eval()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: the runs were checkpointed at a step boundary and stop (a sweep stops with
    them)."""

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


def _run_log(directory: str) -> logging.Logger:
    """A run's own train.log, for a run trained with others (a lone run's is its Hydra job's log)."""
    logger = logging.getLogger(f"train.run.{directory}")
    logger.propagate = False
    if not logger.handlers:
        handler = logging.FileHandler(Path(directory) / "train.log")
        handler.setFormatter(logging.Formatter("[%(asctime)s][train][%(levelname)s] - %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def train_group(runs: list[OpenRun], as_one_network: bool = False, world: World | None = None) -> None:
    """Train these runs, one alone (its own model and optimizer; by several processes, `world`) or any number as
    one network, and write each one's record (under several processes, rank 0 alone writes)."""
    ready = []
    for run in runs:
        try:
            validate(run.config)
            ready.append(run)
        except ValueError as error:
            failed(run, RunFailure(str(error)))
            if not as_one_network and not run.multirun:
                sys.exit(1)
    if not ready:
        return
    alone = not as_one_network
    loggers = []
    warnings.simplefilter("ignore", hyperopt.OutOfRangeWarning)  # each run's log and summary say it instead
    try:
        with StopRequest() as stop:
            try:
                device = resolve_device(ready[0].cfg.device)
                device = device if world is None else world.device(device)
                writes = world is None or world.writes
                for run in ready:
                    run.record.amend(machine=machine(device),
                                     **({} if world is None else {"distributed": world.describe(device)}))
                    loggers.append(make_logger(run.cfg.logger if writes else "local", run.config["wandb"],
                                               run.config, run.directory, name=f"{run.cfg.row} seed={run.cfg.seed}",
                                               group=f"{run.cfg.experiment}/{run.cfg.row}", record=run.record))
                task = make_task(ready[0].cfg, device)
                if world is not None:
                    world.check_shares(task.batch_rows())
                trainee = Alone(ready[0], task, device, world) if alone else Together(ready, task, device)
            except Exception as error:
                plain = isinstance(error, (ValueError, FileNotFoundError, ImportError))  # messages for users
                raise RunFailure(str(error) if plain else f"{type(error).__name__}: {error}") from error
            progress = show_progress(ready[0].cfg.progress, ready[0].multirun or not alone)
            with logging_redirect_tqdm(loggers=[logging.getLogger()] if progress else []):
                summaries = train(ready, task, trainee, loggers, progress, stop, own_logs=as_one_network,
                                  world=world)
    except Interrupted as interruption:
        for run, logger in itertools.zip_longest(ready, loggers):
            if run.record.summary.get("status") in (None, "running"):
                summary = run.record.finish("interrupted", interrupted_at_step=interruption.step,
                                            error=str(interruption))
                if logger is not None:
                    logger.finish(summary)
        log.warning("interrupted by %s; checkpointed, run the same command again to continue (record: %s)",
                    interruption, ready[0].directory)
        sys.exit(128 + interruption.signal_number)
    except BaseException as error:
        if isinstance(error, CheckpointNotSaved):  # a full disk: said in one line
            error = RunFailure(str(error))
        for run, logger in itertools.zip_longest(ready, loggers):  # a failure of the group is each unfinished run's
            if run.record.summary.get("status") in (None, "running"):
                failed(run, error, logger)
        multirun = ready[0].multirun or not alone
        if isinstance(error, RunFailure) and not multirun:
            sys.exit(1)
        if isinstance(error, RunFailure) or multirun and isinstance(error, Exception):
            return
        raise
    for run, logger, summary in zip(ready, loggers, summaries):
        logger.finish(summary)
        if world is None or world.writes:
            report(run.cfg.row, summary, run.directory)


@dataclass
class Position:
    """Where a group of runs stands: what its checkpoint holds besides the trainee, and what a resumed run continues
    from."""

    epoch_starts: list  # each run's shuffling generator's state before this epoch drew its order
    epoch: int = 1
    done: int = 0  # batches taken in this epoch
    step: int = 0
    losses: list = field(default_factory=list)  # this epoch's, one (runs,) tensor a step
    epoch_seconds: list = field(default_factory=list)
    outcomes: dict = field(default_factory=dict)  # {run: how it diverged}, for each run that has
    seconds_before: float = 0.0  # this epoch's seconds before the checkpoint it resumed from
    task_state: dict | None = None  # the task's state at that checkpoint (the LSTM state carried over)

    @property
    def first_step(self) -> int:
        """The epoch's first step."""
        return self.step - self.done + 1

    def next_epoch(self, shuffles: list[torch.Generator]) -> None:
        self.epoch, self.done, self.losses, self.seconds_before = self.epoch + 1, 0, [], 0.0
        self.epoch_starts = [shuffle.get_state() for shuffle in shuffles]


class Judged(NamedTuple):
    """An epoch's outcome for each run."""

    train_losses: list[float]  # the mean over the steps it took
    steps: list[int]  # its step count at the epoch's end
    newly: dict[int, dict]  # {run: its divergence} for the runs that diverged in this epoch


class Loop:
    """The epochs of a group of runs (trainee: Alone or Together), as the phases `train` takes in turn. `own_logs`:
    each run's lines go to its own train.log (a lone run's go to its Hydra job's). Under several processes
    (`world`) each step's loss and whether to stop are decided together, and rank 0 alone reads and writes
    checkpoints."""

    def __init__(self, runs: list[OpenRun], task, trainee, loggers: list, stop: StopRequest, own_logs: bool,
                 world: World | None):
        self.runs, self.task, self.trainee, self.loggers, self.stop = runs, task, trainee, loggers, stop
        self.cfg, self.own_logs, self.world, self.writes = runs[0].cfg, own_logs, world, world is None or world.writes
        self.members = [run.directory for run in runs]
        self.run_logs = [_run_log(directory) for directory in self.members] if own_logs else [log]
        self.shuffles = [torch.Generator().manual_seed(run.cfg.seed) for run in runs]
        self.checkpoints = Checkpoints(runs[0].directory, self.cfg.checkpoint.every_minutes)
        self.schedule = None if self.cfg.schedule is None else Schedule(
            runs[0].config["schedule"], task.steps_per_epoch, self.cfg.epochs, trainee.param_groups)
        self.every = log_every(self.cfg.log_every_steps, task.steps_per_epoch * self.cfg.epochs)
        self.last = {i: run.record.last_metrics() for i, run in enumerate(runs)}  # a run stopped after its last epoch

    def resume(self) -> Position:
        """The position to start from: the checkpoint's, where a run is resumed and has one, else the first step."""
        position = Position([shuffle.get_state() for shuffle in self.shuffles])
        resuming = any(run.record.attempt > 1 for run in self.runs)
        try:
            saved = self.checkpoints.load() if resuming and self.writes else None
        except UnsafeCheckpoint as error:
            raise RunFailure(str(error)) from None
        if self.world is not None:
            saved = self.world.from_writer(saved)
        if saved is not None and saved.get("members") != self.members:
            log.warning("the checkpoint in %s is of other runs: these start from their first step", self.members[0])
            saved = None
        if saved is not None:
            self.trainee.load_state_dict(saved["trainee"])
            torch.set_rng_state(saved["torch_rng"])
            if saved["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved["cuda_rng"])
            device = next(self.trainee.model.parameters()).device
            position = Position(saved["epoch_starts"], saved["epoch"], saved["batches_done"], saved["step"],
                                list(saved["losses"].to(device)), saved["epoch_seconds"], saved["outcomes"],
                                saved["seconds_in_epoch"], saved["task"])
            log.info("resumed from the checkpoint at epoch %d, step %d (attempt %d)", position.epoch, position.step,
                     self.runs[0].record.attempt)
        elif resuming:
            log.warning("no usable checkpoint in %s: the run starts again from its first step", self.members[0])
        for i, run in enumerate(self.runs):
            run.record.forget_from(position.epoch, position.step)
            run.record.summary.setdefault("optimizer_initial", self.trainee.describe(i))
        log.info("%s on %s: %s, %s",
                 f"{len(self.runs)} runs as one network" if self.own_logs else self.trainee.describe(0),
                 next(self.trainee.model.parameters()).device, self.task.description, self.cfg.experiment)
        return position

    def save(self, position: Position, seconds_in_epoch: float) -> None:
        """A checkpoint: the position, the trainee, every random generator (by every process: fsdp gathers its
        shards; rank 0 writes)."""
        state = {"members": self.members, "epoch": position.epoch, "batches_done": position.done,
                 "step": position.step, "epoch_starts": position.epoch_starts,
                 "losses": torch.stack(position.losses).cpu() if position.losses else torch.zeros(0),
                 "epoch_seconds": position.epoch_seconds, "seconds_in_epoch": seconds_in_epoch,
                 "outcomes": position.outcomes, "trainee": self.trainee.state_dict(),
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                 "task": self.task.state_dict()}
        if self.writes:
            self.checkpoints.save(state)

    def batches(self, position: Position):
        """The epoch's batches, each run its own order; resumed within an epoch, its order is drawn again and the
        batches already taken are passed over."""
        streams = []
        for shuffle, epoch_start in zip(self.shuffles, position.epoch_starts):
            shuffle.set_state(epoch_start)
            streams.append(self.task.batches(shuffle))
        batches = zip(*streams)
        if position.done:
            batches = itertools.islice(batches, position.done, None)
            self.task.load_state_dict(position.task_state)
        return batches

    def take_steps(self, position: Position, start: float, progress: bool) -> dict[int, dict]:
        """The epoch's steps, with the schedule, the hyperparameter log and the checkpoints within it; a lone
        stack's divergence ({0: its step and error}: nothing changed in that step), else {}."""
        try:
            for batch in tqdm(self.batches(position), total=self.task.steps_per_epoch, initial=position.done,
                              leave=False, unit="step", disable=not progress):
                if self.schedule is not None:
                    self.schedule.apply(position.step + 1)
                loss = self.trainee.step(list(batch))
                stopping, due = self.stop.signal_number is not None, self.checkpoints.due()
                if self.world is not None:
                    loss, stopping, due = self.world.together(loss, stopping, due)
                position.losses.append(loss)
                position.step, position.done = position.step + 1, position.done + 1
                if position.step % self.every == 0:
                    for i, run in enumerate(self.runs):
                        if i not in position.outcomes:
                            self.loggers[i].log_trajectory(
                                run.record.log_hyperparameters(position.step, self.trainee.hyperparameters(i)))
                if stopping or due:
                    self.save(position, time.perf_counter() - start)
                    if stopping:
                        raise Interrupted(self.stop.signal_number or signal.SIGTERM, position.step)
        except hyperopt.DivergenceError as error:
            return {0: {"step": error.step, "error": str(error)}}
        return {}

    def judge(self, position: Position, raised: dict[int, dict]) -> Judged:
        """Each run's mean training loss over the epoch's steps it took, its step count, and the runs that diverged
        in this epoch (its stack raised or froze it, or its loss was not finite): one event each."""
        count = len(self.runs)
        stacked = torch.stack(position.losses).cpu() if position.losses else torch.zeros(0, count)  # (steps, runs)
        diverged = {**self.trainee.frozen(), **raised}
        train_losses, steps, newly = [], [], {}
        for i in range(count):
            # a run that diverged at step s (in this epoch: an earlier one is an outcome already) stopped before
            # it, with s - 1 steps behind it
            event = None if i in position.outcomes else diverged.get(i)
            taken = len(stacked) if event is None else event["step"] - position.first_step
            run_losses = stacked[:taken, i]
            finite = torch.isfinite(run_losses)
            if event is None and not bool(finite.all()):
                at = position.first_step + int((~finite).nonzero()[0])
                event = {"step": at, "error": f"the training loss became NaN or infinite at step {at}"}
            if event is not None and i not in position.outcomes:
                newly[i] = {"status": "diverged", "diverged_at_step": event["step"], "error": event["error"]}
            train_losses.append(float(run_losses.mean()) if taken else float("nan"))
            steps.append(position.first_step - 1 + taken)
        return Judged(train_losses, steps, newly)

    def record_epoch(self, position: Position, judged: Judged, evaluations: list[dict], train_seconds: float) -> None:
        """Each run still training: its epoch's metrics into its record and logger, and its log's line; the first
        learned value out of range and a divergence, said once."""
        train_losses, steps, newly = judged
        for i, run in enumerate(self.runs):
            if i in position.outcomes:
                continue
            metrics = {"epoch": position.epoch, "step": steps[i], "train_loss": train_losses[i],
                       **evaluations[i], "hyperparameters": self.trainee.hyperparameters(i),
                       "epoch_seconds": position.epoch_seconds[-1], "train_seconds": train_seconds}
            line = run.record.log_epoch(metrics)
            run.record.progress(last_epoch=position.epoch, steps=steps[i])
            self.loggers[i].log(metrics, line)
            together = f" ({len(self.runs)} runs as one)" if self.own_logs else ""
            self.run_logs[i].info("epoch %d: train loss %.4f, %s, %.2f s%s", position.epoch, train_losses[i],
                                  self.task.describe(metrics), position.epoch_seconds[-1], together)
            self.last[i] = metrics
            left = self.trainee.out_of_range(i)
            if left and "out_of_range" not in run.record.summary:  # said once per run, and kept in its summary
                event = {k: v for k, v in left[0].items() if k != "run"}
                run.record.progress(out_of_range=event)
                self.run_logs[i].warning("level %d (%s): the learned %r left its range after step %d (it was %g)",
                                         event["level"], event["optimizer"], event["hyperparameter"], event["step"],
                                         event["value"])
            if i in newly:
                self.run_logs[i].warning("diverged: %s", newly[i]["error"])
        position.outcomes.update(newly)

    def finish(self, position: Position) -> list[dict]:
        """Each run's summary (its final evaluation, what the task adds, its outcome); the checkpoint removed
        unless kept."""
        summaries = []
        for i, run in enumerate(self.runs):
            metrics = self.last[i]
            finished = self.task.finish(self.trainee.model_of(i), Path(run.directory) if self.writes else None,
                                        run.cfg.seed)
            outcome = dict(position.outcomes.get(i, {"status": "ok"}))
            batched = {"batched": {"runs": len(self.runs), "members": self.members}} if self.own_logs else {}
            summaries.append(run.record.finish(
                outcome.pop("status"), **outcome, data=self.task.description, train_examples=self.task.train_examples,
                epochs_completed=metrics["epoch"], steps=metrics["step"],
                **{k: v for k, v in metrics.items() if k not in ("epoch", "step", "epoch_seconds", "train_seconds")},
                **finished, optimizer_initial=run.record.summary["optimizer_initial"],
                optimizer_final=self.trainee.describe(i),
                seconds_per_epoch=statistics.median(position.epoch_seconds) if position.epoch_seconds
                else float("nan"), **batched))
        if not self.cfg.checkpoint.keep and self.writes:
            self.checkpoints.remove()
        return summaries


def train(runs: list[OpenRun], task, trainee, loggers: list, progress: bool, stop: StopRequest,
          own_logs: bool, world: World | None = None) -> list[dict]:
    """Train a group of runs (trainee: Alone or Together) epoch by epoch, and return each run's summary."""
    loop = Loop(runs, task, trainee, loggers, stop, own_logs, world)
    position = loop.resume()
    epochs = tqdm(range(position.epoch, runs[0].cfg.epochs + 1), desc=str(runs[0].cfg.row), unit="epoch",
                  disable=not progress)
    for epoch in epochs:
        position.epoch = epoch
        start = time.perf_counter() - position.seconds_before
        raised = loop.take_steps(position, start, progress)
        judged = loop.judge(position, raised)
        train_seconds = time.perf_counter() - start  # the steps alone, for per-step times
        evaluations = trainee.evaluate(judged.train_losses)
        position.epoch_seconds.append(time.perf_counter() - start)
        loop.record_epoch(position, judged, evaluations, train_seconds)
        if not own_logs:
            epochs.set_postfix(loss=f"{judged.train_losses[0]:.4f}", evaluation=task.describe(loop.last[0]))
        else:
            log.info("epoch %d: %d runs as one, %.2f s%s", position.epoch, len(runs), position.epoch_seconds[-1],
                     f", {len(position.outcomes)} diverged" if position.outcomes else "")
        if len(position.outcomes) == len(runs):
            break
        position.next_epoch(loop.shuffles)
        loop.save(position, 0.0)
    return loop.finish(position)


@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="config")
def main(cfg: DictConfig) -> None:
    """The Hydra task: one run, trained alone (experiments/train.py; hydra/launcher=batched groups runs itself), by
    one process or by the processes torchrun started (distributed=ddp; experiments/distributed.py)."""
    try:
        world = World.from_environment(cfg.get("distributed"))
    except ValueError as error:
        log.error("%s", error)
        sys.exit(1)
    if world is None:
        run = open_run(cfg)
        if run is not None:
            train_group([run])
        return
    train_on_several_processes(cfg, world)


def train_on_several_processes(cfg: DictConfig, world: World) -> None:
    """Rank 0 opens the run's record and the others take its values; all train it; rank 0 alone writes."""
    own_folder = HydraConfig.get().runtime.output_dir
    if not world.writes:  # its lines would go into the writer's train.log too, where hydra.run.dir is given
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
    opened = None
    world.start(world.device(resolve_device(cfg.device)))
    try:
        run = open_run(cfg) if world.writes else None
        opened = world.from_writer(None if run is None else
                                   (run.directory, run.record.attempt, run.record.summary, run.record.last_metrics()))
        if opened is None:
            return
        if not world.writes:
            directory, attempt, summary, last = opened
            run = OpenRun(cfg, OmegaConf.to_container(cfg, resolve=True), ReplicaRecord(attempt, summary, last),
                          directory, multirun=False)
        train_group([run], world=world)
    finally:
        world.stop()
        world.tidy(own_folder, None if opened is None else opened[0])
