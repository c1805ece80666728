"""The Hydra harness as a user runs it: configs, train.py runs and sweeps, run records, W&B, Table 1's script."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

import hyperopt
from experiments.optimizers import BASELINES, build_optimizer, set_mode
from experiments.records import copy_record, read_records
from scripts.table1 import build_table, paper_rows, runs_from_records
from tests.conftest import ROOT
from tests.harness import SMOKE, compose_experiment, train
from tests.wandb_file import read_run

EXPERIMENTS = sorted(path.stem for path in (ROOT / "configs" / "exp").glob("*.yaml"))
TABLE_1 = [name for name in EXPERIMENTS if compose_experiment(name).experiment == "table1"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_names_a_valid_stack(name):
    config = compose_experiment(name)
    hyperopt.parse(config.optimizer)
    assert config.epochs >= 1 and config.data.root


def test_the_sensitivity_experiment_builds_towers_and_baselines():
    config = compose_experiment("mnist_sensitivity", ["sensitivity.alpha=1e-8", "sensitivity.height=3"])
    assert config.optimizer == "SGD(1e-08)/SGD(1e-08)/SGD(1e-08)/SGD(1e-08)"
    config = compose_experiment("mnist_sensitivity", ["sensitivity.height=2", "sensitivity.upper=0.001"])
    assert config.optimizer == "SGD(0.01)/SGD(0.001)/SGD(0.001)"
    config = compose_experiment("mnist_sensitivity", ["sensitivity.method=ScheduleFreeSGD", "sensitivity.alpha=0.1"])
    assert config.optimizer == "ScheduleFreeSGD(0.1)"


def test_table_1_configs_are_the_papers_32_rows():
    configs = [compose_experiment(name) for name in TABLE_1]
    assert sorted((c.row, c.rerun_of) for c in configs) == \
           sorted((row["row"], row["rerun_of"]) for row in paper_rows())
    assert len(configs) == 32
    for config in configs:
        group = config.row.split("(")[0].split("/")[0].split("^")[0]
        assert config.epochs == (30 if group in ("SGD", "AdaGrad") else 5), config.row


def test_every_table_1_row_runs_and_writes_a_complete_record(tmp_path):
    train("-m", f"+exp={','.join(TABLE_1)}", *SMOKE, f"hydra.sweep.dir={tmp_path}")
    records = read_records(tmp_path)
    assert sorted(r["run"]["config"]["row"] for r in records) == sorted(row["row"] for row in paper_rows())
    for record in records:
        summary, run = record["summary"], record["run"]
        assert summary["status"] == "ok", summary
        assert 0 <= summary["test_error"] <= 100 and summary["wall_seconds"] > 0
        assert summary["hyperparameters"] and summary["optimizer_final"]
        assert run["git"]["commit"] and "dirty" in run["git"]
        assert run["versions"]["torch"] and run["machine"]["device"] == "cpu"
        assert run["config"]["epochs"] == 1 and run["config"]["data"]["subset"] == 512
        [metrics] = record["metrics"]
        assert {"epoch", "step", "train_loss", "test_error", "hyperparameters", "epoch_seconds"} <= set(metrics)
        assert len(metrics["hyperparameters"]) == run["config"]["optimizer"].count("/") + 1


def test_sweep_records_diverged_and_failed_runs_and_the_table_shows_them(tmp_path):
    train("-m", "+exp=mnist_adam_sgd", "seed=0,1", *SMOKE, f"hydra.sweep.dir={tmp_path}/ok")
    # κ = 1e10 saturates β at 1, the bias correction 1 - β^t becomes 0 and the next hypergradient NaN
    train("-m", "+exp=mnist_adam_sgd", "seed=2", 'optimizer="Adam/SGD(1e10)"', 'row="Adam/SGD(1e-5)"',
          "epochs=2", "data.subset=2048", f"hydra.sweep.dir={tmp_path}/diverged")
    train("-m", "+exp=mnist_adam", "data.root=/nonexistent", *SMOKE, f"hydra.sweep.dir={tmp_path}/failed")
    runs = runs_from_records([tmp_path])
    statuses = sorted(run["status"] for run in runs)
    assert statuses == ["diverged", "failed", "ok", "ok"]
    diverged = next(r for r in read_records(tmp_path / "diverged"))["summary"]
    assert diverged["diverged_at_step"] >= 2 and "hypergradient" in diverged["error"]
    failed = next(r for r in read_records(tmp_path / "failed"))["summary"]
    assert "MNIST not found under /nonexistent" in failed["error"]

    table = build_table(runs).set_index("row")
    assert len(table) == 32
    assert table.loc["Adam/SGD(1e-5)", "status"] == "2 ok, 1 diverged"
    assert table.loc["Adam/SGD(1e-5)", "seeds"] == 2
    assert table.loc["Adam/SGD(1e-5)", "our_learned"].startswith("Adam(")
    assert table.loc["Adam", "status"] == "1 failed" and table.loc["Adam", "seeds"] == 0
    rerun = "Adam(0.0040, 0.899, 0.999)"
    assert table.loc[rerun, "status"] == "missing"
    assert table.loc[rerun, "our_learned"] == table.loc["Adam/SGD(1e-5)", "our_learned"]


def test_the_same_seed_gives_the_same_numbers(tmp_path):
    for folder in ("a", "b"):
        train("+exp=mnist_adam_sgd", "epochs=2", "data.subset=1024", f"hydra.run.dir={tmp_path / folder}")
    a, b = (read_records(tmp_path / folder)[0] for folder in ("a", "b"))
    strip = [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in a["metrics"]]
    assert strip == [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in b["metrics"]]
    assert a["summary"]["hyperparameters"] == b["summary"]["hyperparameters"]


def test_a_missing_data_root_gives_one_clear_error(tmp_path):
    result = train("+exp=mnist_sgd", "data.root=/nonexistent", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode != 0
    assert "MNIST not found under /nonexistent/MNIST/raw" in result.stderr
    assert "data.download=true" in result.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_a_record_is_never_overwritten(tmp_path):
    train("+exp=mnist_sgd", *SMOKE, f"hydra.run.dir={tmp_path}")
    before = (tmp_path / "summary.json").read_text()
    result = train("+exp=mnist_sgd", *SMOKE, f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode != 0 and "already holds a run's record" in result.stderr
    assert (tmp_path / "summary.json").read_text() == before


def test_exporting_records_keeps_each_one(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, seed in ((first, 0), (second, 1)):
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"seed": seed}))
        (folder / "summary.json").write_text("{}")
    target = tmp_path / "export" / "seed0"
    assert copy_record(first, target) == target
    assert copy_record(first, target) == target  # the same record again: refreshed in place
    assert copy_record(second, target) == tmp_path / "export" / "seed0-2"
    assert json.loads((target / "run.json").read_text()) == {"seed": 0}


def test_wandb_offline_mirrors_the_metrics(tmp_path):
    train("+exp=mnist_adam_sgd", "epochs=2", "data.subset=512", "logger=wandb", "wandb.mode=offline",
          f"hydra.run.dir={tmp_path}")
    [run_file] = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    mirrored = read_run(run_file)
    assert mirrored["name"] == "Adam/SGD(1e-5) seed=0" and mirrored["group"] == "table1/Adam/SGD(1e-5)"
    assert mirrored["config"]["optimizer"] == "Adam/SGD(1e-5)"
    record = read_records(tmp_path)[0]
    assert [h["test_error"] for h in mirrored["history"]] == [m["test_error"] for m in record["metrics"]]
    assert mirrored["history"][-1]["hyperparameters/0/lr"] == record["metrics"][-1]["hyperparameters"][0]["lr"]
    assert mirrored["summary"]["status"] == "ok"
    assert mirrored["summary"]["test_error"] == record["summary"]["test_error"]


def test_sensitivity_runs_and_figure_3_is_drawn_from_records(tmp_path):
    train("-m", "+exp=mnist_sensitivity", "sensitivity.alpha=1e-3,1.0", "sensitivity.height=0,2", *SMOKE,
          f"hydra.sweep.dir={tmp_path}/stacks")
    baselines = ",".join(BASELINES)
    train("-m", "+exp=mnist_sensitivity", f"sensitivity.method={baselines}", "sensitivity.alpha=1.0", *SMOKE,
          f"hydra.sweep.dir={tmp_path}/baselines")
    records = read_records(tmp_path)
    assert len(records) == 4 + len(BASELINES)
    assert all(r["summary"]["status"] == "ok" for r in records), [r["summary"] for r in records]
    optimizers = {r["run"]["config"]["optimizer"] for r in records}
    assert "SGD(0.001)/SGD(0.001)/SGD(0.001)" in optimizers and "Prodigy(1.0)" in optimizers
    prodigy = next(r for r in records if r["run"]["config"]["optimizer"] == "Prodigy(1.0)")
    assert set(prodigy["summary"]["hyperparameters"][0]) == {"lr", "d"}

    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_overhead.py"), "--heights", "0,2",
                    "--families", "SGD", "--steps", "2", "--rounds", "1", "--out", str(tmp_path / "runtime.json")],
                   check=True, capture_output=True, cwd=ROOT)
    out = tmp_path / "figure"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "figure3.py"), str(tmp_path / "stacks"),
                    str(tmp_path / "baselines"), "--runtime", str(tmp_path / "runtime.json"), "--out", str(out)],
                   check=True, capture_output=True, cwd=ROOT)
    assert (out / "figure3.png").stat().st_size > 10_000
    table = pd.read_csv(out / "figure3.csv")
    assert len(table) == 4 + len(BASELINES) and set(table["seeds"]) == {1}
    assert "| 2 | 2 |" in (out / "figure3.md").read_text()  # height 2 over two values of α
    assert len(pd.read_csv(out / "figure3_runtime.csv")) == 2


def test_schedule_free_evaluates_at_its_averaged_weights():
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer("ScheduleFreeSGD(0.5)", model.parameters())
    for _ in range(3):
        model(torch.randn(4, 3)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    training_weights = model.weight.detach().clone()
    set_mode(optimizer, "eval")
    assert not torch.equal(model.weight, training_weights)
    set_mode(optimizer, "train")
    torch.testing.assert_close(model.weight, training_weights)


def test_a_bad_optimizer_names_the_stacks_and_the_baselines():
    with pytest.raises(ValueError, match="unknown optimizer 'Adamw'") as error:
        build_optimizer("Adamw", torch.nn.Linear(2, 2).parameters())
    assert "ScheduleFreeAdamW" in str(error.value)
