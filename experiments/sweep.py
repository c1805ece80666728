"""The end of a multirun: one line tallying its runs by status, the failed ones named, and a non-zero exit when any
failed. It reads the run records, so it holds for any launcher whose jobs write to the sweep folder."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments.records import read_records

log = logging.getLogger("sweep")
STATUSES = ("ok", "diverged", "failed", "running")


def tally(records: list[dict]) -> str:
    """e.g. "3 runs: 2 ok, 0 diverged, 1 failed"."""
    counts = Counter(record["summary"].get("status") for record in records)
    parts = [f"{counts.pop(status, 0)} {status}" for status in STATUSES[:3]]
    parts += [f"{count} {status}" for status, count in sorted(counts.items(), key=lambda item: str(item[0]))]
    return f"{len(records)} runs: " + ", ".join(parts)


class Tally(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        folder = config.hydra.sweep.dir
        started = getattr(self, "started", 0.0)
        records = [record for record in read_records(folder)
                   if record["summary"].get("started", 0.0) >= started]
        log.info("sweep done, %s (records under %s)", tally(records), folder)
        failed = [record for record in records if record["summary"].get("status") == "failed"]
        for record in failed:
            log.error("failed: %s: %s", record["directory"], record["summary"].get("error", "no error recorded"))
        if failed:
            sys.exit(1)
