"""A multirun run again into the same sweep folder skips the runs that finished, resumes the interrupted ones and
retries the failed ones; each job notes which it did in the folder's sweep_actions.jsonl. At the end the sweep
says, in one line, how many of each and how its runs ended, names the failed ones, and exits non-zero when any
failed. It reads files in the sweep folder, so it holds for any launcher whose jobs write there."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from experiments.records import SUMMARY

log = logging.getLogger("sweep")
ACTIONS = "sweep_actions.jsonl"
STATUSES = ("ok", "diverged", "failed", "interrupted")
KINDS = ("new", "skipped", "resumed", "retried", "refused")


def note_action(runtime, directory: str, action: str) -> None:
    """Say in the sweep folder what this job did with its run: new, skipped (finished before), resumed,
    retried (failed before) or refused (its folder holds another run's record). Lines appended whole, so that
    jobs running at once do not mix them."""
    if runtime.mode != RunMode.MULTIRUN:
        return
    line = json.dumps({"time": time.time(), "directory": str(directory), "action": action}) + "\n"
    descriptor = os.open(Path(runtime.sweep.dir) / ACTIONS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


def tally(actions: list[dict]) -> tuple[str, list[tuple[str, str]]]:
    """(the line, the failed runs as (folder, error)), from this sweep's actions and its runs' summaries."""
    kinds = Counter(action["action"] for action in actions)
    statuses, failed = Counter(), []
    for action in actions:
        if action["action"] == "refused":
            statuses["failed"] += 1
            failed.append((action["directory"], "its folder holds the record of another run"))
            continue
        path = Path(action["directory"]) / SUMMARY
        summary = json.loads(path.read_text()) if path.exists() else {"status": "no record"}
        statuses[summary.get("status")] += 1
        if summary.get("status") == "failed":
            failed.append((action["directory"], summary.get("error", "no error recorded")))
    line = (f"{len(actions)} runs: " + ", ".join(f"{kinds[kind]} {kind}" for kind in KINDS if kinds[kind] or
                                                  kind in ("new", "skipped")) + "; "
            + ", ".join(f"{statuses.pop(status, 0)} {status}" for status in STATUSES[:3])
            + "".join(f", {count} {status}" for status, count in sorted(statuses.items(), key=str)))
    return line, failed


class Tally(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        folder = Path(config.hydra.sweep.dir)
        lines = (folder / ACTIONS).read_text().splitlines() if (folder / ACTIONS).exists() else []
        latest = {}  # each run's last action in this sweep
        for action in map(json.loads, lines):
            if action["time"] >= getattr(self, "started", 0.0):
                latest[action["directory"]] = action
        line, failed = tally(list(latest.values()))
        log.info("sweep done, %s (records under %s)", line, folder)
        for directory, error in failed:
            log.error("failed: %s: %s", directory, error)
        if failed:
            sys.exit(1)
