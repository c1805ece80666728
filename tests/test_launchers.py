"""Sweeps through other launchers: local processes (joblib) and a real SLURM cluster (submitit), a job requeued in
the middle of its run included. The SLURM tests need a cluster: scripts/slurm_local.sh starts one on this machine
(CI does); without one they are skipped, unless HYPEROPT_REQUIRE_SLURM=1 says that they must run."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.records import read_records
from tests.conftest import ROOT, data_root
from tests.harness import train
from tests.test_resume import start, wait_for_first_epoch, without_timings

pytestmark = pytest.mark.slow
RUN = ["+exp=mnist_sgd", "epochs=2", "data.subset=2048"]


def slurm_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout
    return any(state in states for state in ("idle", "mix", "alloc"))


needs_slurm = pytest.mark.skipif(not slurm_is_up() and not os.environ.get("HYPEROPT_REQUIRE_SLURM"),
                                 reason="no SLURM cluster here (bash scripts/slurm_local.sh starts one)")


def assert_three_complete_records(folder, output: str) -> None:
    records = read_records(folder)
    assert sorted(r["run"]["config"]["seed"] for r in records) == [0, 1, 2]
    assert all(r["summary"]["status"] == "ok" and len(r["metrics"]) == 2 for r in records)
    assert "3 runs: 3 new, 0 skipped; 3 ok, 0 diverged, 0 failed" in output


def test_a_sweep_through_joblib_writes_every_record(tmp_path):
    result = train("-m", *RUN, "seed=0,1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   f"hydra.sweep.dir={tmp_path}")
    assert_three_complete_records(tmp_path, result.stdout + result.stderr)


@needs_slurm
def test_a_sweep_through_slurm_writes_every_record(tmp_path):
    result = train("-m", *RUN, "seed=0,1,2", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}")
    assert_three_complete_records(tmp_path, result.stdout + result.stderr)
    assert list((tmp_path / ".submitit").iterdir())  # they did run as SLURM jobs


@needs_slurm
def test_a_slurm_job_requeued_mid_run_ends_with_the_uninterrupted_record(tmp_path):
    run = ["+exp=mnist_adam_sgd", "epochs=6", "data.subset=8192"]
    train(*run, f"hydra.run.dir={tmp_path / 'straight'}")
    sweep = start("-m", *run, "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    folder = tmp_path / "sweep" / "0"
    deadline = time.time() + 120
    while not (folder / "summary.json").exists() and time.time() < deadline:  # until the job has started
        time.sleep(0.1)
    wait_for_first_epoch(folder, sweep)
    job = json.loads((folder / "run.json").read_text())  # the job is the one writing this folder
    jobs = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert jobs, "no SLURM job is running"
    subprocess.run(["scontrol", "requeue", jobs[0]], check=True)
    while json.loads((folder / "summary.json").read_text()).get("status") == "running" and time.time() < deadline:
        time.sleep(0.1)
    # SLURM holds a requeued job two minutes before it starts again: once it is pending, let it start now
    while subprocess.run(["squeue", "-h", "-j", jobs[0], "-o", "%T"], capture_output=True,
                         text=True).stdout.strip() != "PENDING" and time.time() < deadline:
        time.sleep(0.1)
    subprocess.run(["scontrol", "update", f"JobId={jobs[0]}", "StartTime=now"], check=True)
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, output
    assert "1 runs: 0 new, 0 skipped, 1 resumed; 1 ok, 0 diverged, 0 failed" in output
    straight, requeued = read_records(tmp_path / "straight")[0], read_records(folder)[0]
    assert requeued["summary"]["attempt"] == 2 and job["config"] == straight["run"]["config"]
    assert requeued["summary"]["earlier_attempts"][0]["error"].startswith("SIGTERM at step")  # SLURM's signal
    assert without_timings(requeued) == without_timings(straight)


# Adam/SGD from two initial step sizes, three seeds: one group of six runs; and a pair whose second run diverges at
# step 2 (α is infinite in float32, so its first hypergradient is NaN).
BATCHABLE = ["+exp=mnist_adam_sgd", "epochs=2", "data.subset=2048", "seed=0,1,2",
             'optimizer="Adam(1e-3)/SGD(1e-5)","Adam(3e-3)/SGD(1e-4)"']
DIVERGING = ["epochs=2", "data.subset=2048", "seed=0", 'optimizer="SGD(0.01)/SGD(1e-5)","SGD(1e300)/SGD(1e-5)"']
# A batched network sums its runs' losses in another order than a lone run (the same float32 numbers, rounded
# differently), so per-epoch metrics agree to float32 rounding amplified by two epochs of training, not bitwise.
FLOAT32 = 1e-4


def records_by_run(folder) -> dict:
    return {(r["run"]["config"]["seed"], str(r["run"]["config"]["optimizer"])): r for r in read_records(folder)}


def assert_same_metrics(batched: dict, alone: dict) -> None:
    assert batched.keys() == alone.keys()
    for key, record in batched.items():
        assert record["summary"]["status"] == alone[key]["summary"]["status"]
        assert len(record["metrics"]) == len(alone[key]["metrics"])
        for ours, theirs in zip(record["metrics"], alone[key]["metrics"]):
            assert ours["step"] == theirs["step"]
            for name in ("train_loss", "test_loss", "test_error"):
                assert ours[name] == pytest.approx(theirs[name], rel=FLOAT32, nan_ok=True), (key, name)
            for our_level, their_level in zip(ours["hyperparameters"], theirs["hyperparameters"]):
                assert our_level == pytest.approx(their_level, rel=FLOAT32), key


def test_a_batched_sweep_writes_the_records_of_the_same_sweep_run_alone(tmp_path):
    batched = train("-m", *BATCHABLE, "hydra/launcher=batched", f"hydra.sweep.dir={tmp_path / 'batched'}")
    assert "Launching 6 jobs as 1 groups trained together and 0 alone" in batched.stdout + batched.stderr
    assert "6 runs: 6 new, 0 skipped; 6 ok, 0 diverged, 0 failed" in batched.stdout + batched.stderr
    train("-m", *BATCHABLE, f"hydra.sweep.dir={tmp_path / 'alone'}")
    records = records_by_run(tmp_path / "batched")
    assert all(r["summary"]["batched"]["runs"] == 6 for r in records.values())
    assert all([point["step"] for point in r["trajectory"]] == list(range(1, 17)) for r in records.values())
    assert_same_metrics(records, records_by_run(tmp_path / "alone"))
    assert (tmp_path / "batched" / "0" / "train.log").read_text().count("epoch ") == 2
    again = train("-m", *BATCHABLE, "hydra/launcher=batched", f"hydra.sweep.dir={tmp_path / 'batched'}")
    assert "6 runs: 0 new, 6 skipped" in again.stdout + again.stderr


def test_a_run_that_diverges_in_a_batch_is_recorded_so_and_the_others_match_their_lone_runs(tmp_path):
    train("-m", *DIVERGING, "hydra/launcher=batched", f"hydra.sweep.dir={tmp_path / 'batched'}")
    train("-m", *DIVERGING, f"hydra.sweep.dir={tmp_path / 'alone'}")
    batched, alone = records_by_run(tmp_path / "batched"), records_by_run(tmp_path / "alone")
    diverged = batched[(0, "SGD(1e300)/SGD(1e-5)")]["summary"]
    assert diverged["status"] == "diverged" and diverged["diverged_at_step"] == 2
    assert diverged["diverged_at_step"] == alone[(0, "SGD(1e300)/SGD(1e-5)")]["summary"]["diverged_at_step"]
    assert batched[(0, "SGD(0.01)/SGD(1e-5)")]["summary"]["status"] == "ok"
    assert_same_metrics(batched, alone)


def test_runs_that_cannot_share_a_network_run_alone(tmp_path):
    result = train("-m", "epochs=1", "data.subset=512", 'optimizer="SGD(0.01)/SGD(1e-5)","Adam/SGD(1e-5)",Prodigy',
                   "hydra/launcher=batched", f"hydra.sweep.dir={tmp_path}")
    assert "Launching 3 jobs as 0 groups trained together and 3 alone" in result.stdout + result.stderr
    assert all(r["summary"]["status"] == "ok" and "batched" not in r["summary"] for r in read_records(tmp_path))


def test_a_batched_sweep_killed_after_an_epoch_resumes_to_the_same_records(tmp_path):
    run = ["-m", "+exp=mnist_adam_sgd", "epochs=3", "data.subset=16384", "seed=0,1", "hydra/launcher=batched"]
    train(*run, f"hydra.sweep.dir={tmp_path / 'straight'}")
    process = start(*run, f"hydra.sweep.dir={tmp_path / 'killed'}")
    wait_for_first_epoch(tmp_path / "killed" / "0", process)  # the group's checkpoint is in its first run's folder
    process.kill()
    process.wait()
    resumed = train(*run, f"hydra.sweep.dir={tmp_path / 'killed'}")
    assert "2 runs: 0 new, 0 skipped, 2 resumed" in resumed.stdout + resumed.stderr
    assert "resumed from the checkpoint at epoch 2, step" in resumed.stdout + resumed.stderr
    straight, killed = read_records(tmp_path / "straight"), read_records(tmp_path / "killed")
    for a, b in zip(straight, killed, strict=True):
        assert without_timings(a)[:2] == without_timings(b)[:2]
        assert a["summary"]["test_error"] == b["summary"]["test_error"]
    assert not (tmp_path / "killed" / "0" / "checkpoint.pt").exists()


def bare_venv(folder) -> str:
    """A new venv that sees this one's packages (torch, Hydra, ...) but not the checkout, and builds with this
    one's setuptools: the Python of a user's fresh install, into which the project is then installed."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = str(folder / "bin" / "python")
    purelib = lambda python: subprocess.run(  # noqa: E731
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True,
        check=True).stdout.strip()
    # a path in a .pth file is added as it is: the editable install's own .pth inside it is not read
    (Path(purelib(python)) / "outer.pth").write_text(purelib(sys.executable) + "\n")
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    return python


