"""Many runs as one: a batched network with a stack of runs (runs=N) trains every run exactly as it trains alone,
in float64, for the MLP, ResNet-20 and the char-LSTM; a run that diverges is frozen while the others go on."""

import copy

import pytest
import torch
import torch.nn.functional as F

import hyperopt
from experiments.schedules import Schedule
from models import CharRNN, MLP, batch_models, resnet20
from tests.library.closeness import assert_relative_close

STEPS = 100
RELATIVE = 1e-9
STACKS = {  # per run: the weights' optimizer and the step sizes of the SGD levels above it; the same structure
    "SGD-momentum/SGD": [("SGD(0.05, 0.9)", [1e-3]), ("SGD(0.02, 0.5)", [1e-3]), ("SGD(0.1, 0.7)", [1e-4])],
    "Adam/SGD": [("Adam(1e-3)", [1e-5]), ("Adam(3e-3, 0.8, 0.99)", [1e-5]), ("Adam(5e-4)", [1e-4])],
    "height 3": [("SGD(0.05)", [1e-3, 1e-3, 1e-3]), ("SGD(0.02)", [1e-2, 1e-3, 1e-4]),
                 ("SGD(0.1)", [1e-3, 1e-4, 1e-2])],
}


def notation(weights: str, kappas: list[float], scale: float) -> str:
    """The stack with level k's step size multiplied by scale**k."""
    return "/".join([weights] + [f"SGD({kappa * scale ** level:g})" for level, kappa in enumerate(kappas, 1)])


SEEDS = [0, 1, 2]


def images(shape, classes, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=generator, dtype=torch.float64),
             torch.randint(classes, shape[:1], generator=generator)) for _ in range(steps)]


