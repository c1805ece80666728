"""A run's record: one folder per run, written so that a dying run loses nothing it had finished.

    run.json        resolved config, git commit and dirty flag, library versions, machine (written at start;
                    a resumed run adds its own under later_attempts)
    metrics.jsonl   one JSON line per epoch, appended and flushed as each epoch ends
    summary.json    status (running, ok, diverged, failed, interrupted), the last epoch reached, final metrics,
                    learned hyperparameters, wall seconds, attempt (1, then 2, ... for each resumption)

JSON files are replaced atomically (write a temporary file, then rename), so a reader never sees half a file. A
folder has one writer at a time: the process that opened the record holds a lock on its `.lock` file until the run
ends, and the kernel lets go of it when that process dies, however it dies (a SIGKILL included).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

SUMMARY, RUN, METRICS, LOCK = "summary.json", "run.json", "metrics.jsonl", ".lock"
TRAJECTORY = "hyperparameters.jsonl"  # every level's hyperparameters every log_every_steps steps


class RecordExistsError(FileExistsError):
    pass


class RunHeld(RecordExistsError):
    """Another process is writing this run's folder."""


def hold(directory: Path):
    """The open lock file of a run folder, held by this process until it is closed; RunHeld if another holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    file = open(directory / LOCK, "a+")
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "another process"
        file.close()
        raise RunHeld(f"{directory} is being written by {holder}: one process writes a run folder at a time (wait "
                      "for it, or stop it; a run killed any way lets go of its folder)") from None
    file.seek(0)
    file.truncate()
    file.write(f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    file.flush()
    return file


class RunFinished(Exception):
    """The run's folder holds its finished record (ok or diverged): there is nothing left to do."""


OUTCOME = ("status", "error", "traceback", "interrupted_at_step", "attempt_started")
# Settings that change how a run is watched, not what it computes: a run may be resumed with others.
NOT_THE_RUN = ("progress", "logger", "wandb", "checkpoint")


def _the_run(config: dict) -> dict:
    return {key: value for key, value in config.items() if key not in NOT_THE_RUN}


