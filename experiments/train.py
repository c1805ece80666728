"""Train one run and write its record.

    python experiments/train.py +exp=mnist_sgd                       # one row of Table 1
    python experiments/train.py +exp=mnist_adam_sgd seed=1 epochs=1  # any value can be overridden
    python experiments/train.py optimizer="Adam^α/SGD(1e-5)"         # any stack, in the paper's notation
    python experiments/train.py -m +exp=mnist_sgd seed=0,1,2         # a sweep (Hydra multirun)

The record (run.json, metrics.jsonl, summary.json; see experiments/records.py) goes into Hydra's run folder,
hydra.run.dir=PATH to choose it. A run that diverges is recorded as such and a sweep goes on; a run that fails is
recorded with its error, and a sweep goes on too.
"""

from __future__ import annotations

import logging
import os
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hyperopt  # noqa: E402
from experiments.loggers import make_logger  # noqa: E402
from experiments.optimizers import (build_optimizer, build_schedule, cifar_optimizer, rnn_optimizer,  # noqa: E402
                                   sensitivity_optimizer, set_mode)
from experiments.provenance import provenance  # noqa: E402
from experiments.records import RunRecord  # noqa: E402
from experiments.tasks import make_task  # noqa: E402
from models import build_model  # noqa: E402

log = logging.getLogger("train")
OmegaConf.register_new_resolver("sensitivity_optimizer", sensitivity_optimizer, replace=True)
OmegaConf.register_new_resolver("rnn_optimizer", rnn_optimizer, replace=True)
OmegaConf.register_new_resolver("cifar_optimizer", cifar_optimizer, replace=True)


class TrainingDiverged(FloatingPointError):
    def __init__(self, step: int):
        self.step = step
        super().__init__(f"the training loss became NaN or infinite at step {step}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but this machine has no CUDA device; use device=cpu or device=auto")
    return device


def show_progress(setting, multirun: bool) -> bool:
    if setting == "auto":
        return sys.stderr.isatty() and not multirun and not os.environ.get("CI")
    return bool(setting)


def train(cfg: DictConfig, device: torch.device, record: RunRecord, logger, progress: bool) -> dict:
    torch.manual_seed(cfg.seed)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    task = make_task(cfg, device)
    model_options = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "name"}
    model = build_model(cfg.model.name, **task.model_options, **model_options).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), compile=cfg.compile)
    schedule = build_schedule(cfg.schedule, optimizer, cfg.epochs)
    log.info("%s on %s: %s, %s", cfg.optimizer, device, task.description, cfg.experiment)

    step, epoch_seconds, outcome = 0, [], {}
    epochs = tqdm(range(1, cfg.epochs + 1), desc=str(cfg.row), unit="epoch", disable=not progress)
    for epoch in epochs:
        start = time.perf_counter()
        losses = []
        try:
            for batch in tqdm(task.batches(shuffle), total=task.steps_per_epoch, leave=False, unit="step",
                              disable=not progress):
                losses.append(task.step(model, optimizer, batch))
                step += 1
        except hyperopt.DivergenceError as error:
            outcome = {"status": "diverged", "diverged_at_step": error.step, "error": str(error)}
        losses = torch.stack(losses) if losses else torch.zeros(0)
        finite = torch.isfinite(losses)
        if not outcome and not bool(finite.all()):
            first = int((~finite).nonzero()[0])
            outcome = {"status": "diverged", "diverged_at_step": step - len(losses) + first + 1,
                       "error": str(TrainingDiverged(step - len(losses) + first + 1))}
        train_loss = float(losses.mean()) if len(losses) else float("nan")
        set_mode(optimizer, "eval")
        evaluation = task.evaluate(model, train_loss)
        set_mode(optimizer, "train")
        epoch_seconds.append(time.perf_counter() - start)
        metrics = {"epoch": epoch, "step": step, "train_loss": train_loss, **evaluation,
                   "hyperparameters": optimizer.hyperparameters(), "epoch_seconds": epoch_seconds[-1]}
        record.log_epoch(metrics)
        logger.log(metrics, step=epoch)
        epochs.set_postfix(loss=f"{train_loss:.4f}", evaluation=task.describe(metrics))
        if not progress:
            log.info("epoch %d: train loss %.4f, %s, %.2f s", epoch, train_loss, task.describe(metrics),
                     epoch_seconds[-1])
        if outcome:
            log.warning("diverged: %s", outcome["error"])
            break
        if schedule is not None:
            schedule.step()
    set_mode(optimizer, "eval")
    finished = task.finish(model, record.directory, cfg.seed)
    return {"status": outcome.get("status", "ok"), **outcome, "data": task.description,
            "epochs_completed": epoch, "steps": step,
            **{k: v for k, v in metrics.items() if k not in ("epoch", "step", "epoch_seconds")}, **finished,
            "optimizer_final": str(optimizer), "seconds_per_epoch": statistics.median(epoch_seconds)}


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    runtime = HydraConfig.get()
    multirun = runtime.mode == RunMode.MULTIRUN
    config = OmegaConf.to_container(cfg, resolve=True)
    device = resolve_device(cfg.device)
    record = RunRecord(runtime.runtime.output_dir, config, provenance(device))
    logger = make_logger(cfg.logger, config["wandb"], config, runtime.runtime.output_dir,
                         name=f"{cfg.optimizer} seed={cfg.seed}", group=f"{cfg.experiment}/{cfg.row}")
    try:
        outcome = train(cfg, device, record, logger, show_progress(cfg.progress, multirun))
        summary = record.finish(outcome.pop("status"), **outcome)
    except BaseException as error:
        summary = record.finish("failed", error=f"{type(error).__name__}: {error}",
                                traceback=traceback.format_exc())
        logger.finish(summary)
        if multirun and isinstance(error, Exception):
            log.error("run failed, the sweep goes on: %s (record: %s)", summary["error"], record.directory)
            return
        raise
    logger.finish(summary)
    final = ", ".join(f"{key} {summary[key]:.4g}" for key in ("test_error", "test_bpc") if key in summary)
    log.info("%s: %s, %s, %s (record: %s)", cfg.optimizer, summary["status"], final, summary["optimizer_final"],
             record.directory)


if __name__ == "__main__":
    main()
