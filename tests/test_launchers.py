"""Sweeps through other launchers: local processes (joblib) and a real SLURM cluster (submitit), a job requeued in
the middle of its run included. The SLURM tests need a cluster: scripts/slurm_local.sh starts one on this machine
(CI does); without one they are skipped, unless HYPEROPT_REQUIRE_SLURM=1 says that they must run."""

import json
import os
import shutil
import subprocess
import time

import pytest

from experiments.records import read_records
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
    subprocess.run(["scontrol", "update", f"JobId={jobs[0]}", "StartTime=now"], check=True)  # no waiting 2 minutes
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, output
    assert "1 runs: 0 new, 0 skipped, 1 resumed; 1 ok, 0 diverged, 0 failed" in output
    straight, requeued = read_records(tmp_path / "straight")[0], read_records(folder)[0]
    assert requeued["summary"]["attempt"] == 2 and job["config"] == straight["run"]["config"]
    assert requeued["summary"]["earlier_attempts"][0]["error"].startswith("SIGTERM at step")  # SLURM's signal
    assert without_timings(requeued) == without_timings(straight)
