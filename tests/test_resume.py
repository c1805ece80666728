"""Nothing lost: a run killed at any step and started again with the same command ends with the record it would
have had uninterrupted; SIGTERM and SIGINT checkpoint and say so; a sweep run again skips, resumes and retries."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from experiments.records import read_records
from tests.conftest import ROOT, data_root
from tests.harness import train

pytestmark = pytest.mark.slow

EVERY_STEP = "checkpoint.every_minutes=1e-9"  # a checkpoint after every step, so that a kill can land anywhere
RUNS = {  # each long enough that a kill after its first epoch lands before its end
    "mnist": ["+exp=mnist_adam_sgd", "epochs=4", "data.subset=4096"],
    "char_lstm": ["+exp=rnn_tolstoy", "epochs=3", "data.subset=60000", "batch_size=16"],
    "resnet20": ["+exp=cifar_resnet20", "epochs=3", "data.subset=512", "data.test_subset=200", "batch_size=64"],
}


def start(*overrides: str) -> subprocess.Popen:
    env = {**os.environ, "HYPEROPT_DATA_ROOT": str(data_root())}
    return subprocess.Popen([sys.executable, str(ROOT / "experiments" / "train.py"), *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_first_epoch(folder, process: subprocess.Popen) -> None:
    """Until the run has finished its first epoch (its summary says so) and saved a checkpoint."""
    deadline = time.time() + 300
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
        if (folder / "checkpoint.pt").exists() and summary.get("last_epoch", 0) >= 1:
            return
        time.sleep(0.02)
    raise AssertionError("the run did not finish its first epoch in time")


def without_timings(record: dict) -> tuple:
    metrics = [{k: v for k, v in m.items() if k not in ("epoch_seconds", "train_seconds")} for m in record["metrics"]]
    summary = {k: v for k, v in record["summary"].items()
               if k not in ("wall_seconds", "started", "attempt", "attempt_started", "seconds_per_epoch",
                            "earlier_attempts")}
    return metrics, record["trajectory"], summary


@pytest.mark.parametrize("name", RUNS)
def test_a_run_killed_mid_epoch_resumes_to_the_same_record(name, tmp_path):
    train(*RUNS[name], f"hydra.run.dir={tmp_path / 'straight'}")
    folder = tmp_path / "killed"
    process = start(*RUNS[name], EVERY_STEP, f"hydra.run.dir={folder}")
    wait_for_first_epoch(folder, process)
    process.kill()
    process.wait()
    killed = json.loads((folder / "summary.json").read_text())
    assert killed["status"] == "running" and killed["last_epoch"] >= 1  # the record says how far it got
    result = train(*RUNS[name], EVERY_STEP, f"hydra.run.dir={folder}")
    assert "resumed from the checkpoint at epoch" in result.stdout + result.stderr
    straight, resumed = (read_records(tmp_path / part)[0] for part in ("straight", "killed"))
    assert without_timings(resumed) == without_timings(straight)
    assert resumed["summary"]["attempt"] == 2 and resumed["summary"]["status"] == "ok"
    assert not (folder / "checkpoint.pt").exists()  # a finished run leaves no checkpoint unless asked


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_checkpoint_and_record_interrupted(signal_number, tmp_path):
    overrides = ["+exp=mnist_adam_sgd", "epochs=20", "data.subset=8192"]
    process = start(*overrides, f"hydra.run.dir={tmp_path}")
    wait_for_first_epoch(tmp_path, process)
    process.send_signal(signal_number)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal_number, output
    assert "Traceback" not in output and "run the same command again to continue" in output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_at_step"] > 32
    assert summary["error"].startswith(signal.Signals(signal_number).name)
    result = train(*overrides, f"hydra.run.dir={tmp_path}")
    assert "resumed from the checkpoint" in result.stdout + result.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "ok"


def test_a_damaged_checkpoint_is_passed_over_for_the_one_before(tmp_path):
    overrides = ["+exp=mnist_adam_sgd", "epochs=4", "data.subset=4096", EVERY_STEP, "checkpoint.keep=true"]
    train(*overrides, f"hydra.run.dir={tmp_path / 'straight'}")
    folder = tmp_path / "damaged"
    process = start(*overrides, f"hydra.run.dir={folder}")
    wait_for_first_epoch(folder, process)
    process.kill()
    process.wait()
    latest = folder / "checkpoint.pt"
    # cut short, as by a full disk: a new file renamed over the name, as a save would leave it. (Written in place,
    # it would cut the previous checkpoint too when the kill fell between a save's two renames, where the two names
    # are hard links to one file.)
    cut = folder / "cut.pt"
    cut.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    os.replace(cut, latest)
    result = train(*overrides, f"hydra.run.dir={folder}")
    assert "is damaged" in result.stdout + result.stderr and "resumed from the checkpoint" in result.stdout + \
        result.stderr
    straight, resumed = (read_records(tmp_path / part)[0] for part in ("straight", "damaged"))
    assert without_timings(resumed) == without_timings(straight)


class Killed(BaseException):
    """A kill at one file-system call of a save (the process gets no further)."""


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard links", "no hard links"])
def test_a_kill_at_any_moment_of_a_save_leaves_a_whole_checkpoint(tmp_path, monkeypatch, hard_links):
    from experiments import checkpoints
    real = {"link": os.link, "replace": os.replace}
    for kill_at in range(3 if hard_links else 2):
        folder = tmp_path / f"{hard_links}-{kill_at}"
        folder.mkdir()
        saved = checkpoints.Checkpoints(folder)
        saved.save({"step": 1})
        saved.save({"step": 2})
        calls = []

        def call(name, *arguments):
            if name == "link" and not hard_links:
                raise OSError("hard links not supported")
            calls.append(name)
            if len(calls) - 1 == kill_at:
                raise Killed
            return real[name](*arguments)

        monkeypatch.setattr(checkpoints.os, "link", lambda *a: call("link", *a))
        monkeypatch.setattr(checkpoints.os, "replace", lambda *a: call("replace", *a))
        with pytest.raises(Killed):
            saved.save({"step": 3})
        monkeypatch.undo()
        assert saved.load()["step"] in (2, 3)
        if hard_links:
            assert (folder / checkpoints.LATEST).exists() and (folder / checkpoints.PREVIOUS).exists()


class Planted:
    """What an attacker with write access to a shared run folder might leave as its checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_its_code_never_runs(tmp_path):
    overrides = ["+exp=mnist_adam_sgd", "epochs=4", "data.subset=4096"]
    folder, marker = tmp_path / "run", tmp_path / "it ran"
    process = start(*overrides, f"hydra.run.dir={folder}")
    wait_for_first_epoch(folder, process)
    process.kill()
    process.wait()
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        torch.save({"trainee": Planted(marker)}, folder / name)
    result = train(*overrides, f"hydra.run.dir={folder}", check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output and not marker.exists()
    [line] = [line for line in output.splitlines() if "ERROR" in line]
    assert f"{folder / 'checkpoint.pt'} holds objects other than tensors and plain values" in line
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "failed" and "resumed from" not in output and summary["last_epoch"] == 1


def test_two_processes_never_write_one_run_folder_and_a_killed_one_lets_go(tmp_path):
    overrides = ["+exp=mnist_adam_sgd", "epochs=3", "data.subset=2048", f"hydra.run.dir={tmp_path / 'run'}"]
    first, second = start(*overrides), start(*overrides)  # two terminals, or a job resubmitted while it runs
    outputs = [process.communicate(timeout=300)[0] for process in (first, second)]
    codes = sorted(process.returncode for process in (first, second))
    assert codes == [0, 1], outputs
    refusal = outputs[[first.returncode, second.returncode].index(1)]
    [line] = [line for line in refusal.splitlines() if "ERROR" in line]
    assert "is being written by process" in line and "one process writes a run folder at a time" in line
    [record] = read_records(tmp_path / "run")
    assert [m["epoch"] for m in record["metrics"]] == [1, 2, 3] and record["summary"]["attempt"] == 1

    folder = tmp_path / "killed"
    holder = start(*overrides[:-1], f"hydra.run.dir={folder}")
    wait_for_first_epoch(folder, holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    result = train(*overrides[:-1], f"hydra.run.dir={folder}")
    assert "resumed from the checkpoint" in result.stdout + result.stderr


def no_bigger_files_than(size: int):
    """For a child process: a file can grow to `size` bytes only, and a write beyond fails (EFBIG, as a full
    disk's ENOSPC does) rather than killing it."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return limit


def test_a_checkpoint_that_cannot_be_written_stops_the_run_in_one_line_and_the_same_command_resumes(tmp_path):
    overrides = ["+exp=mnist_adam_sgd", "epochs=2", "data.subset=2048", f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "HYPEROPT_DATA_ROOT": str(data_root())}
    full = subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=no_bigger_files_than(300_000))
    output = full.stdout + full.stderr
    assert full.returncode == 1 and "Traceback" not in output, output
    [line] = [line for line in output.splitlines() if "ERROR" in line]
    assert f"the checkpoint could not be written to {tmp_path / 'checkpoint.pt'} (File too large" in line
    assert "make room and run the same command again to continue" in line
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    result = train(*overrides)  # room made
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "ok", result.stdout


def test_a_sweep_run_again_skips_resumes_and_retries(tmp_path):
    data, folder = tmp_path / "data", tmp_path / "sweep"  # no data at first: the run of seed 0 fails
    run = ["+exp=mnist_sgd", "epochs=6", "data.subset=8192", "data.download=false", f"data.root={data}"]
    first = train("-m", *run, "seed=0", f"hydra.sweep.dir={folder}", check=False)
    assert first.returncode == 1 and "1 runs: 1 new, 0 skipped; 0 ok, 0 diverged, 1 failed" in first.stdout
    data.symlink_to(data_root())
    process = start(*run, "seed=1", f"hydra.run.dir={folder / '1'}")  # the run of seed 1, stopped by SIGTERM
    wait_for_first_epoch(folder / "1", process)
    process.send_signal(signal.SIGTERM)
    process.wait()
    result = train("-m", *run, "seed=0,1,2", f"hydra.sweep.dir={folder}")
    assert "3 runs: 1 new, 0 skipped, 1 resumed, 1 retried; 3 ok, 0 diverged, 0 failed" in result.stdout
    again = train("-m", *run, "seed=0,1,2", f"hydra.sweep.dir={folder}")
    assert "3 runs: 0 new, 3 skipped; 3 ok, 0 diverged, 0 failed" in again.stdout
