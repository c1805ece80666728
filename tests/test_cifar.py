"""Figure 2's pieces: ResNet-20, the CIFAR-10 readers of both releases, the on-device augmentation, weight decay
and per-hyperparameter step sizes in the hyperoptimizer, bf16 autocast, and the experiments end to end."""

import copy
import hashlib
import json
import os
import pickle
import shutil

import numpy
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import hyperopt
from experiments.cifar import BINARY, PICKLE, crop_and_flip, load_cifar10, md5_mismatches, read_binary
from experiments.optimizers import build_optimizer
from experiments.paper import FIGURE_2
from experiments.records import read_records
from experiments.schedules import Schedule
from experiments.step import train_step
from models import MLP, resnet20
from tests.library.closeness import assert_relative_close
from tests.conftest import data_root
from tests.harness import compose_experiment, script, train
from tests.pictures import share_in_colour


@pytest.fixture(scope="module")
def cifar():
    return load_cifar10(data_root())


def test_resnet20_is_he_et_al_s_with_parameter_free_shortcuts():
    model = resnet20()
    assert sum(p.numel() for p in model.parameters()) == 269_722  # He et al.: 0.27 M
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == 19 and len([m for m in model.modules() if isinstance(m, torch.nn.Linear)]) == 1
    assert [c.out_channels for c in convolutions] == [16] * 7 + [32] * 6 + [64] * 6
    output = model(torch.randn(3, 3, 32, 32))
    assert output.shape == (3, 10)
    assert torch.allclose(output.exp().sum(1), torch.ones(3))


@pytest.mark.slow
def test_the_binary_release_is_read_as_published(cifar):
    folder = data_root() / BINARY
    assert md5_mismatches(folder, ["data_batch_1.bin", "test_batch.bin"]) == []
    sums = dict(reversed(line.split()) for line in (folder / "MD5SUMS").read_text().splitlines())
    assert hashlib.md5((folder / "test_batch.bin").read_bytes()).hexdigest() == sums["test_batch.bin"]
    batches = sorted(folder.glob("data_batch_*.bin"))
    assert cifar.train_x.shape == (10_000 * len(batches), 3, 32, 32) and cifar.train_x.dtype == torch.uint8
    assert cifar.test_x.shape == (10_000, 3, 32, 32)
    # The first labels of the official batches, and the test set's 1,000 images per class.
    assert cifar.train_y[:5].tolist() == [6, 9, 9, 4, 1]
    assert cifar.test_y[:5].tolist() == [3, 8, 8, 0, 6]
    assert torch.bincount(cifar.test_y).tolist() == [1000] * 10
    # The pixels: byte 1 of the file is the red value of the first image's top-left pixel.
    first = numpy.fromfile(folder / "data_batch_1.bin", dtype=numpy.uint8, count=1 + 3 * 1024)
    assert cifar.train_x[0, 0, 0, 0] == first[1] and cifar.train_x[0, 2, 31, 31] == first[-1]


@pytest.mark.slow
def test_the_python_release_reads_the_same_images(tmp_path):
    images, labels = read_binary(data_root() / BINARY / "data_batch_1.bin")
    folder = tmp_path / PICKLE
    folder.mkdir()
    for name, part in (("data_batch_1", slice(0, 20)), ("data_batch_3", slice(20, 30)), ("test_batch", slice(30, 40))):
        with open(folder / name, "wb") as file:  # the python release's layout: rows of 3,072 bytes, R G B planes
            pickle.dump({b"data": images[part].reshape(-1, 3072), b"labels": labels[part].tolist()}, file)
    data = load_cifar10(tmp_path)
    assert torch.equal(data.train_x, torch.from_numpy(images[:30]))
    assert torch.equal(data.train_y, torch.from_numpy(labels[:30]))
    assert torch.equal(data.test_x, torch.from_numpy(images[30:40]))


