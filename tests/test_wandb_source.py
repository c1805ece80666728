"""Weights & Biases as a run source: the runs of a small sweep written with logger=wandb wandb.mode=offline give
the same tables from their W&B offline folders (read without a server) as from their run records; a resumed run
continues its W&B run; a damaged W&B file is named in one line."""

import json
import signal

import pytest

from experiments.records import read_records
from experiments.wandb_runs import records_from_offline
from tests.harness import SMOKE, script, train
from tests.test_resume import start, wait_for_first_epoch

pytestmark = pytest.mark.slow
OFFLINE = ["logger=wandb", "wandb.mode=offline"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    train("-m", "+exp=mnist_sgd,mnist_adam_sgd", *SMOKE, "log_every_steps=1", *OFFLINE,
          f"hydra.sweep.dir={folder}")
    return folder


def test_the_records_rebuilt_from_w_and_b_offline_folders_are_the_run_records(sweep):
    local = sorted(read_records(sweep), key=lambda record: record["run"]["wandb_id"])
    mirrored = sorted(records_from_offline([sweep]), key=lambda record: record["run"]["wandb_id"])
    assert len(local) == len(mirrored) == 2
    for ours, theirs in zip(local, mirrored):
        assert {k: v for k, v in ours.items() if k != "directory"} == \
            {k: v for k, v in theirs.items() if k != "directory"}
        assert len(theirs["trajectory"]) == theirs["summary"]["steps"]


@pytest.fixture(scope="module")
def sensitivity(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sensitivity")
    train("-m", "+exp=mnist_sensitivity", "sensitivity.alpha=1e-3,1.0", "sensitivity.height=1", *SMOKE, *OFFLINE,
          f"hydra.sweep.dir={folder}")
    return folder


@pytest.mark.parametrize("name", ["table1", "figure3"])
def test_a_table_and_a_figure_from_w_and_b_are_those_from_the_records(name, request, tmp_path):
    sweep = request.getfixturevalue("sweep" if name == "table1" else "sensitivity")
    for source, arguments in (("records", [str(sweep)]), ("wandb", ["--wandb-dir", str(sweep)])):
        script(name, *arguments, "--out", str(tmp_path / source))
    for path in sorted((tmp_path / "records").iterdir()):
        ours, theirs = path.read_bytes(), (tmp_path / "wandb" / path.name).read_bytes()
        if path.suffix == ".md":  # the command that made it names its source
            ours, theirs = (text.replace(str(sweep), "SOURCE").replace("--wandb-dir ", "") for text in (ours.decode(),
                                                                                                     theirs.decode()))
        assert ours == theirs, path.name


def test_a_resumed_run_continues_its_w_and_b_run(tmp_path):
    overrides = ["+exp=mnist_adam_sgd", "epochs=3", "data.subset=2048", *OFFLINE, f"hydra.run.dir={tmp_path}"]
    process = start(*overrides)
    wait_for_first_epoch(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    train(*overrides)
    [record] = read_records(tmp_path)
    [mirrored] = records_from_offline([tmp_path])
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2  # two attempts, one W&B id
    assert {k: v for k, v in mirrored.items() if k != "directory"} == \
        {k: v for k, v in record.items() if k != "directory"}
    assert record["summary"]["attempt"] == 2 and [m["epoch"] for m in mirrored["metrics"]] == [1, 2, 3]


def test_a_damaged_w_and_b_file_is_named_in_one_line(sweep, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    [first, *_] = sorted(copy.glob("*/wandb/offline-run-*/run-*.wandb"))
    first.write_bytes(first.read_bytes()[:-5])  # its last record cut short
    result = script("table1", "--wandb-dir", str(copy), "--out", str(tmp_path / "out"), check=False)
    [line] = result.stderr.strip().splitlines()
    assert result.returncode == 1 and line.startswith(f"{first} is cut short or damaged at byte")
    first.write_bytes(b"not a run file")
    result = script("table1", "--wandb-dir", str(copy), "--out", str(tmp_path / "out"), check=False)
    assert f"{first} is not a W&B run file" in result.stderr and result.returncode == 1


def test_a_file_of_a_wandb_release_the_reader_is_not_tested_with_is_refused_in_one_line(tmp_path):
    import struct

    from wandb.proto import wandb_internal_pb2

    from experiments.records import DamagedRecord
    record = wandb_internal_pb2.Record()
    record.header.version_info.producer = "0.16.6"
    payload = record.SerializeToString()
    path = tmp_path / "offline-run-1" / "run-1.wandb"
    path.parent.mkdir()
    path.write_bytes(b":W&B" + struct.pack("<HB", 0xBEE1, 0) + struct.pack("<IHB", 0, len(payload), 1) + payload)
    with pytest.raises(DamagedRecord, match=r"written by wandb 0\.16\.6, which this reader is not tested with "
                                            r"\(wandb 0\.31 to 0\.31\): upload it with `wandb sync`"):
        records_from_offline([tmp_path])
