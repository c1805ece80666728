"""A run's checkpoint: everything needed to continue it exactly, saved atomically in the run's folder.

checkpoint.pt is the latest and checkpoint.prev.pt the one before it. Each is written to a temporary file and then
renamed, and the latest becomes the previous one through a hard link, so a run killed at any moment while saving
leaves checkpoint.pt whole (the old one or the new one) and checkpoint.prev.pt whole; a file damaged some other way
(cut short by a full disk, say) is detected when loading and the one before it is used instead. Nothing a
checkpoint holds is executed: it is loaded with `weights_only=True` (tensors and plain values), and one holding
anything else (a pickle that could run code, planted in a shared folder say) is refused.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
LATEST, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"


class CheckpointNotSaved(OSError):
    """A checkpoint that could not be written (a full disk); the message is one line."""


class UnsafeCheckpoint(ValueError):
    """A checkpoint that holds more than tensors and plain values: refused, not loaded."""


def keep_as_previous(latest: Path) -> None:
    """Make the latest checkpoint the previous one while it stays the latest too (a hard link renamed into place),
    so that a kill between this and the next rename still leaves a checkpoint.pt. Where the file system has no
    hard links, it is renamed: a kill in that instant leaves only checkpoint.prev.pt, which loading falls back to."""
    link = latest.with_name(f".{PREVIOUS}.{os.getpid()}.link")
    try:
        os.link(latest, link)
    except OSError:
        os.replace(latest, latest.with_name(PREVIOUS))
        return
    os.replace(link, latest.with_name(PREVIOUS))


class Checkpoints:
    def __init__(self, directory: str | os.PathLike, every_minutes: float | None = None):
        self.directory = Path(directory)
        self.every_seconds = None if every_minutes is None else 60.0 * every_minutes
        self.last_saved = time.monotonic()

    def due(self) -> bool:
        """Whether a checkpoint within the epoch is due (every `every_minutes`)."""
        return self.every_seconds is not None and time.monotonic() - self.last_saved >= self.every_seconds

    def save(self, state: dict) -> None:
        """Save atomically; CheckpointNotSaved (the previous checkpoints left whole) if the file cannot be written.
        The state is serialised in memory first, so that a full disk is the system's own error, not torch's."""
        latest = self.directory / LATEST
        buffer = io.BytesIO()
        torch.save(state, buffer)
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".checkpoint.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            if latest.exists():
                keep_as_previous(latest)
            os.replace(temporary, latest)
        except OSError as error:
            Path(temporary).unlink(missing_ok=True)
            raise CheckpointNotSaved(
                f"the checkpoint could not be written to {latest} ({error.strerror or error}, "
                f"{shutil.disk_usage(self.directory).free / 1e6:.1f} MB free there): the run stopped at its last "
                "saved checkpoint; make room and run the same command again to continue") from None
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
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # any unreadable file is passed over, and said so; an unsafe one refused
                if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
                    raise UnsafeCheckpoint(
                        f"{path} holds objects other than tensors and plain values, which loading would run (a "
                        "pickle of code); it was not loaded and the run not resumed: if it is not this project's, "
                        "remove it, and the same command trains the run from its first step") from None
                log.warning("checkpoint %s is damaged (%s: %s); trying an older one", path, type(error).__name__,
                            error)
        return None

    def remove(self) -> None:
        for name in (LATEST, PREVIOUS):
            (self.directory / name).unlink(missing_ok=True)
