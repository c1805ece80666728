"""The results in results/ against the run records committed beside them, and the figure scripts on records made
up for the purpose (no dataset needed)."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.harness import script

# script, its record folders and options as the committed files were made, the files it writes
RESULTS = [
    ("table1", ["results/table1/runs"], ["table1.md", "table1.csv"]),
    ("figure2", ["results/figure2/runs"], ["figure2.md", "figure2.csv"]),
    ("figure3", ["results/figure3/runs", "--runtime", "results/bench_height_cpu.json"],
     ["figure3.md", "figure3.csv", "figure3_runtime.csv"]),
    ("figure_rnn", ["results/rnn/runs"], ["rnn.md", "rnn.csv"]),
    ("table1_reference", ["results/table1_reference/runs"], ["table1_reference.md", "table1_reference.csv"]),
    ("robustness", ["results/robustness/runs"], ["robustness.md", "robustness.csv", "robustness_summary.csv"]),
]


# Figure 2 draws its 40-odd curves in six seconds, the robustness figure reads 600 records, the reference's Table 1
# repeats Table 1's script: the full suite's
@pytest.mark.parametrize("name, arguments, files", [
    pytest.param(*result, marks=pytest.mark.slow) if result[0] in ("figure2", "robustness", "table1_reference")
    else result
    for result in RESULTS],
    ids=[name for name, _, _ in RESULTS])
def test_committed_results_regenerate_from_their_committed_records(tmp_path, name, arguments, files):
    script(name, *arguments, "--out", str(tmp_path))
    for file in files:  # (and the documentation's pages hold these files: tests/test_docs.py)
        regenerated, committed = (tmp_path / file).read_text(), (ROOT / "results" / file).read_text()
        assert regenerated == committed, f"results/{file} no longer follows from its records"


def test_committed_records_are_small_and_complete():
    folders = [ROOT / "results" / name / "runs" for name in ("table1", "figure2", "figure3", "rnn", "table1_reference",
                                                             "robustness")]
    assert all(folder.is_dir() for folder in folders)
    files = [path for folder in folders for path in folder.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) < 12 * 2 ** 20  # a few MB: no checkpoints, no weights
    assert {path.name for path in files} <= {"run.json", "summary.json", "metrics.jsonl", "hyperparameters.jsonl",
                                             "sample.txt", "vocabulary.json"}
    for summary in (path for path in files if path.name == "summary.json"):
        assert json.loads(summary.read_text())["status"] in ("ok", "diverged"), summary


def write_record(folder, config: dict, summary: dict, metrics: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"config": config, "git": {"commit": "0" * 40, "dirty": False}}))
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def rnn_records(root, alphas):
    for alpha in alphas:
        for hyper in (True, False):
            learned = alpha * (1.5 if hyper else 1.0)
            config = {"experiment": "rnn", "epochs": 2, "seed": 0, "data": {"subset": None},
                      "rnn": {"alpha": alpha, "hyper": hyper}}
            metrics = [{"epoch": e, "step": 10 * e, "valid_bpc": 3.0 / e, "hyperparameters": [{"lr": learned}]}
                       for e in (1, 2)]
            write_record(root / f"{alpha}_{hyper}", config, {
                "status": "ok", "epochs_completed": 2, "valid_bpc": 1.5, "test_bpc": 1.6, "sample": "text",
                "hyperparameters": [{"lr": learned}], "train_examples": 1000}, metrics)


def test_the_rnn_figure_takes_any_number_of_initial_step_sizes(tmp_path):
    alphas = [1e-5, 1e-4, 1e-3, 2e-3, 1e-2, 1e-1]
    rnn_records(tmp_path / "runs", alphas)
    script("figure_rnn", str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    table = pd.read_csv(tmp_path / "out" / "rnn.csv")
    assert sorted(set(table["alpha"])) == alphas and len(table) == 12
    assert (tmp_path / "out" / "rnn.md").read_text().startswith("**Not the paper's protocol:** epochs: 2 instead "
                                                                 "of 50.")


def test_the_figures_draw_the_hyperparameters_every_logged_step(tmp_path):
    """A record's hyperparameters.jsonl, not its per-epoch metrics, is what the learned-value curves are drawn
    from; records made before it existed still draw, from their epochs."""
    from experiments.records import read_records
    from experiments.reports import hyperparameter_path

    rnn_records(tmp_path / "runs", [1e-3])
    folder = tmp_path / "runs" / "0.001_True"
    (folder / "hyperparameters.jsonl").write_text("".join(
        json.dumps({"step": step, "hyperparameters": [{"lr": 1e-3 * (1 + step / 100)}]}) + "\n"
        for step in range(1, 101)))
    records = {record["directory"]: record for record in read_records(tmp_path / "runs")}
    assert [step for step, _ in hyperparameter_path(records[str(folder)])] == list(range(1, 101))
    assert [step for step, _ in hyperparameter_path(records[str(tmp_path / "runs" / "0.001_False")])] == [10, 20]
    script("figure_rnn", str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert (tmp_path / "out" / "figure_rnn.png").stat().st_size > 0


def sensitivity_records(root):
    for method, height in (("SGD", 0), ("SGD", 1), ("Prodigy", 0), ("DAdaptSGD", 0), ("DAdaptAdam", 0)):
        for alpha in ((1e-3, 1e-1) if method == "SGD" else (1.0,)):
            config = {"experiment": "sensitivity", "epochs": 3, "seed": 0, "data": {"subset": None},
                      "sensitivity": {"method": method, "alpha": alpha, "height": height, "upper": "same"}}
            error = 10.0 + height + alpha
            write_record(root / f"{method}{height}_{alpha}", config, {
                "status": "ok", "test_error": error, "train_examples": 60000},
                [{"epoch": 1, "step": 1, "test_error": error, "hyperparameters": [{"lr": alpha}]}])


@pytest.mark.slow  # two processes that draw the figure
def test_figure_3_draws_the_same_picture_whatever_the_hash_seed(tmp_path):
    sensitivity_records(tmp_path / "runs")
    pictures = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "figure3.py"), str(tmp_path / "runs"), "--out",
                        str(out)], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        pictures.append((out / "figure3.png").read_bytes())
    assert pictures[0] == pictures[1]
    assert "Not the paper's protocol" not in (tmp_path / "out1" / "figure3.md").read_text()  # it states no length


@pytest.mark.slow  # three runs of the table's script
def test_a_damaged_record_stops_the_table_in_one_line_or_is_left_out_and_named(tmp_path):
    records = tmp_path / "runs"
    shutil.copytree(ROOT / "results" / "table1" / "runs", records)
    [metrics, *_] = sorted(records.rglob("metrics.jsonl"))
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # its last line cut in half
    [summary, *_] = [path for path in sorted(records.rglob("summary.json")) if path.parent != metrics.parent]
    summary.write_text("{not json")
    result = script("table1", str(records), "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(str(metrics if metrics < summary else summary)) and "--skip-damaged" in line
    assert not (tmp_path / "out" / "table1.md").exists()
    result = script("table1", str(records), "--out", str(tmp_path / "out"), "--skip-damaged")
    notes = result.stderr.strip().splitlines()
    assert f"left out, damaged: {metrics}: line {len(text.splitlines())} of {len(text.splitlines())} is not JSON" \
        in notes[0] + notes[1] and f"left out, damaged: {summary} is not JSON" in "\n".join(notes)
    assert notes[-1].startswith("2 damaged record(s) left out: these results are of the")
