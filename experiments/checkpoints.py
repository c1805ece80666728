"""A run's checkpoint: everything needed to continue it exactly, saved atomically in the run's folder.

checkpoint.pt is the latest and checkpoint.prev.pt the one before it. Each is written to a temporary file and then
renamed, so a run killed while saving leaves the previous files whole; a file damaged some other way (cut short by
a full disk, say) is detected when loading and the one before it is used instead.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
LATEST, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"


class Checkpoints:
    def __init__(self, directory: str | os.PathLike, every_minutes: float | None = None):
        self.directory = Path(directory)
        self.every_seconds = None if every_minutes is None else 60.0 * every_minutes
        self.last_saved = time.monotonic()

    def due(self) -> bool:
        """Whether a checkpoint within the epoch is due (every `every_minutes`)."""
        return self.every_seconds is not None and time.monotonic() - self.last_saved >= self.every_seconds

    def save(self, state: dict) -> None:
        latest = self.directory / LATEST
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".checkpoint.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(state, file)
                file.flush()
                os.fsync(file.fileno())
            if latest.exists():
                os.replace(latest, self.directory / PREVIOUS)
            os.replace(temporary, latest)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.last_saved = time.monotonic()

    def load(self) -> dict | None:
        """The latest whole checkpoint, or None when there is none (a damaged one is reported and passed over)."""
        for name in (LATEST, PREVIOUS):
            path = self.directory / name
            if not path.exists():
                continue
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception as error:  # any unreadable file is passed over, and said so
                log.warning("checkpoint %s is damaged (%s: %s); trying an older one", path, type(error).__name__,
                            error)
        return None

    def remove(self) -> None:
        for name in (LATEST, PREVIOUS):
            (self.directory / name).unlink(missing_ok=True)