def text(batch, length, vocabulary, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    return [(x[:, :-1], x[:, 1:]) for x in (torch.randint(vocabulary, (batch, length + 1), generator=generator)
                                            for _ in range(steps))]


# (model, data of a seed, scale of the step sizes above the weights). ResNet-20's hypergradients sum over 270,000
# weights, and each level multiplies in another such sum: at the MLP's step sizes its α swings twentyfold within two
# steps, a chaotic training that amplifies the last-bit differences of a grouped convolution's summation order
# (1e-16 after one step) to 1e-9 within twenty, and its height-3 towers overflow within five steps. Level k's step
# size 10^-4k times the MLP's keeps the training smooth, so that the comparison tests the batching, not the chaos.
ARCHITECTURES = {
    "mlp": (lambda: MLP(inputs=20, hidden=16), lambda seed: images((8, 20), 10, STEPS, seed), 1),
    "resnet20": (lambda: resnet20(), lambda seed: images((4, 3, 8, 8), 10, STEPS, seed), 1e-4),
    "char_rnn": (lambda: CharRNN(11, embedding=6, hidden=8, layers=2), lambda seed: text(3, 5, 11, STEPS, seed), 1),
}


def loss_of(log_probabilities, y):
    return F.nll_loss(log_probabilities.flatten(0, -2), y.flatten())


def forward(model, x):
    output = model(x)
    return output[0] if isinstance(output, tuple) else output


def lone_run(model, spec, batches, schedule=None):
    optimizer = hyperopt.stack(spec, model.parameters())
    schedule = schedule and Schedule(schedule, len(batches), 1, optimizer.param_groups)
    losses, values = [], []
    for step, (x, y) in enumerate(batches):
        if schedule:
            schedule.apply(step + 1)
        loss = loss_of(forward(model, x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        values.append(optimizer.hyperparameters())
    return losses, values


def seeded(build) -> list:
    """A model per run, each made under its own seed."""
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(build())
    return models


def batched_run(models, specs, batches, steps, schedule=None):
    """Train copies of `models` as one network with a stack of runs, each run on its own batches: (the network, its
    optimizer, each step's losses per run, each step's hyperparameters per run)."""
    network = batch_models([copy.deepcopy(model) for model in models])
    optimizer = hyperopt.stack(specs, network.parameters())
    schedule = schedule and Schedule(schedule, steps, 1, optimizer.param_groups)
    losses, values = [], []
    for step in range(steps):
        if schedule:
            schedule.apply(step + 1)
        x = torch.stack([run_batches[step][0] for run_batches in batches])
        y = torch.stack([run_batches[step][1] for run_batches in batches])
        per_run = torch.stack([loss_of(output, target) for output, target in zip(forward(network, x), y)])
        optimizer.zero_grad()
        per_run.sum().backward()
        optimizer.step()
        losses.append(per_run.tolist())
        values.append([optimizer.hyperparameters(run=run) for run in range(len(models))])
    return network, optimizer, losses, values


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("architecture", [pytest.param(name, marks=pytest.mark.slow) if name == "resnet20" else name
                                          for name in ARCHITECTURES])  # ResNet-20: ten seconds a stack
def test_every_run_of_a_batch_learns_what_it_learns_alone(architecture, stack):
    build, data, scale = ARCHITECTURES[architecture]
    specs = [notation(weights, kappas, scale) for weights, kappas in STACKS[stack]]
    models = seeded(build)
    batches = [data(seed) for seed in SEEDS]  # each run its own data order
    batched, optimizer, batched_losses, batched_values = batched_run(models, specs, batches, STEPS)
    assert optimizer.diverged() == []
    for run, (model, spec, run_batches) in enumerate(zip(models, specs, batches)):
        losses, values = lone_run(model, spec, run_batches)
        assert_relative_close(torch.tensor([step[run] for step in batched_losses]), torch.tensor(losses), RELATIVE,
                              f"run {run} losses")
        for name, weight in model.state_dict().items():
            assert_relative_close(batched.run_state_dict(run)[name], weight, RELATIVE, f"run {run} {name}")
        for step in (0, STEPS // 2, STEPS - 1):
            for level, (ours, alone) in enumerate(zip(batched_values[step][run], values[step])):
                for name, value in alone.items():
                    assert_relative_close(torch.tensor(ours[name]), torch.tensor(value), RELATIVE,
                                          f"run {run} level {level} {name} at step {step}")
        assert values[-1][0]["lr"] != values[0][0]["lr"]  # it learned: the comparison means something


def test_a_schedule_shapes_each_runs_learned_step_size_as_it_does_alone():
    build, data, scale = ARCHITECTURES["mlp"]
    schedule = {"name": "warmup_cosine", "warmup": 0.25, "final": 0.1}
    specs = [notation(weights, kappas, scale) for weights, kappas in STACKS["SGD-momentum/SGD"]]
    models = seeded(build)
    batches = [data(seed) for seed in SEEDS]
    batched, optimizer, batched_losses, _ = batched_run(models, specs, batches, STEPS, schedule)
    for run, (model, spec, run_batches) in enumerate(zip(models, specs, batches)):
        losses, _ = lone_run(model, spec, run_batches[:STEPS], schedule)
        assert_relative_close(torch.tensor([step[run] for step in batched_losses]), torch.tensor(losses), RELATIVE,
                              f"run {run} losses")
        for name, weight in model.state_dict().items():
            assert_relative_close(batched.run_state_dict(run)[name], weight, RELATIVE, f"run {run} {name}")


def test_a_diverging_run_is_frozen_and_reported_while_the_others_go_on():
    specs = ["SGD(0.05, 0.8)/SGD(1e-3)", "SGD(0.05, 0.9)/SGD(1e-3)", "SGD(0.02, 0.5)/SGD(1e-3)"]
    data = [images((8, 20), 10, 30, seed) for seed in SEEDS]
    data[1][9][0][0, 0] = float("nan")  # run 1's tenth batch is corrupt: its hypergradient is NaN at step 10
    models = seeded(lambda: MLP(inputs=20, hidden=16))
    batched, optimizer, _, _ = batched_run(models, specs, data, 30)
    assert optimizer.diverged() == [{"run": 1, "step": 10, "level": 0, "optimizer": "SGD", "hyperparameter": "lr"}]
    with pytest.raises(hyperopt.DivergenceError) as alone:
        lone_run(copy.deepcopy(models[1]), specs[1], data[1])
    assert (alone.value.step, alone.value.level, alone.value.hyperparameter) == (10, 0, "lr")
    frozen = copy.deepcopy(models[1])  # run 1 stopped where it stood before step 10
    lone_run(frozen, specs[1], data[1][:9])
    for name, weight in frozen.state_dict().items():
        assert_relative_close(batched.run_state_dict(1)[name], weight, RELATIVE, f"run 1 {name}")
    for run in (0, 2):
        lone_run(models[run], specs[run], data[run])
        for name, weight in models[run].state_dict().items():
            assert_relative_close(batched.run_state_dict(run)[name], weight, RELATIVE, f"run {run} {name}")


def test_runs_may_each_have_their_own_step_size_per_hyperparameter():
    """Figure 2's grid: each cell's κ_α and κ_μ follow from its α and μ, so the level above has a value per
    hyperparameter below and per run."""
    build, data, _ = ARCHITECTURES["mlp"]
    specs = ["SGD(0.05, 0.9)/SGD({α: 1e-3, μ: 1e-4})", "SGD(0.02, 0.5)/SGD({α: 1e-2, μ: 1e-5})",
             "SGD(0.1, 0.7)/SGD({α: 1e-3, μ: 1e-4})"]
    models = seeded(build)
    batches = [data(seed)[:30] for seed in SEEDS]
    batched, optimizer, _, _ = batched_run(models, specs, batches, 30)
    assert optimizer.hyperparameters(run=1)[1]["lr"] == {"lr": pytest.approx(1e-2), "momentum": pytest.approx(1e-5)}
    for run, (model, spec, run_batches) in enumerate(zip(models, specs, batches)):
        _, values = lone_run(model, spec, run_batches)
        for name, weight in model.state_dict().items():
            assert_relative_close(batched.run_state_dict(run)[name], weight, RELATIVE, f"run {run} {name}")
        for name in ("lr", "momentum"):
            assert_relative_close(torch.tensor(optimizer.hyperparameters(run=run)[0][name]),
                                  torch.tensor(values[-1][0][name]), RELATIVE, f"run {run} {name}")