@pytest.mark.parametrize("install", ["pip install -e .", "a wheel"])
def test_the_batched_launcher_is_found_however_the_project_is_installed(install, tmp_path):
    python = bare_venv(tmp_path / "venv")
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    if install == "a wheel":
        subprocess.run([python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(tmp_path / "dist"), str(ROOT)], check=True)
        subprocess.run([*pip, *map(str, (tmp_path / "dist").glob("*.whl"))], check=True)
    else:  # setuptools' default editable mode, not the compat mode scripts/setup.sh asks for
        subprocess.run([*pip, "-e", str(ROOT)], check=True)
    sweep = ["-m", "hydra/launcher=batched", "+exp=mnist_sgd", "seed=0,1", "epochs=1", "data.subset=512",
             f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    command = [python, "-m", "experiments.train"] if install == "a wheel" else [python, str(ROOT / "experiments" /
                                                                                         "train.py")]
    result = subprocess.run([*command, *sweep], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HYPEROPT_DATA_ROOT": str(data_root())})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Launching 2 jobs as 1 groups trained together and 0 alone" in result.stdout + result.stderr
    where = subprocess.run([python, "-c", "import experiments; print(experiments.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True).stdout
    assert (str(ROOT) in where) == (install != "a wheel")  # the wheel's own copy ran
