"""A run's record opened and closed: what every run, alone or trained with others, does before its first step and
after its last (the record in its folder, a failure in one line, the closing report)."""

from __future__ import annotations

import logging
import sys
import traceback

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.provenance import provenance
from experiments.records import RecordExistsError, RunFinished, RunRecord
from experiments.sweep import note_action

log = logging.getLogger("train")


class RunFailure(RuntimeError):
    """A run that failed for a reason a user can act on, reported in one line rather than a traceback: bad input
    before its first step (a config value, a device, the data, the optimizer, a checkpoint that would run code),
    or a checkpoint it could not save (a full disk)."""


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
    summary = run.record.finish("failed", error=str(error) if isinstance(error, RunFailure)
                                else f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    if logger is not None:
        logger.finish(summary)
    if isinstance(error, RunFailure):
        log.error("run failed: %s (record: %s)", summary["error"], run.directory)
    elif isinstance(error, Exception) and run.multirun:
        log.error("run failed, the sweep goes on: %s (record: %s)", summary["error"], run.directory)
    return summary


def report(row: str, summary: dict, directory) -> None:
    final = ", ".join(f"{key} {summary[key]:.4g}" for key in ("test_error", "test_bpc") if key in summary)
    log.info("%s: %s, %s, %s (record: %s)", row, summary["status"], final, summary["optimizer_final"], directory)
