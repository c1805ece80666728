"""The GPU suite cannot rot: its dry run (tiny sizes, on the CPU) runs every part and brings back what the device
tool can carry (at most 8 files)."""

import os
import subprocess
import tarfile

import pytest

from tests.conftest import ROOT, data_root

pytestmark = pytest.mark.slow


def test_the_device_suite_runs_every_part_in_a_dry_run(tmp_path):
    env = {**os.environ, "HYPEROPT_DATA_ROOT": str(data_root())}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "device_suite.sh"), str(tmp_path), "--dry-run"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    parts = (tmp_path / "suite.txt").read_text().splitlines()[1:]
    assert [line.split(":")[0] for line in parts] == ["cuda_tests", "bench_batched", "bench_overhead", "rnn",
                                                      "table1", "figure2", "ddp", "bench_step", "bench_step_gpt",
                                                      "bench_compile"]
    assert all(": exit 0 " in line for line in parts), parts
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "bench_batched.json", "bench_compile_resnet20.json", "bench_overhead_resnet20.json",
        "bench_step_char_gpt.json", "bench_step_resnet20.json", "runs.tar.gz", "suite.txt"]
    with tarfile.open(tmp_path / "runs.tar.gz") as archive:
        summaries = [name for name in archive.getnames() if name.endswith("summary.json")]
    # the RNN's 2 arms × 2 seeds, Table 1's 2 stacks, Figure 2's 2 arms × 2 μ, the run of two processes
    assert len(summaries) == 4 + 2 + 4 + 1
