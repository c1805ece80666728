"""Run records rebuilt from a Weights & Biases mirror (experiments/loggers.py): from the offline run folders that
`logger=wandb wandb.mode=offline` writes (read here without any server), or from a project online. Either gives
the dicts experiments.records.read_records gives, built from the same JSON lines, so that every results script
makes the same tables and figures from any of the three sources.

An offline run file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of
records, each with a 7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last) holding a protobuf
Record. The reader is tested with the files of the wandb releases in TESTED; another's are refused in one line.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from experiments.records import DamagedRecord

TESTED = ((0, 31), (0, 31))  # the wandb releases (major, minor) whose offline files the tests read, first and last
BLOCK, HEADER = 32 * 1024, 7


def _release(producer: str) -> tuple[int, int]:
    major, minor = producer.split(".")[:2]
    return int(major), int(minor)


def file_records(path: Path):
    """The protobuf Records of an offline run file, in the order written; DamagedRecord for a file that is not one,
    or that a wandb release the reader is not tested with wrote."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise DamagedRecord(f"{path} is not a W&B run file (it starts with {data[:4]!r}, not b':W&B')")
    position, pending, number = HEADER, b"", 0
    while position + HEADER <= len(data):
        space_in_block = BLOCK - position % BLOCK
        if space_in_block < HEADER:  # a block's tail too short for a header is padding
            position += space_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        if kind == 0 and length == 0:
            break
        if position + HEADER + length > len(data) or kind not in (1, 2, 3, 4):
            raise DamagedRecord(f"{path} is cut short or damaged at byte {position} (record {number + 1})")
        pending += data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(pending)
            except Exception:
                raise DamagedRecord(f"{path}: record {number + 1} cannot be read (the file is damaged)") from None
            pending, number = b"", number + 1
            if record.WhichOneof("record_type") == "header":
                producer = record.header.version_info.producer
                if not TESTED[0] <= _release(producer) <= TESTED[1]:
                    raise DamagedRecord(f"{path} was written by wandb {producer}, which this reader is not tested "
                                        f"with (wandb {TESTED[0][0]}.{TESTED[0][1]} to {TESTED[1][0]}.{TESTED[1][1]}): "
                                        "upload it with `wandb sync` and read the project online (--wandb)")
            yield record


def _values(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def read_offline_file(path: Path) -> dict:
    """{"id", "name", "group", "start", "config", "rows": the history rows in order, "summary": the last value of
    each key}."""
    run = {"id": None, "name": None, "group": None, "start": 0.0, "config": {}, "rows": [], "summary": {}}
    for record in file_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"], run["name"], run["group"] = record.run.run_id, record.run.display_name, record.run.run_group
            run["start"] = record.run.start_time.seconds + record.run.start_time.nanos / 1e9
            run["config"].update(_values(record.run.config.update))
        elif kind == "config":
            run["config"].update(_values(record.config.update))
        elif kind == "history":
            run["rows"].append(_values(record.history.item))
        elif kind == "summary":
            run["summary"].update(_values(record.summary.update))
    return run


def rebuild(name: str, rows: list[dict], summary: dict) -> dict:
    """A record from its mirror: the record lines in the order logged, where a resumed attempt's lines replace
    what its predecessor logged from the same epoch or step on (as the record's own files are cut back)."""
    if "record/summary" not in summary or "record/run" not in summary:
        raise DamagedRecord(f"{name} holds no run record (was it logged by experiments/train.py with logger=wandb?)")
    metrics, trajectory = [], []
    for row in rows:
        for key, kept, field in (("record/metrics", metrics, "epoch"), ("record/trajectory", trajectory, "step")):
            if key in row:
                line = json.loads(row[key])
                kept[:] = [earlier for earlier in kept if earlier[field] < line[field]]
                kept.append(line)
    return {"directory": name, "summary": json.loads(summary["record/summary"]),
            "run": json.loads(summary["record/run"]), "metrics": metrics, "trajectory": trajectory}


def records_from_offline(folders, experiment: str | None = None, damaged: list | None = None,
                         progress: bool = False) -> list[dict]:
    """The records mirrored in the offline run folders under `folders` (each run's attempts, one folder each,
    joined by their W&B id); `damaged` as for read_records."""
    from tqdm import tqdm

    # (latest-run is W&B's link to the newest run folder beside it)
    files = sorted(path for folder in folders for path in Path(folder).rglob("run-*.wandb")
                   if path.parent.name != "latest-run")
    attempts: dict[str, list[dict]] = {}
    for path in tqdm(files, desc="W&B run files", unit="file", disable=not progress):
        try:
            run = read_offline_file(path)
        except DamagedRecord as error:
            if damaged is None:
                raise
            damaged.append(error)
            continue
        run["path"] = path
        attempts.setdefault(run["id"] or str(path), []).append(run)
    mirrors = []
    for run_id, runs in sorted(attempts.items()):
        runs.sort(key=lambda run: (run["start"], str(run["path"])))
        mirrors.append((str(runs[-1]["path"].parent), [row for run in runs for row in run["rows"]],
                        {key: value for run in runs for key, value in run["summary"].items()}))
    return rebuild_all(mirrors, experiment, damaged)


def rebuild_all(mirrors, experiment: str | None, damaged: list | None) -> list[dict]:
    """The records of (name, rows, summary) mirrors that are of `experiment`; `damaged` as for read_records."""
    records = []
    for name, rows, summary in mirrors:
        try:
            record = rebuild(name, rows, summary)
        except DamagedRecord as error:
            if damaged is None:
                raise
            damaged.append(error)
            continue
        if experiment is None or record["run"].get("config", {}).get("experiment") == experiment:
            records.append(record)
    return records


def records_from_project(path: str, experiment: str | None = None, filters: dict | None = None,
                         damaged: list | None = None, progress: bool = True) -> list[dict]:
    """The records mirrored in a W&B project online ("ENTITY/PROJECT"), with W&B's run filters (group, tags,
    state, sweep). Shares everything with the offline reader but the fetch; not tested here (no W&B server can be
    reached from the machines this project is tested on)."""
    import wandb
    from tqdm import tqdm

    def mirrors():
        for run in tqdm(wandb.Api().runs(path, filters=filters or {}), desc="W&B runs", unit="run",
                        disable=not progress):
            rows = list(run.scan_history(keys=["_step", "record/metrics"])) + list(
                run.scan_history(keys=["_step", "record/trajectory"]))
            yield run.url, sorted(rows, key=lambda row: row["_step"]), dict(run.summary)
    return rebuild_all(mirrors(), experiment, damaged)