def test_a_python_batch_that_would_run_code_is_refused_and_its_code_never_runs(tmp_path):
    class Planted:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'it ran'}",)
    folder = tmp_path / PICKLE
    folder.mkdir()
    for name in ("data_batch_1", "test_batch"):
        with open(folder / name, "wb") as file:
            pickle.dump({b"data": Planted(), b"labels": []}, file)
    with pytest.raises(ValueError, match=r"data_batch_1 is not a CIFAR-10 python batch and was not loaded: it "
                                         r"would call (posix|os)\.system"):
        load_cifar10(tmp_path)
    assert not (tmp_path / "it ran").exists()


@pytest.mark.slow
def test_missing_or_damaged_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"CIFAR-10 is not under {tmp_path.resolve()} and "
                                                "data.download=false. Point data.root=PATH"):
        load_cifar10(tmp_path)
    folder = tmp_path / BINARY
    folder.mkdir()
    shutil.copy(data_root() / BINARY / "test_batch.bin", folder)
    with pytest.raises(FileNotFoundError, match="no training batch"):
        load_cifar10(tmp_path)
    (folder / "data_batch_2.bin").write_bytes((data_root() / BINARY / "test_batch.bin").read_bytes()[:3073 * 5])
    (folder / "MD5SUMS").write_text("0" * 32 + "  data_batch_2.bin\n")
    with pytest.raises(ValueError, match="data_batch_2.bin .* differ from the md5 sums"):
        load_cifar10(tmp_path)
    (folder / "MD5SUMS").unlink()
    assert len(load_cifar10(tmp_path).train_y) == 5  # the batches it finds


def test_crop_and_flip_move_pixels_as_stated():
    images = torch.arange(2 * 3 * 32 * 32).reshape(2, 3, 32, 32).to(torch.uint8)
    centre = torch.full((2, 2), 4)
    assert torch.equal(crop_and_flip(images, centre, torch.tensor([False, False])), images)
    assert torch.equal(crop_and_flip(images, centre, torch.tensor([True, False]))[0], images[0].flip(-1))
    corner = crop_and_flip(images, torch.tensor([[0, 0], [8, 8]]), torch.tensor([False, False]))
    assert (corner[0, :, :4, :] == 0).all() and torch.equal(corner[0, :, 4:, 4:], images[0, :, :28, :28])
    assert torch.equal(corner[1, :, :28, :28], images[1, :, 4:, 4:]) and (corner[1, :, 28:, :] == 0).all()


@pytest.mark.slow
def test_augmented_batches_are_normalised_and_seeded(cifar):
    def first_batches(seed):
        generator = torch.Generator().manual_seed(seed)
        return [b for _, b in zip(range(2), cifar.batches(128, generator))]
    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert a[0][0].shape == (128, 3, 32, 32) and a[0][0].dtype == torch.float32
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    test_x = torch.cat([x for x, _ in cifar.test_batches(5000)])
    assert test_x.mean((0, 2, 3)).abs().max() < 0.1 and (test_x.std((0, 2, 3)) - 1).abs().max() < 0.1


