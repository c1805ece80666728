"""The Hydra harness as a user runs it: configs and their checks, train.py runs and sweeps, run records, W&B, Table
1's script."""

import io
import json
import re
import shutil

import pandas as pd
import pytest
import torch

from experiments.benchmark import Loop, interleaved, interleaved_rounds
from experiments.config import ConfigError, validate
from experiments.optimizers import BASELINES, build_optimizer, set_mode
from experiments.paper import TABLE_1
from experiments.records import copy_record, read_records
from experiments.step import train_step
from experiments.wandb_runs import read_offline_file
from models import MLP
from tests.conftest import ROOT, data_root
from tests.harness import SMOKE, compose_experiment, script, train
from tests.pictures import share_in_colour

TABLE_1_EXPERIMENTS = [row.config_name for row in TABLE_1]
EXPERIMENTS = sorted(path.stem for path in (ROOT / "configs" / "exp").glob("*.yaml")) + TABLE_1_EXPERIMENTS
PARAMETERS = [torch.nn.Parameter(torch.zeros(3))]


def resolved(name: str, overrides=()) -> dict:
    from omegaconf import OmegaConf
    return OmegaConf.to_container(compose_experiment(name, overrides), resolve=True)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_passes_its_checks_and_builds_its_optimizer(name):
    config = resolved(name)
    validate(config)
    assert str(build_optimizer(config["optimizer"], PARAMETERS))


@pytest.mark.parametrize("overrides, built", [
    (["sensitivity.alpha=1e-8", "sensitivity.height=3"], "SGD(1e-08)/SGD(1e-08)/SGD(1e-08)/SGD(1e-08)"),
    (["sensitivity.height=2", "sensitivity.upper=0.001"], "SGD(0.01)/SGD(0.001)/SGD(0.001)"),
    (["sensitivity.method=ScheduleFreeSGD", "sensitivity.alpha=0.1"], "ScheduleFreeSGD(0.1)"),
])
def test_the_sensitivity_experiment_builds_towers_and_baselines(overrides, built):
    config = resolved("mnist_sensitivity", overrides)
    assert str(build_optimizer(config["optimizer"], PARAMETERS)) == built


def test_a_tower_over_a_learning_rate_free_optimizer_is_refused():
    config = resolved("mnist_sensitivity", ["sensitivity.method=Prodigy", "sensitivity.height=1"])
    with pytest.raises(ValueError, match="SGD stacks only"):
        build_optimizer(config["optimizer"], PARAMETERS)


def test_table_1_experiments_are_the_papers_32_rows():
    configs = [compose_experiment(name) for name in TABLE_1_EXPERIMENTS]
    assert [(c.optimizer, c.rerun_of, c.epochs, c.experiment) for c in configs] == \
           [(row.stack, row.rerun_of, row.epochs, "table1") for row in TABLE_1]
    assert len(configs) == 32 and len(set(TABLE_1_EXPERIMENTS)) == 32
    # the names users type: a stack and its rerun
    assert compose_experiment("mnist_sgd_adam").optimizer == "SGD/Adam(0.1)"
    assert compose_experiment("mnist_rmspropalphagamma_sgd_rerun").optimizer == "RMSProp(0.0032, 0.9899)"


@pytest.mark.parametrize("override, key, allowed", [
    ("epochs=0", "epochs", "a whole number ≥ 1"),
    ("epochs=abc", "epochs", "a whole number ≥ 1"),
    ("epochs=1.5", "epochs", "a whole number ≥ 1"),
    ("batch_size=-1", "batch_size", "a whole number ≥ 1"),
    ("batch_size=true", "batch_size", "a whole number ≥ 1"),
    ("data.subset=-5", "data.subset", "null (all) or a whole number ≥ 1"),
    ("data.subset=0", "data.subset", "null (all) or a whole number ≥ 1"),
    ("seed=-1", "seed", "a whole number ≥ 0"),
    ("device=tpu", "device", "auto, cpu, cuda, cuda:N or mps"),
    ("logger=foo", "logger", "one of local, wandb"),
    ("wandb.mode=maybe", "wandb.mode", "one of online, offline, disabled"),
    ("precision=fp16", "precision", "one of fp32, bf16"),
    ("compile=yes", "compile", "true or false"),
    ("optimizer=''", "optimizer", "a stack in the paper's notation"),
])
def test_a_bad_value_is_named_with_what_is_allowed(override, key, allowed):
    with pytest.raises(ConfigError) as error:
        validate(resolved("mnist_sgd", [override]))
    message = str(error.value)
    assert error.value.key == key and error.value.allowed.startswith(allowed)
    assert message.startswith(f"bad config value {key}=") and allowed in message and "\n" not in message


