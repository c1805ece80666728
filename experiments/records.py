"""A run's record: one folder per run, written so that a dying run loses nothing it had finished.

    run.json        resolved config, git commit and dirty flag, library versions, machine (written at start)
    metrics.jsonl   one JSON line per epoch, appended and flushed as each epoch ends
    summary.json    status (running, ok, diverged, failed), final metrics, learned hyperparameters, wall seconds

JSON files are replaced atomically (write a temporary file, then rename), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

SUMMARY, RUN, METRICS = "summary.json", "run.json", "metrics.jsonl"


class RecordExistsError(FileExistsError):
    pass


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
    def __init__(self, directory: str | os.PathLike, config: dict, provenance: dict):
        self.directory = Path(directory)
        if (self.directory / SUMMARY).exists():
            raise RecordExistsError(
                f"{self.directory} already holds a run's record; give this run its own folder "
                "(hydra.run.dir=...) rather than overwrite another's")
        self.started = time.time()
        self.summary = {"status": "running", "started": self.started}
        self.run = {"config": config, **provenance}
        write_json_atomically(self.directory / RUN, self.run)
        write_json_atomically(self.directory / SUMMARY, self.summary)

    def amend(self, **fields) -> None:
        """Add what is known only once the run has started (the device it got) to run.json."""
        self.run.update(fields)
        write_json_atomically(self.directory / RUN, self.run)

    def log_epoch(self, metrics: dict) -> None:
        with open(self.directory / METRICS, "a") as file:
            file.write(json.dumps(metrics, default=_jsonable, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def finish(self, status: str, **fields) -> dict:
        self.summary.update(fields, status=status, wall_seconds=time.time() - self.started)
        write_json_atomically(self.directory / SUMMARY, self.summary)
        return self.summary


def read_records(*roots: str | os.PathLike, experiment: str | None = None) -> list[dict]:
    """Every run record under the given folders (of one experiment, if named): run.json, summary.json and the
    metrics, one dict per run."""
    records = []
    for root in roots:
        for summary_path in sorted(Path(root).rglob(SUMMARY)):
            directory = summary_path.parent
            run_path = directory / RUN
            run = json.loads(run_path.read_text()) if run_path.exists() else {}
            if experiment is not None and run.get("config", {}).get("experiment") != experiment:
                continue
            record = {"directory": str(directory), "summary": json.loads(summary_path.read_text()), "run": run}
            metrics_path = directory / METRICS
            record["metrics"] = []
            if metrics_path.exists():
                for line in metrics_path.read_text().splitlines():
                    try:
                        record["metrics"].append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut short by a run that died while writing it
                        break
            records.append(record)
    return records


def copy_record(source: str | os.PathLike, target: str | os.PathLike, extra: tuple[str, ...] = ()) -> Path:
    """Copy a record's own files (not Hydra's logs or W&B's), and any `extra` ones, to `target`, e.g. to commit
    them with results. A record already there is kept: the copy goes to `target-2` (`-3`, ...) instead."""
    target = base = Path(target)
    copies = 1
    while (target / RUN).exists() and (target / RUN).read_bytes() != (Path(source) / RUN).read_bytes():
        copies += 1
        target = base.with_name(f"{base.name}-{copies}")
    target.mkdir(parents=True, exist_ok=True)
    for name in (RUN, SUMMARY, METRICS, *extra):
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