def test_weight_decay_is_torch_s_at_height_0():
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 5).double()
    theirs = copy.deepcopy(model)
    ours = hyperopt.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    reference = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for step in range(10):
        x = torch.randn(16, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        for m, opt in ((model, ours), (theirs, reference)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(model.parameters(), theirs.parameters()):
        assert_relative_close(p, q, 1e-12)


def test_a_step_size_per_hyperparameter_scales_each_hypergradient(synthetic_batches):
    """The level above steps α by -κ_α·∂L/∂α and μ by -κ_μ·∂L/∂μ; with κ_α = κ_μ it is SGD(κ)."""
    torch.manual_seed(0)
    model = MLP().double()
    uniform = copy.deepcopy(model)
    optimizer = hyperopt.stack("SGD(0.1, 0.9)/SGD({α: 1e-3, μ: 1e-5})", model.parameters())
    same = hyperopt.stack("SGD(0.1, 0.9)/SGD({α: 1e-3, μ: 1e-3})", uniform.parameters())
    reference = hyperopt.stack("SGD(0.1, 0.9)/SGD(1e-3)", copy.deepcopy(uniform).parameters())
    raw = optimizer.param_groups[0]["hyper_raw"]
    for x, y in synthetic_batches[:4]:
        before = raw.clone()
        F.nll_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        assert torch.equal(raw, before - torch.tensor([1e-3, 1e-5], dtype=torch.float64) * raw.grad)
    assert bool((raw != torch.tensor([0.1, 0.9], dtype=torch.float64)).all())  # both have moved
    assert optimizer.hyperparameters()[1]["lr"] == pytest.approx({"lr": 1e-3, "momentum": 1e-5})
    reference_model = reference.param_groups[0]["params"]
    for x, y in synthetic_batches[:4]:
        train_step(uniform, same, x, y)
        loss = F.nll_loss(torch.func.functional_call(uniform, dict(zip(
            [n for n, _ in uniform.named_parameters()], reference_model)), (x,)), y)
        reference.zero_grad()
        loss.backward()
        reference.step()
    assert same.hyperparameters()[0] == reference.hyperparameters()[0]


def test_under_bf16_autocast_hyperparameters_and_hypergradients_stay_float32():
    torch.manual_seed(0)
    model = resnet20()
    optimizer = hyperopt.stack("SGD(0.1, 0.9, 1e-4)/SGD({α: 1e-5, μ: 1e-5})", model.parameters())
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(3):  # μ's first non-zero hypergradient is at step 3 (the buffer it scales starts at step 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.nll_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    raw = optimizer.param_groups[0]["hyper_raw"]
    assert raw.dtype == raw.grad.dtype == torch.float32 and bool(raw.grad.ne(0).all())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_he2015s_step_schedule_divides_the_step_size_by_ten_at_its_milestones():
    model = torch.nn.Linear(2, 2)
    optimizer = hyperopt.stack("SGD(0.1, 0.9, 1e-4)", model.parameters())
    schedule = Schedule(OmegaConf.to_container(compose_experiment("cifar_he2015").schedule), 10, 200,
                        optimizer.param_groups)
    assert schedule.milestones == [82, 123]
    assert [schedule.factor(step) for step in (820, 821, 1230, 1231)] == [1.0, 0.1, 0.1, 0.1 ** 2]


def test_figure2_configs_build_the_grid_with_its_step_sizes():
    def built(name, overrides=()):
        from omegaconf import OmegaConf
        config = compose_experiment(name, overrides)
        assert config.batch_size == 128 and config.epochs == 200 and config.model.name == "resnet20"
        parameters = MLP().double().parameters()  # float64, so that the step sizes are held as given
        return build_optimizer(OmegaConf.to_container(config.optimizer, resolve=True), parameters), config
    fixed, _ = built("cifar_resnet20", ["cifar.hyper=false", "cifar.alpha=1.0", "cifar.momentum=0.99"])
    assert str(fixed) == "SGD(1.0, 0.99, 0.0001)" and fixed.hyper is None
    hyper, _ = built("cifar_resnet20", ["cifar.alpha=1.0", "cifar.momentum=0.99"])
    # κ_α = α²·1e-3 and κ_μ = 1e-6/(1-μ), exactly, with nothing rounded on the way
    assert hyper.hyperparameters()[1]["lr"] == {"lr": 1.0 ** 2 * 1e-3, "momentum": 1e-6 / (1.0 - 0.99)}
    assert hyper.param_groups[0]["learn"] == ("lr", "momentum")
    he, config = built("cifar_he2015")
    assert str(he) == "SGD(0.1, 0.9, 0.0001)" and he.hyper is None and config.schedule.gamma == 0.1


@pytest.fixture(scope="module")
def figure2_records(tmp_path_factory):
    """Every Figure 2 config, a few steps on the real CIFAR-10 subset: 128 training and 200 test images."""
    root = tmp_path_factory.mktemp("figure2")
    small = ["data.subset=128", "data.test_subset=200", "batch_size=64"]
    train("-m", "+exp=cifar_resnet20", "cifar.hyper=true,false", "cifar.alpha=0.1,1.0", "cifar.momentum=0.9",
          "epochs=2", *small, f"hydra.sweep.dir={root}/grid")
    # With batch norm a huge step can leave the loss finite (3e17 at α = 1e4); at 1e30 it is not.
    train("+exp=cifar_resnet20", "cifar.hyper=false", "cifar.alpha=1e30", "epochs=2", *small,
          f"hydra.run.dir={root}/diverging")
    train("+exp=cifar_he2015", "epochs=3", *small, f"hydra.run.dir={root}/he2015")
    train("+exp=cifar_resnet20", "epochs=1", "precision=bf16", "channels_last=true", *small,
          f"hydra.run.dir={root}/bf16")
    return root


@pytest.mark.slow
def test_each_figure2_config_trains_and_writes_a_complete_record(figure2_records):
    records = read_records(figure2_records, experiment="figure2")
    assert len(records) == 7
    diverging = [r for r in records if r["run"]["config"]["cifar"]["alpha"] == 1e30]
    assert [r["summary"]["status"] for r in diverging] == ["diverged"]
    for record in records:
        if record in diverging:
            continue
        summary = record["summary"]
        assert summary["status"] == "ok", summary
        assert summary["data"] == "128 training examples" and 0 <= summary["test_error"] <= 100
        assert len(record["metrics"]) == summary["epochs_completed"] and record["run"]["git"]["commit"]
    he = next(r for r in records if r["run"]["config"]["row"] == "He et al. 2015")
    assert [m["hyperparameters"][0]["lr"] for m in he["metrics"]] == pytest.approx([0.1, 0.01, 0.001])
    hyper = [r for r in records if r["run"]["config"]["cifar"].get("hyper")]
    assert all(r["summary"]["hyperparameters"][0]["lr"] != r["run"]["config"]["cifar"]["alpha"] for r in hyper)


@pytest.mark.slow
def test_figure2_script_draws_from_records(figure2_records, tmp_path):
    script("figure2", str(figure2_records), "--out", str(tmp_path), "--export-records", str(tmp_path / "runs"))
    rows = pd.read_csv(tmp_path / "figure2.csv")
    assert (rows[rows["alpha"] == 1e30]["ok"] == 0).all() and rows["test_error"].notna().sum() == 5
    he = rows[rows["method"] == "He et al. 2015"].iloc[0]
    assert float(he["paper_test_error"]) == FIGURE_2[("He et al. 2015", 0.1, 0.9)]
    records = read_records(figure2_records, experiment="figure2")
    cell = [r["summary"]["test_error"] for r in records if r["run"]["config"]["row"] == "α=0.1 μ=0.9 hyper=True"]
    assert len(cell) == 2  # fp32 and bf16
    assert rows[(rows["method"] == "SGD(α, μ)/SGD") & (rows["alpha"] == 0.1)]["test_error"].tolist() == \
        pytest.approx([sum(cell) / len(cell)])
    markdown = (tmp_path / "figure2.md").read_text()
    assert markdown.startswith("**Not the paper's protocol:** epochs: 1 instead of 200, 2 instead of 200, 3 instead "
                               "of 200; trained on the first 128 examples only (data.subset); evaluated on part")
    assert len(list((tmp_path / "runs").glob("*/seed0*/summary.json"))) == 7  # the bf16 run beside its fp32 twin
    png = tmp_path / "figure2.png"
    for colour in ("tab:blue", "tab:orange", "0.45", "firebrick"):  # fixed, hyperoptimized, He et al., the note
        assert share_in_colour(png, colour, tolerance=0.05) > 0, colour


@pytest.mark.slow
def test_cifar_benchmark_runs_on_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    script("bench_cifar", "--steps", "1", "--rounds", "1", "--warmup", "1", "--workers", "0", "--out", str(out))
    report = json.loads(out.read_text())
    assert len(report["results"]) == 5 and all(row["seconds_per_epoch"] > 0 for row in report["results"])