@pytest.mark.parametrize("name, override, key", [
    ("cifar_resnet20", "cifar.momentum=1.0", "cifar.momentum"),
    ("cifar_resnet20", "cifar.kappa_alpha=fast", "cifar.kappa_alpha"),
    ("cifar_he2015", "schedule.milestones=[0.5,2]", "schedule.milestones"),
    ("mnist_sgd", "schedule={name:cosine}", "schedule.name"),
    ("mnist_sgd", "schedule={name:warmup_cosine,warmup:1.5}", "schedule.warmup"),
    ("mnist_sgd", "schedule={name:one_cycle,gamma:0.1}", "schedule.gamma"),
    ("rnn_tolstoy", "data.sequence_length=0", "data.sequence_length"),
    ("mnist_sensitivity", "sensitivity.height=-1", "sensitivity.height"),
])
def test_each_experiments_own_values_are_checked(name, override, key):
    with pytest.raises(ConfigError) as error:
        validate(resolved(name, [override]))
    assert error.value.key == key


@pytest.mark.slow  # reads MNIST
def test_a_schedule_shapes_a_learned_step_size_and_the_record_holds_the_values_used(tmp_path):
    """schedule= on a stack that learns α: the record's α is the schedule's factor times the learned value, 0 at
    the end of a warmup-cosine decay to 0 (a schedule that did nothing would leave the learned value itself)."""
    train("+exp=mnist_sgd", "optimizer='SGD(0.1)/SGD(1e-3)'", "schedule={name:warmup_cosine,warmup:0.5}",
          "epochs=2", "data.subset=512", "log_every_steps=1", f"hydra.run.dir={tmp_path}")
    [record] = read_records(tmp_path)
    alphas = [entry["hyperparameters"][0]["lr"] for entry in record["trajectory"]]
    assert len(alphas) == 4 and alphas[-1] == pytest.approx(0.0, abs=1e-12)
    assert alphas[0] == pytest.approx(0.1 * 0.5, rel=1e-6)  # step 1 of a 2-step warmup
    assert record["summary"]["status"] == "ok"


@pytest.mark.slow  # reads MNIST
def test_a_learned_value_out_of_range_is_said_once_and_kept_in_the_summary(tmp_path):
    result = train("+exp=mnist_sgd", "optimizer='SGD(0.5, 0.9)/SGD(1)'", "epochs=2", "data.subset=1024",
                   f"hydra.run.dir={tmp_path}")
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "left its range" in line]
    assert len(lines) == 1 and "level 0 (SGD): the learned 'momentum' left its range after step" in lines[0]
    event = json.loads((tmp_path / "summary.json").read_text())["out_of_range"]
    assert event["level"] == 0 and event["hyperparameter"] == "momentum" and event["value"] >= 1.0
    assert f"after step {event['step']} " in lines[0]


def test_a_bad_value_fails_the_run_in_one_line_and_is_recorded(tmp_path):
    result = train("+exp=mnist_sgd", "epochs=abc", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if "ERROR" in line]
    assert "bad config value epochs='abc': epochs must be a whole number ≥ 1" in line
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("bad config value epochs='abc'")