def write_json_atomically(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(data, file, indent=2, default=_jsonable, ensure_ascii=False)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


class RunRecord:
    """The record of one run in its folder. A folder that already holds a record of the same config (the same
    command run again) continues it: a finished run raises RunFinished, an unfinished one (running when it was
    killed, interrupted, or failed) starts its next attempt, resumed from its checkpoint where it has one. A record
    of another config is never touched."""

    def __init__(self, directory: str | os.PathLike, config: dict, provenance: dict):
        self.directory = Path(directory)
        self._lock = hold(self.directory)  # before anything is read: the folder is this process's from here on
        try:
            earlier = self._earlier_attempt(config)
        except BaseException:
            self._lock.close()
            raise
        self.started = time.time()
        if earlier is None:
            self.attempt, self.earlier_status = 1, None
            self.summary = {"status": "running", "started": self.started, "attempt": 1,
                            "attempt_started": self.started}
            # the id of the run's W&B mirror, kept by every attempt (a random one: a W&B project holds many folders)
            self.run = {"config": config, **provenance, "wandb_id": uuid.uuid4().hex[:16]}
            (self.directory / METRICS).unlink(missing_ok=True)
            (self.directory / TRAJECTORY).unlink(missing_ok=True)
        else:
            summary, self.run = earlier
            self.run.setdefault("wandb_id", uuid.uuid4().hex[:16])
            self.attempt, self.earlier_status = summary.get("attempt", 1) + 1, summary["status"]
            ended = {key: summary.pop(key) for key in OUTCOME if key in summary}  # how the last attempt ended
            summary.setdefault("earlier_attempts", []).append(ended)
            self.summary = {**summary, "status": "running", "attempt": self.attempt,
                            "attempt_started": self.started}
            self.run.setdefault("later_attempts", []).append(provenance)
        self.earlier_seconds = self.summary.get("wall_seconds", 0.0) if earlier else 0.0
        self._trajectory = None  # hyperparameters.jsonl, open for appending while the run logs into it
        write_json_atomically(self.directory / RUN, self.run)
        write_json_atomically(self.directory / SUMMARY, self.summary)

    def _earlier_attempt(self, config: dict) -> tuple[dict, dict] | None:
        if not (self.directory / SUMMARY).exists():
            return None
        summary = json.loads((self.directory / SUMMARY).read_text())
        run = json.loads((self.directory / RUN).read_text()) if (self.directory / RUN).exists() else {}
        ours, theirs = _the_run(config), _the_run(run.get("config", {}))
        if ours != theirs:
            differ = sorted(key for key in set(ours) | set(theirs) if ours.get(key) != theirs.get(key))
            raise RecordExistsError(
                f"{self.directory} holds the record of another run (its config differs in {', '.join(differ)}); "
                "give this run its own folder: hydra.run.dir=PATH, or hydra.sweep.dir=PATH for a sweep")
        if summary.get("status") in ("ok", "diverged"):
            raise RunFinished(f"{self.directory} holds this run's finished record ({summary['status']}); nothing "
                              "to do")
        return summary, run

    def summary_json(self) -> str:
        return json.dumps(self.summary, default=_jsonable, ensure_ascii=False)

    def run_json(self) -> str:
        return json.dumps(self.run, default=_jsonable, ensure_ascii=False)

    def progress(self, **fields) -> None:
        """Say in summary.json how far the run has got (after each epoch), so that even a killed run tells."""
        self.summary.update(fields, wall_seconds=self.earlier_seconds + time.time() - self.started)
        write_json_atomically(self.directory / SUMMARY, self.summary)

    def forget_from(self, epoch: int, step: int) -> None:
        """Drop the metrics of `epoch` and later and the hyperparameters logged after `step`: a resumed run logs
        them again from its checkpoint."""
        self._close_trajectory()
        for name, keep in ((METRICS, lambda line: _field(line, "epoch") < epoch),
                           (TRAJECTORY, lambda line: _field(line, "step") <= step)):
            path = self.directory / name
            if path.exists():
                path.write_text("".join(line for line in path.read_text().splitlines(keepends=True) if keep(line)))

    def log_hyperparameters(self, step: int, hyperparameters: list[dict]) -> str:
        """Append a line to the trajectory; the line, for a mirror."""
        # A short run logs every step: the file stays open, and each line is handed to the system as it is written
        # (a killed process loses none of them; fsync is for the epoch's lines).
        if self._trajectory is None:
            self._trajectory = open(self.directory / TRAJECTORY, "a", buffering=1)
        line = json.dumps({"step": step, "hyperparameters": hyperparameters}, default=_jsonable)
        self._trajectory.write(line + "\n")
        return line

    def _close_trajectory(self) -> None:
        if self._trajectory is not None:
            self._trajectory.close()
            self._trajectory = None

    def amend(self, **fields) -> None:
        """Add what is known only once the attempt has started (the device it got) to run.json."""
        (self.run["later_attempts"][-1] if self.attempt > 1 else self.run).update(fields)
        write_json_atomically(self.directory / RUN, self.run)

    def log_epoch(self, metrics: dict) -> str:
        """Append the epoch's line to metrics.jsonl; the line, for a mirror."""
        line = json.dumps(metrics, default=_jsonable, ensure_ascii=False)
        with open(self.directory / METRICS, "a") as file:
            file.write(line + "\n")
            file.flush()
            os.fsync(file.fileno())
        return line

    def last_metrics(self) -> dict | None:
        path = self.directory / METRICS
        lines = path.read_text().splitlines() if path.exists() else []
        return json.loads(lines[-1]) if lines else None

    def finish(self, status: str, **fields) -> dict:
        self._close_trajectory()
        self.progress(**fields, status=status)
        if status != "interrupted":  # (an interrupted run's process saves its checkpoint first, then exits)
            self._lock.close()
        return self.summary


def _field(line: str, name: str) -> float:
    """A JSON line's number `name`; infinity for a line cut short by a run that died while writing it."""
    try:
        return json.loads(line)[name]
    except (json.JSONDecodeError, KeyError):
        return math.inf


class DamagedRecord(ValueError):
    """A record file that cannot be read as the harness writes it; the message names the file and what is wrong."""


def _json_lines(path: Path, finished: bool) -> list[dict]:
    """The JSON lines of a record file. A last line cut short is what a run that died while writing leaves, and
    is passed over, unless the run finished (then the file was damaged afterwards); any other bad line is damage."""
    lines = []
    if path.exists():
        text = path.read_text(errors="replace").splitlines()
        for number, line in enumerate(text, 1):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number == len(text) and not finished:
                    break
                raise DamagedRecord(f"{path}: line {number} of {len(text)} is not JSON ({error.msg}, column "
                                    f"{error.colno}): the file was cut or changed after the run wrote it") from None
    return lines


def _json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as error:
        raise DamagedRecord(f"{path} is not JSON ({error.msg} at line {error.lineno}, column {error.colno}): the "
                            "file was cut or changed after the run wrote it") from None
    if not isinstance(data, dict):
        raise DamagedRecord(f"{path} holds a {type(data).__name__}, not a record's object")
    return data


def read_records(*roots: str | os.PathLike, experiment: str | None = None, damaged: list | None = None) -> list[dict]:
    """Every run record under the given folders (of one experiment, if named): run.json, summary.json, the
    metrics and the hyperparameters' trajectory, one dict per run. A record that cannot be read raises
    DamagedRecord, or, given a list `damaged`, is left out and its DamagedRecord put there."""
    records = []
    for root in roots:
        for summary_path in sorted(Path(root).rglob(SUMMARY)):
            directory = summary_path.parent
            try:
                run = _json_file(directory / RUN) if (directory / RUN).exists() else {}
                if experiment is not None and run.get("config", {}).get("experiment") != experiment:
                    continue
                summary = _json_file(summary_path)
                finished = summary.get("status") in ("ok", "diverged")
                record = {"directory": str(directory), "summary": summary, "run": run,
                          "metrics": _json_lines(directory / METRICS, finished),
                          "trajectory": _json_lines(directory / TRAJECTORY, finished)}
            except DamagedRecord as error:
                if damaged is None:
                    raise
                damaged.append(error)
                continue
            records.append(record)
    return records


def copy_record(source: str | os.PathLike, target: str | os.PathLike, extra: tuple[str, ...] = (),
                trajectory: bool = True) -> Path:
    """Copy a record's own files (not Hydra's logs or W&B's; its hyperparameters' trajectory unless `trajectory`
    is false), and any `extra` ones, to `target`, e.g. to commit them with results. A record already there is
    kept: the copy goes to `target-2` (`-3`, ...) instead."""
    target = base = Path(target)
    copies = 1
    while (target / RUN).exists() and (target / RUN).read_bytes() != (Path(source) / RUN).read_bytes():
        copies += 1
        target = base.with_name(f"{base.name}-{copies}")
    target.mkdir(parents=True, exist_ok=True)
    for name in (RUN, SUMMARY, METRICS, *((TRAJECTORY,) if trajectory else ()), *extra):
        if (Path(source) / name).exists():
            shutil.copy2(Path(source) / name, target / name)
    return target


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(text))


def describe_commits(records: list[dict]) -> str:
    """Which commits the runs ran at, e.g. "commit 7f4e850e95 (1 of 96 runs with uncommitted changes)"."""
    states = [record["run"].get("git", {}) for record in records]
    commits = sorted({str(state.get("commit"))[:10] for state in states})
    dirty = sum(bool(state.get("dirty")) for state in states)
    text = ("commit " if len(commits) == 1 else "commits ") + ", ".join(commits)
    return text + (f" ({dirty} of {len(states)} runs with uncommitted changes)" if dirty else "")
