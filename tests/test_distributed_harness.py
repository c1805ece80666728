"""One run trained by torchrun's processes (distributed=ddp or fsdp, gloo on the CPU): one record, written by rank 0
with the world size in it, that of one process on the same global batches; a run stopped by SIGTERM resumes from
its checkpoint with the same number of processes (bitwise) or another; misuse refused in one line."""

import json
import os
import signal
import subprocess
import sys

import pytest

from experiments.records import read_records
from tests.conftest import ROOT, data_root
from tests.harness import train
from tests.test_resume import EVERY_STEP, wait_for_first_epoch, without_timings

pytestmark = pytest.mark.slow

RUN = ["+exp=mnist_adam_sgd", "epochs=2", "data.subset=2048", "device=cpu"]


def torchrun(processes: int, *overrides: str, cwd=ROOT, wait: bool = True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(ROOT / "experiments" / "train.py"), *overrides]
    env = {**os.environ, "HYPEROPT_DATA_ROOT": str(data_root())}
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def assert_same_run(ours: dict, theirs: dict, relative: float) -> None:
    """The same metrics, learned values and outcome, to `relative` (float32: 2 processes average the gradients of
    two halves where one process takes the mean of the whole)."""
    assert len(ours["metrics"]) == len(theirs["metrics"])
    for a, b in zip(ours["metrics"], theirs["metrics"]):
        assert a["step"] == b["step"]
        for key in ("train_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=relative), key
        assert abs(a["test_error"] - b["test_error"]) <= 0.05  # at most 5 of the 10,000 test images
        for level_a, level_b in zip(a["hyperparameters"], b["hyperparameters"]):
            assert level_a == pytest.approx(level_b, rel=relative)
    assert ours["summary"]["status"] == theirs["summary"]["status"] == "ok"


@pytest.mark.parametrize("setting", ["ddp", "fsdp"])
def test_two_processes_write_one_record_that_of_one_process(setting, tmp_path):
    train(*RUN, f"hydra.run.dir={tmp_path / 'one'}")
    (tmp_path / "two").mkdir()
    torchrun(2, *RUN, f"distributed={setting}", cwd=tmp_path / "two")  # Hydra's own run folder: runs/table1/<time>
    [one] = read_records(tmp_path / "one")
    [two] = read_records(tmp_path / "two")
    assert_same_run(two, one, 1e-5)
    assert two["run"]["distributed"] == {"setting": setting, "world_size": 2, "backend": "gloo"}
    folders = list((tmp_path / "two" / "runs" / "table1").iterdir())  # rank 1's Hydra folder was removed
    assert [folder.name for folder in folders] == [os.path.basename(two["directory"])]


@pytest.mark.parametrize("setting, processes", [("ddp", 2), ("fsdp", 1)])
def test_a_run_stopped_by_sigterm_resumes_with_the_same_or_another_number_of_processes(setting, processes, tmp_path):
    """Stopped with 2 processes, resumed with `processes`: bitwise with the same number; with another, as one
    process would (the checkpoint holds the state as one process holds it; under fsdp, the shards gathered)."""
    run = ["+exp=mnist_adam_sgd", "epochs=3", "data.subset=4096", "device=cpu", f"distributed={setting}", EVERY_STEP]
    torchrun(2, *run, f"hydra.run.dir={tmp_path / 'straight'}")
    [straight] = read_records(tmp_path / "straight")
    folder = tmp_path / "stopped"
    launcher = torchrun(2, *run, f"hydra.run.dir={folder}", wait=False)
    wait_for_first_epoch(folder, launcher)
    launcher.send_signal(signal.SIGTERM)  # torchrun passes it on to each process
    output, _ = launcher.communicate(timeout=120)
    assert json.loads((folder / "summary.json").read_text())["status"] == "interrupted", output
    result = torchrun(processes, *run, f"hydra.run.dir={folder}")
    assert "resumed from the checkpoint at epoch" in result.stdout + result.stderr
    [resumed] = read_records(folder)
    if processes == 2:
        assert without_timings(resumed) == without_timings(straight)
    else:
        assert_same_run(resumed, straight, 1e-5)
    assert resumed["run"]["later_attempts"][-1]["distributed"]["world_size"] == processes


@pytest.mark.parametrize("environment, overrides, says", [
    ({"WORLD_SIZE": "2", "RANK": "0"}, [], "this is one of 2 processes (WORLD_SIZE=2: torchrun?) but "
                                          "distributed=null"),
    ({}, ["distributed=ddp"], "distributed=ddp trains one run on the processes torchrun starts: torchrun "
                              "--nproc_per_node=N"),
])
def test_several_processes_misused_are_refused_in_one_line(environment, overrides, says, tmp_path):
    env = {**os.environ, "HYPEROPT_DATA_ROOT": str(data_root()), **environment}
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), *RUN, *overrides,
                             f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and says in result.stdout + result.stderr


def test_batches_that_do_not_split_into_equal_shares_are_refused(tmp_path):
    """2048 examples in batches of 256 split over 3 processes: the averaged gradient would not be the batch's."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                             str(ROOT / "experiments" / "train.py"), *RUN, "distributed=ddp",
                             f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HYPEROPT_DATA_ROOT": str(data_root())})
    assert result.returncode != 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "do not split into 3 equal shares" in summary["error"]