@pytest.mark.slow  # two runs of the harness (a bad value's, in the fast tier, takes the same path)
@pytest.mark.parametrize("overrides, message", [
    (["device=cuda"] if not torch.cuda.is_available() else ["device=cuda:99"], "device=cuda"),
    (["logger=wandb", "wandb.mode=online"], "API key"),
])
def test_a_failure_before_training_is_recorded(tmp_path, monkeypatch, overrides, message):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    result = train("+exp=mnist_sgd", *SMOKE, *overrides, f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and message in summary["error"], summary


@pytest.mark.slow
def test_every_table_1_row_runs_and_writes_a_complete_record(tmp_path):
    train("-m", f"+exp={','.join(TABLE_1_EXPERIMENTS)}", *SMOKE, f"hydra.sweep.dir={tmp_path}")
    records = read_records(tmp_path)
    assert sorted(r["run"]["config"]["row"] for r in records) == sorted(row.stack for row in TABLE_1)
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


@pytest.mark.slow
def test_sweep_records_diverged_and_failed_runs_tallies_them_and_the_table_shows_them(tmp_path):
    result = train("-m", "+exp=mnist_adam_sgd", "seed=0,1", *SMOKE, f"hydra.sweep.dir={tmp_path}/ok")
    assert "sweep done, 2 runs: 2 new, 0 skipped; 2 ok, 0 diverged, 0 failed" in result.stderr + result.stdout
    # κ = 1e10 saturates β at 1, the bias correction 1 - β^t becomes 0 and the next hypergradient NaN
    result = train("-m", "+exp=mnist_adam_sgd", "seed=2", 'optimizer="Adam/SGD(1e10)"', 'row="Adam/SGD(1e-5)"',
                   "epochs=2", "data.subset=2048", f"hydra.sweep.dir={tmp_path}/diverged")
    assert "1 runs: 1 new, 0 skipped; 0 ok, 1 diverged, 0 failed" in result.stderr + result.stdout  # diverging is no failure
    result = train("-m", "+exp=mnist_adam", "data.root=/nonexistent", "data.download=false", *SMOKE,
                   f"hydra.sweep.dir={tmp_path}/failed", check=False)
    assert result.returncode == 1 and "1 runs: 1 new, 0 skipped; 0 ok, 0 diverged, 1 failed" in result.stderr + result.stdout
    statuses = sorted(r["summary"]["status"] for r in read_records(tmp_path))
    assert statuses == ["diverged", "failed", "ok", "ok"]
    diverged = next(r for r in read_records(tmp_path / "diverged"))["summary"]
    assert diverged["diverged_at_step"] >= 2 and "hypergradient" in diverged["error"]
    failed = next(r for r in read_records(tmp_path / "failed"))["summary"]
    assert "MNIST is not under /nonexistent/MNIST/raw and data.download=false" in failed["error"]

    script("table1", str(tmp_path), "--out", str(tmp_path / "table"))
    table = pd.read_csv(tmp_path / "table" / "table1.csv").set_index("row")
    assert len(table) == 32
    assert table.loc["Adam/SGD(1e-5)", "status"] == "2 ok, 1 diverged"
    assert table.loc["Adam/SGD(1e-5)", "seeds"] == 2
    assert table.loc["Adam/SGD(1e-5)", "our_learned"].startswith("Adam(")
    assert table.loc["Adam", "status"] == "1 failed" and table.loc["Adam", "seeds"] == 0
    rerun = "Adam(0.0040, 0.899, 0.999)"
    assert table.loc[rerun, "status"] == "missing"
    assert table.loc[rerun, "our_learned"] == table.loc["Adam/SGD(1e-5)", "our_learned"]
    markdown = (tmp_path / "table" / "table1.md").read_text()
    assert "**Not the paper's protocol:** epochs: 1 instead of 5, 2 instead of 5; trained on the first 512 / " \
           "2048 examples only (data.subset); 1 run(s) per point instead of 3." in markdown
    assert "| missing | Adam(0.0040, 0.899, 0.999) / Adam(" in markdown and "nan" not in markdown


def test_a_script_given_no_records_says_so_in_one_line(tmp_path):
    # (every results script reads its runs through experiments.reports.records_of)
    result = script("table1", str(tmp_path), "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("no ") and f"run records in {tmp_path}" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    result = script("table1", str(tmp_path), "--wandb-dir", str(tmp_path), check=False)
    assert result.returncode == 1 and result.stderr.strip() == (
        "give one source of runs: folders of run records, --wandb ENTITY/PROJECT or --wandb-dir DIR")


@pytest.mark.slow
def test_the_same_seed_gives_the_same_numbers_and_the_log_keeps_each_epoch(tmp_path):
    for folder, progress in (("a", "true"), ("b", "false")):  # with and without the progress bar
        train("+exp=mnist_adam_sgd", "epochs=2", "data.subset=1024", f"progress={progress}",
              f"hydra.run.dir={tmp_path / folder}")
        log = (tmp_path / folder / "train.log").read_text()
        assert "epoch 1: train loss" in log and "epoch 2: train loss" in log, log
    a, b = (read_records(tmp_path / folder)[0] for folder in ("a", "b"))
    strip = [{k: v for k, v in m.items() if k not in ("epoch_seconds", "train_seconds")} for m in a["metrics"]]
    assert strip == [{k: v for k, v in m.items() if k not in ("epoch_seconds", "train_seconds")} for m in b["metrics"]]
    assert a["summary"]["hyperparameters"] == b["summary"]["hyperparameters"]


def test_a_missing_data_root_gives_one_clear_error(tmp_path):
    result = train("+exp=mnist_sgd", "data.root=/nonexistent", "data.download=false", f"hydra.run.dir={tmp_path}",
                   check=False)
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if "ERROR" in line]
    assert "MNIST is not under /nonexistent/MNIST/raw and data.download=false" in line
    assert "data.root=PATH (or the HYPEROPT_DATA_ROOT environment variable)" in line and "data.download=true" in line
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_a_failed_download_says_where_it_looked_and_what_to_set(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    from experiments.data import DataNotFound, load_mnist

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror/, got:\n"
                           "<urlopen error [Errno -2] Name or service not known>")
    monkeypatch.setattr(MNIST, "download", offline)
    with pytest.raises(DataNotFound) as error:
        load_mnist(tmp_path, download=True)
    message = str(error.value)
    assert message.startswith(f"MNIST is not under {tmp_path.resolve()}/MNIST/raw and downloading it failed "
                              "(<urlopen error [Errno -2] Name or service not known>)")
    assert "HYPEROPT_DATA_ROOT" in message and "\n" not in message


DAMAGES = {  # what was done to a real MNIST file, and what the one line says of it
    "labels full of noise": ("train-labels-idx1-ubyte", lambda data: data[:8] + bytes(range(256)) * 234 + data[:96],
                             "holds labels up to 255, not digits 0-9"),
    "images cut short": ("train-images-idx3-ubyte", lambda data: data[: len(data) // 3],
                         "is 15680005 bytes, not the 47040016 of 60000 images: it was cut short"),
    "another kind of file": ("t10k-labels-idx1-ubyte", lambda data: b"<html>" + data,
                             "is not an MNIST label file: it starts with 3c68746d, not 00000801"),
}


def test_a_subset_larger_than_the_data_is_refused_saying_how_much_there_is():
    from experiments.cifar import load_cifar10
    from experiments.data import load_mnist
    from experiments.text import load_text
    with pytest.raises(ValueError, match=r"data.subset=60001 asks for more MNIST training images than there are "
                                         r"\(60,000\); set data.subset to at most 60000, or null"):
        load_mnist(data_root(), subset=60001)
    assert len(load_mnist(data_root(), subset=60000).train_y) == 60000  # all of them, asked for, is fine
    with pytest.raises(ValueError, match=r"data.test_subset=10001 asks for more test images in .* \(10,000\)"):
        load_cifar10(data_root(), test_subset=10001)
    with pytest.raises(ValueError, match=r"data.subset=100000000 asks for more characters in .*warpeace"):
        load_text(data_root(), subset=10 ** 8)


@pytest.mark.slow  # copies MNIST, and trains on it once
def test_a_damaged_mnist_file_is_named_with_what_is_wrong(tmp_path):
    from experiments.data import DamagedData, load_mnist
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(data_root() / "MNIST" / "raw", raw)
    for name, damaged, message in DAMAGES.values():
        whole = (raw / name).read_bytes()
        (raw / name).write_bytes(damaged(whole))
        with pytest.raises(DamagedData, match=re.escape(f"{raw / name} {message}")):
            load_mnist(tmp_path)
        (raw / name).write_bytes(whole)
    name, damaged, message = DAMAGES["labels full of noise"]
    (raw / name).write_bytes(damaged((raw / name).read_bytes()))
    result = train("+exp=mnist_sgd", f"data.root={tmp_path}", "data.download=false",
                   f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if "ERROR" in line]
    assert f"{raw / name} {message}" in line


@pytest.mark.slow
def test_a_finished_run_is_never_trained_again_and_another_runs_record_never_touched(tmp_path):
    train("+exp=mnist_sgd", *SMOKE, f"hydra.run.dir={tmp_path}")
    before = {name: (tmp_path / name).read_text() for name in ("summary.json", "metrics.jsonl", "run.json")}
    again = train("+exp=mnist_sgd", *SMOKE, f"hydra.run.dir={tmp_path}")
    assert "holds this run's finished record (ok); nothing to do" in again.stdout + again.stderr
    other = train("+exp=mnist_sgd", *SMOKE, "seed=1", f"hydra.run.dir={tmp_path}", check=False)
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert "holds the record of another run (its config differs in seed); give this run its own folder: " \
           "hydra.run.dir=PATH, or hydra.sweep.dir=PATH for a sweep" in other.stdout + other.stderr
    assert {name: (tmp_path / name).read_text() for name in before} == before


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


@pytest.mark.slow
def test_wandb_offline_mirrors_the_metrics(tmp_path):
    train("+exp=mnist_adam_sgd", "epochs=2", "data.subset=512", "logger=wandb", "wandb.mode=offline",
          f"hydra.run.dir={tmp_path}")
    [run_file] = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    mirrored = read_offline_file(run_file)
    assert mirrored["name"] == "Adam/SGD(1e-5) seed=0" and mirrored["group"] == "table1/Adam/SGD(1e-5)"
    assert mirrored["config"]["optimizer"] == "Adam/SGD(1e-5)"
    record = read_records(tmp_path)[0]
    epochs = [row for row in mirrored["rows"] if "test_error" in row]  # (the others: hyperparameters' lines)
    assert [h["test_error"] for h in epochs] == [m["test_error"] for m in record["metrics"]]
    assert epochs[-1]["hyperparameters/0/lr"] == record["metrics"][-1]["hyperparameters"][0]["lr"]
    assert mirrored["summary"]["status"] == "ok"
    assert mirrored["summary"]["test_error"] == record["summary"]["test_error"]


@pytest.mark.slow
def test_sensitivity_runs_and_figure_3_is_drawn_from_records(tmp_path):
    train("-m", "+exp=mnist_sensitivity", "sensitivity.alpha=1e-3,1.0", "sensitivity.height=0,2", *SMOKE,
          f"hydra.sweep.dir={tmp_path}/stacks")
    baselines = ",".join(BASELINES)
    train("-m", "+exp=mnist_sensitivity", f"sensitivity.method={baselines}", "sensitivity.alpha=1.0", *SMOKE,
          f"hydra.sweep.dir={tmp_path}/baselines")
    records = read_records(tmp_path)
    assert len(records) == 4 + len(BASELINES)
    assert all(r["summary"]["status"] == "ok" for r in records), [r["summary"] for r in records]
    built = {r["summary"]["optimizer_initial"] for r in records}
    assert "SGD(0.001)/SGD(0.001)/SGD(0.001)" in built and "Prodigy(1.0)" in built
    prodigy = next(r for r in records if r["summary"]["optimizer_initial"] == "Prodigy(1.0)")
    assert set(prodigy["summary"]["hyperparameters"][0]) == {"lr", "d"}

    script("bench_overhead", "--heights", "0,2", "--families", "SGD", "--steps", "2", "--rounds", "1", "--out",
           str(tmp_path / "runtime.json"))
    out = tmp_path / "figure"
    script("figure3", str(tmp_path / "stacks"), str(tmp_path / "baselines"), "--runtime",
           str(tmp_path / "runtime.json"), "--out", str(out))
    table = pd.read_csv(out / "figure3.csv")
    assert len(table) == 4 + len(BASELINES) and set(table["seeds"]) == {1}
    errors = sorted(r["summary"]["test_error"] for r in records
                    if r["run"]["config"]["sensitivity"] == {"method": "SGD", "alpha": r["run"]["config"][
                        "sensitivity"]["alpha"], "height": 2, "upper": "same"})
    assert len(errors) == 2  # height 2 at two values of α: its spread row
    row = f"| 2 | 2 | {errors[0]:.2f} | {errors[1]:.2f} | {errors[1] - errors[0]:.2f} | 0 | not read off |"
    markdown = (out / "figure3.md").read_text()
    assert row in markdown and "trained on the first 512 examples only" in markdown
    assert len(pd.read_csv(out / "figure3_runtime.csv")) == 2
    for band in ("tab:green", "tab:purple", "tab:brown"):  # Prodigy, DAdaptSGD, DAdaptAdam, as bands
        assert share_in_colour(out / "figure3.png", band, alpha=0.25) > 0, band
    assert share_in_colour(out / "figure3.png", "firebrick") > 0  # the deviation note


def test_a_loop_that_diverges_leaves_the_rounds_and_says_why():
    """One configuration of a benchmark diverging (on the H200, an Adam stack on ResNet-20 at its 6th step) leaves
    the others' times; interleaved() has a median for every loop or none, and says which diverged."""
    steps = {"steady": 0, "diverging": 0}

    def counting(name, fails_at=None):
        def step(x, y):
            steps[name] += 1
            if steps[name] == fails_at:
                raise FloatingPointError(f"nan at step {fails_at}")
        return Loop(name, iter(lambda: (torch.zeros(1), torch.zeros(1)), None), step)

    loops = [counting("steady"), counting("diverging", fails_at=4)]
    times = interleaved_rounds(loops, steps=2, rounds=3, warmup=1, device=torch.device("cpu"))
    assert list(times) == ["steady"] and len(times["steady"]) == 3 and steps == {"steady": 7, "diverging": 4}
    assert loops[1].diverged == "nan at step 4" and loops[0].diverged is None
    with pytest.raises(FloatingPointError, match="diverging: nan at step 5"):
        interleaved([counting("diverging", fails_at=5)], steps=2, rounds=3, warmup=1, device=torch.device("cpu"))


def test_bench_overhead_takes_family_names_as_they_are_written():
    result = script("bench_overhead", "--model", "resnet20", "--families", "SGD(α, μ)", "Adam^α", check=False)
    assert result.returncode == 2
    assert "--families: Adam^α not timed with resnet20; its families: SGD(α, μ), Adam" in result.stderr


def test_a_report_brought_back_alone_is_published_with_its_table(tmp_path):
    report = {"benchmark": "a step", "method": "once", "machine": {"gpu": "NVIDIA H200"},
              "versions": {"torch": "2.11.0"}, "git": {"commit": "1094d184b1ee"}, "command": ["scripts/bench_step.py"],
              "results": [{"stack": "SGD/SGD", "ms": 1.5}]}
    (tmp_path / "back.json").write_text(json.dumps(report))
    script("publish_report", str(tmp_path / "back.json"), "--out", str(tmp_path / "results" / "step.json"))
    assert json.loads((tmp_path / "results" / "step.json").read_text()) == report
    markdown = (tmp_path / "results" / "step.md").read_text()
    assert "Measured on NVIDIA H200, torch 2.11.0, commit 1094d184b1" in markdown and "| SGD/SGD | 1.5 |" in markdown
    (tmp_path / "damaged.json").write_text('{"benchmark": ')
    result = script("publish_report", str(tmp_path / "damaged.json"), "--out", str(tmp_path / "x.json"), check=False)
    assert result.returncode == 1 and "damaged.json: not a benchmark's JSON report" in result.stderr
    assert not (tmp_path / "x.json").exists()


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
    with pytest.raises(ValueError, match="unknown optimizer 'Adamax'") as error:
        build_optimizer("Adamax", torch.nn.Linear(2, 2).parameters())
    assert "ScheduleFreeAdamW" in str(error.value)


@pytest.mark.slow
def test_a_run_on_the_reference_backend_writes_the_record_ours_writes(tmp_path):
    for backend in ("ours", "reference"):
        train("+exp=mnist_sgd_adam", f"backend={backend}", "epochs=2", "data.subset=2048", "log_every_steps=4",
              f"hydra.run.dir={tmp_path / backend}")
    (ours,), (reference,) = read_records(tmp_path / "ours"), read_records(tmp_path / "reference")
    assert reference["run"]["config"]["backend"] == "reference" and "reference code" in \
        reference["summary"]["optimizer_final"]
    for our_epoch, their_epoch in zip(ours["metrics"], reference["metrics"], strict=True):
        # float32, and the two codes round in different orders: agreement to float32 rounding grown over 16 steps
        assert our_epoch["train_loss"] == pytest.approx(their_epoch["train_loss"], rel=1e-5)
        assert our_epoch["test_error"] == pytest.approx(their_epoch["test_error"], abs=0.05)
        assert our_epoch["hyperparameters"][0]["lr"] == pytest.approx(their_epoch["hyperparameters"][0]["lr"], rel=1e-5)
    assert reference["summary"]["status"] == "ok"
    for record in (ours, reference):  # every level's hyperparameters every 4 of the 16 steps
        assert [point["step"] for point in record["trajectory"]] == [4, 8, 12, 16]
        assert len(record["trajectory"][-1]["hyperparameters"]) == 2
    assert ours["trajectory"][-1]["hyperparameters"][0]["lr"] == ours["metrics"][-1]["hyperparameters"][0]["lr"]


@pytest.mark.slow
def test_the_mnist_epoch_benchmark_times_the_harness_against_a_bare_loop(tmp_path):
    result = script("bench_mnist_epoch", "--epochs", "1", "--harness-epochs", "2", "--subset", "512",
                    "--no-reference", "--data-root", str(data_root()), "--out", str(tmp_path / "bench.json"))
    rows = {row["optimizer"]: row for row in json.loads((tmp_path / "bench.json").read_text())["results"]}
    harness = rows["SGD(0.01), whole epoch: harness vs bare torch loop"]
    assert harness["ours_seconds_per_epoch"] > 0 and harness["torch_optim_seconds_per_epoch"] > 0, result.stdout
    assert set(rows) == {"SGD(0.01)", "Adam/SGD(1e-5)", "SGD(0.01), whole epoch: harness vs bare torch loop"}


@pytest.mark.parametrize("spec", ["SGD(0.01)/SGD(0.01)", "Adam/SGD(1e-5)", "RMSProp/SGD(1e-4)"])
def test_the_floor_benchmarks_hand_written_step_takes_the_stacks_steps(spec):
    """scripts/bench_floor.py times each stack against its arithmetic written out by hand: that is a fair floor only
    if it computes the stack's numbers (the weights and every learned value after every step, float64)."""
    import hyperopt
    from scripts.bench_floor import STACKS, unit

    torch.manual_seed(0)
    ours_model = MLP().double()
    floor_model = MLP().double()
    floor_model.load_state_dict(ours_model.state_dict())
    ours, floor = hyperopt.stack(spec, ours_model.parameters()), STACKS[spec][1](floor_model.parameters())
    # the floor's raw values read back as the stack reads them: β and γ by (tanh + 1) / 2, RMSProp's α as (√α)²
    read_back = {"SGD": lambda raw: {"lr": raw[0]},
                 "Adam": lambda raw: {"lr": raw[0], "beta1": unit(raw[1])[0], "beta2": unit(raw[2])[0]},
                 "RMSProp": lambda raw: {"lr": raw[0] ** 2, "gamma": unit(raw[1])[0]}}[spec.split("/")[0].split("(")[0]]
    first = ours.hyperparameters()[0]
    for _ in range(6):
        x, y = torch.randn(32, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (32,))
        for model, optimizer in ((ours_model, ours), (floor_model, floor)):
            optimizer.zero_grad()
            torch.nn.functional.nll_loss(model(x), y).backward()
            optimizer.step()
        learned = ours.hyperparameters()[0]
        expected = read_back(floor.raw[0].tolist())
        assert {name: learned[name] for name in expected} == pytest.approx(expected, rel=1e-12)
        for a, b in zip(ours_model.parameters(), floor_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    assert all(learned[name] != first[name] for name in expected)  # (each moved: the hypergradient was taken)


@pytest.mark.slow
def test_the_floor_benchmark_reports_each_configuration_against_torch_optim(tmp_path):
    from scripts.bench_floor import STACKS

    script("bench_floor", "--steps", "1", "--rounds", "2", "--out", str(tmp_path / "floor.json"))
    rows = {(row["stack"], row["configuration"]): row
            for row in json.loads((tmp_path / "floor.json").read_text())["results"]}
    assert set(rows) == {(spec, name) for spec in STACKS for name in ("torch.optim", "ours", "floor")}
    assert all(rows[spec, "torch.optim"]["vs_torch_optim"] == 1.0 for spec in STACKS)
    assert all(row["ms"] > 0 and row["vs_torch_optim"] > 0 for row in rows.values())
    assert all("step_in_context_ms" in row for row in rows.values())
    assert (tmp_path / "floor.md").exists()


def test_the_instruction_count_splits_the_interpreters_share_from_a_cachegrind_file(tmp_path):
    from scripts.bench_instructions import counted

    out = tmp_path / "cachegrind.out"
    out.write_text("events: Ir\nfl=/build/Python-3.11.7/Python/ceval.c\nfn=_PyEval_EvalFrameDefault\n10 700\n11 50\n"
                   "fl=???\nfn=at::native::add_kernel\n0 200\nfl=/build/Python-3.11.7/Objects/dictobject.c\n"
                   "fn=_Py_dict_lookup\n5 30\nsummary: 980\n")
    assert counted(out) == (980, 780)
    out.write_text("events: Ir\nfl=???\nfn=f\n0 200\nsummary: 200\n")  # (a Python built without debug information)
    assert counted(out) == (200, None)
    out.write_text("events: Ir\nfl=???\nfn=f\n0 200\n")
    with pytest.raises(ValueError, match="no summary line"):
        counted(out)


def test_each_configuration_of_the_instruction_count_steps():
    """What runs under valgrind: each configuration's child (valgrind itself is not needed for it)."""
    from scripts.bench_instructions import CONFIGURATIONS, WHOLE, child

    for name in CONFIGURATIONS:
        child(name, 2)
    for name in WHOLE:  # (--whole: forward, backward and step, the reference code's too)
        child(name, 2, whole=True)


def overhead_run(folder, name: str, commit: str, ours: float, reference: float, dirty: bool = False) -> None:
    """A bench_overhead.py report of one stack, as the benchmark writes it."""
    report = {"benchmark": "per-step time", "git": {"commit": commit, "dirty": dirty}, "machine": {"cpu_count": 2},
              "results": [{"stack": "SGD/SGD", "ours_vs_torch_optim": ours, "reference_vs_torch_optim": reference}]}
    (folder / f"{name}.json").write_text(json.dumps(report))


def test_runs_of_two_commits_are_compared_against_the_reference_measured_with_each(tmp_path):
    from scripts.compare_overhead_runs import compared, read_runs

    for index, (ours, reference) in enumerate([(1.20, 1.10), (1.30, 1.20), (1.40, 1.10)]):
        overhead_run(tmp_path, f"before{index}", "aaaaaaa" + "0" * 33, ours, reference)
    for index, (ours, reference) in enumerate([(1.05, 1.15), (1.25, 1.20)]):
        overhead_run(tmp_path, f"after{index}", "bbbbbbb" + "0" * 33, ours, reference)
    (tmp_path / "notes.json").write_text(json.dumps({"not": "a run"}))  # (skipped: not a benchmark's report)
    row, = compared(read_runs(tmp_path, ["aaaaaaa", "bbbbbbb"]))
    assert row["ours at aaaaaaa"] == "1.20-1.40" and row["ours at bbbbbbb"] == "1.05-1.25"
    assert row["reference"] == "1.10-1.20"
    assert row["behind at aaaaaaa"] == pytest.approx(0.10) and row["behind at bbbbbbb"] == pytest.approx(-0.025)


def test_comparing_runs_refuses_a_dirty_run_and_a_commit_without_runs(tmp_path):
    from scripts.compare_overhead_runs import read_runs

    overhead_run(tmp_path, "run", "aaaaaaa" + "0" * 33, 1.2, 1.1)
    with pytest.raises(SystemExit, match="no bench_overhead.py run of commit bbbbbbb"):
        read_runs(tmp_path, ["aaaaaaa", "bbbbbbb"])
    overhead_run(tmp_path, "dirty", "bbbbbbb" + "0" * 33, 1.2, 1.1, dirty=True)
    with pytest.raises(SystemExit, match="uncommitted changes"):
        read_runs(tmp_path, ["aaaaaaa", "bbbbbbb"])
    (tmp_path / "damaged.json").write_text("{")
    with pytest.raises(SystemExit, match="damaged.json is not JSON"):
        read_runs(tmp_path, ["aaaaaaa"])


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_trains_and_resumes_from_its_state_dict_exactly(name):
    """Each learning-rate-free optimizer through the harness's own step (MoMo's takes the loss), saved after 3
    steps as a checkpoint saves it and loaded into a fresh one: both take the same 3 more steps (MoMo's step count
    and loss average, which it keeps outside its state dict, and Mechanic's state, which it keys by the parameters
    themselves, included)."""
    torch.manual_seed(0)
    batches = [(torch.randn(16, 1, 28, 28), torch.randint(10, (16,))) for _ in range(6)]

    def trained(model, optimizer, steps):
        for x, y in steps:
            train_step(model, optimizer, x, y)
        return model

    first = MLP()
    optimizer = build_optimizer(name, first.parameters())
    trained(first, optimizer, batches[:3])
    buffer = io.BytesIO()  # as a checkpoint holds it: tensors and plain values only
    torch.save((first.state_dict(), optimizer.state_dict()), buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    second = MLP()
    second.load_state_dict(saved[0])
    resumed = build_optimizer(name, second.parameters())
    resumed.load_state_dict(saved[1])
    trained(first, optimizer, batches[3:])
    trained(second, resumed, batches[3:])
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b), name
