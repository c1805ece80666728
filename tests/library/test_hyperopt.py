"""The library's behaviour beyond reference equality: torch.optim parity, closed forms, notation, resuming,
divergence, param groups, torch.compile."""

import copy
import io
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import hyperopt
from experiments.paper import TABLE_1_STACKS
from experiments.step import train_step
from hyperopt.hypergradient import hypergradient
from models import MLP, batch_models
from tests.library.closeness import assert_relative_close
from tests.library.oracles import autograd_hypergradient, snapshot


def train(model, optimizer, batches):
    return [train_step(model, optimizer, x, y).item() for x, y in batches]


@pytest.fixture
def batches(synthetic_batches):
    return [(x.float(), y) for x, y in synthetic_batches[:20]]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_height_zero_sgd_equals_torch_sgd(momentum, dtype, batches):
    torch.manual_seed(0)
    model = MLP().to(dtype)
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    data = [(x.to(dtype), y) for x, y in batches]
    train(ours, hyperopt.SGD(ours.parameters(), lr=0.1, momentum=momentum), data)
    train(theirs, torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=momentum, foreach=False), data)
    # torch.optim.SGD adds -lr·g with alpha=-lr; with several tensors we multiply by lr as a one-element tensor
    # (addcmul), whose kernel rounds in its own order. So the two agree to rounding, not to the bit.
    eps = torch.finfo(dtype).eps
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=50 * eps, atol=50 * eps * float(b.detach().abs().max()))


def test_sgd_over_sgd_is_baydins_hypergradient_descent(batches):
    torch.manual_seed(0)
    model = MLP().double()
    kappa = 0.01
    optimizer = hyperopt.stack(f"SGD(0.01)/SGD({kappa})", model.parameters())
    alpha, previous_grad = 0.01, None
    for x, y in batches:
        loss = F.nll_loss(model(x.double()), y)
        optimizer.zero_grad()
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        if previous_grad is not None:
            alpha = alpha + kappa * float(grad @ previous_grad)
        optimizer.step()
        previous_grad = grad
        assert optimizer.hyperparameters()[0]["lr"] == pytest.approx(alpha, rel=1e-12)
    assert alpha > 0.0101  # it learned something


@pytest.mark.parametrize("spec", ["SGD^{α,μ}(0.1, 0.0)/SGD", "SGD(0.1, 0.5)/SGD", "Adam/SGD(1e-5)", "Adam^α/SGD(1e-5)",
                                  "Adam^{β1}/SGD(1e-5)", "Adam^{β2}/SGD(1e-5)", "AdaGrad/SGD", "RMSProp/SGD(1e-4)",
                                  "RMSProp^α/SGD(1e-4)", "RMSProp^γ/SGD(1e-4)", "AdamW(0.01, wd=0.1)/SGD(1e-4)",
                                  "AdamW^{α,λ}(0.01, wd=0.1)/SGD(1e-4)", "SGD(0.1, 0.9, nesterov=1)/SGD(1e-3)"])
@pytest.mark.parametrize("runs", [None, 2])
def test_the_hypergradient_equals_autograd_through_the_update(spec, runs, batches):
    """Each optimizer's hypergradient, from dot products of its state and never its Jacobian's columns, equals the
    Jacobian of its own update by autograd dotted with the new gradient, at every step (alone and per run)."""
    torch.manual_seed(0)
    model = MLP().double() if runs is None else batch_models([MLP().double() for _ in range(runs)])
    optimizer = hyperopt.stack(spec if runs is None else [spec] * runs, model.parameters())
    group = optimizer.param_groups[0]
    before = None
    for step, (x, y) in enumerate(batches[:6]):
        x = x.double() if runs is None else x.double().expand(runs, *x.shape)
        optimizer.zero_grad()
        F.nll_loss(model(x).reshape(-1, 10), y.repeat(1 if runs is None else runs)).backward()
        if before is not None:
            upstream = [p.grad for p in group["params"]]
            ours, _ = hypergradient(optimizer, group, upstream, optimizer.state[group["params"][0]]["step"],
                                    host=False)
            oracle = autograd_hypergradient(optimizer, group, before, upstream)
            torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-14, msg=f"step {step}")
            assert bool((ours != 0).all()) or step == 1  # μ's hypergradient is 0 at the second step only
        before = snapshot(optimizer, group)
        optimizer.step()


def test_learning_momentum_from_zero_is_an_explicit_option(batches):
    torch.manual_seed(0)
    model = MLP()
    default = hyperopt.stack("SGD(0.1)/SGD(0.01)", copy.deepcopy(model).parameters())
    assert default.param_groups[0]["learn"] == ("lr",)
    learning = hyperopt.SGD(model.parameters(), lr=0.1, learn=("lr", "momentum"), hyper=hyperopt.SGD(lr=0.01))
    train(model, learning, batches)
    assert learning.hyperparameters()[0]["momentum"] != 0.0
    assert learning.param_groups[0]["learn"] == ("lr", "momentum")


NOTATION = ["SGD", "SGD(0.01)", "SGD/SGD", "SGD/Adam(0.1)", "Adam/SGD(1e-5)", "Adam^α/SGD(1e-5)",
            "Adam^alpha/SGD(1e-5)", "RMSProp^{α,γ}/RMSProp(1e-4)", "Adam(0.0040, 0.899, 0.999)",
            "SGD(lr=0.1, momentum=0.9)/SGD(1e-3)", "sgd/ADAM/adagrad/rmsprop/Sgd", "RMSProp^{alpha,gamma}/SGD(1e-4)"]


@pytest.mark.parametrize("spec", NOTATION)
def test_notation_round_trips(spec, batches):
    torch.manual_seed(0)
    model = MLP()
    optimizer = hyperopt.stack(spec, model.parameters())
    train(model, optimizer, batches[:3])
    rebuilt = hyperopt.stack(str(optimizer), MLP().parameters())
    assert [type(level) for level in rebuilt.levels()] == [type(level) for level in optimizer.levels()]
    assert [level.param_groups[0]["learn"] for level in rebuilt.levels()] == \
           [level.param_groups[0]["learn"] for level in optimizer.levels()]
    for ours, theirs in zip(rebuilt.hyperparameters(), optimizer.hyperparameters()):
        assert ours == pytest.approx(theirs, rel=1e-6)


def test_notation_means_what_the_paper_means():
    opt = hyperopt.stack("Adam^α/SGD(1e-5)", MLP().parameters())
    assert [type(level) for level in opt.levels()] == [hyperopt.Adam, hyperopt.SGD]
    assert opt.param_groups[0]["learn"] == ("lr",)
    assert opt.hyperparameters() == [pytest.approx({"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
                                     pytest.approx({"lr": 1e-5, "momentum": 0.0, "weight_decay": 0.0})]
    opt = hyperopt.stack("Adam(0.0040, 0.899, 0.999)/SGD(1e-5)", MLP().parameters())
    assert opt.hyperparameters()[0] == pytest.approx({"lr": 0.004, "beta1": 0.899, "beta2": 0.999, "eps": 1e-8})
    assert str(opt) == "Adam(0.004, 0.899)/SGD(1e-05)"
    rms = hyperopt.stack("RMSProp(0.01)/SGD(1e-4)", MLP().parameters())
    assert rms.hyperparameters()[0]["lr"] == pytest.approx(0.01)  # α, not the √α it stores
    assert rms.param_groups[0]["hyper_raw"][0, 0].item() == pytest.approx(0.1)


@pytest.mark.parametrize("spec, message", [
    ("", "non-empty"),
    ("Adamm/SGD", "unknown optimizer 'Adamm'"),
    ("SGD/", "cannot read this level"),
    ("SGD(0.1", "cannot read this level"),
    ("SGD(abc)", "'abc' is not a number"),
    ("SGD(0.1, 0.9, 0, 3)", "SGD takes at most 3 values"),
    ("SGD(lr=0.1, 0.9)", "positional value follows a keyword"),
    ("SGD(lr=0.1, lr=0.2)", "lr is given twice"),
    ("Adam^δ/SGD", "unknown hyperparameter 'δ'"),
    ("AdaGrad(gamma=0.5)", "AdaGrad has no hyperparameter 'gamma'"),
    ("Adam^ε/SGD", "Adam cannot learn 'eps'"),
    ("Adam(0.001, 1.5)", "beta1 must lie in [0, 1)"),
    ("Adam(0.001, 0.0)/SGD", "beta1 must lie strictly between 0 and 1 while it is learned"),
    ("SGD(-0.1)", "lr must not be negative"),
    ("SGD(nan)", "lr must be a finite number"),
])
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError) as error:
        hyperopt.stack(spec, MLP().parameters())
    assert message in str(error.value)
    assert "stack      :=" in str(error.value)  # the grammar is shown


@pytest.mark.parametrize("spec", ["Adam/SGD(1e-5)/Adam(1e-3)", "SGD(0.1, 0.9)/RMSProp(1e-3)", "AdaGrad/AdaGrad"])
def test_resume_continues_bitwise(spec, batches, tmp_path):
    torch.manual_seed(0)
    model = MLP()
    straight = copy.deepcopy(model)
    straight_opt = hyperopt.stack(spec, straight.parameters())
    straight_losses = train(straight, straight_opt, batches)

    first = copy.deepcopy(model)
    first_opt = hyperopt.stack(spec, first.parameters())
    losses = train(first, first_opt, batches[:7])
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, tmp_path / "checkpoint.pt")
    del first, first_opt

    checkpoint = torch.load(tmp_path / "checkpoint.pt")
    resumed = MLP()
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = hyperopt.stack(spec, resumed.parameters())
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    losses += train(resumed, resumed_opt, batches[7:])

    assert losses == straight_losses
    assert resumed_opt.hyperparameters() == straight_opt.hyperparameters()
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("saved, message", [
    (lambda p: hyperopt.stack("Adam", p), "differ in height (at level 1)"),
    (lambda p: hyperopt.stack("Adam/SGD/SGD", p), "differ in height (at level 2)"),
    (lambda p: hyperopt.stack("SGD(0.1, 0.9)/SGD", p), "level 0 is SGD, but level 0 of this stack is Adam"),
    (lambda p: hyperopt.stack("Adam/Adam", p), "level 1 is Adam, but level 1 of this stack is SGD"),
    (lambda p: hyperopt.stack("Adam^α/SGD", p), "has learn=('lr',), this one learn=('lr', 'beta1', 'beta2')"),
    (lambda p: torch.optim.Adam(p), "not a hyperopt stack's"),
])
def test_a_state_dict_of_another_stack_is_refused_before_anything_changes(saved, message, batches):
    torch.manual_seed(0)
    model = MLP()
    optimizer = hyperopt.stack("Adam/SGD", model.parameters())
    train(model, optimizer, batches[:2])
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match=re.escape(message)):
        optimizer.load_state_dict(saved(MLP().parameters()).state_dict())
    after = optimizer.state_dict()
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k][name], value) for k, state in before["state"].items()
               for name, value in state.items())
    assert train(model, optimizer, batches[2:4])  # it still steps


def test_nonfinite_hypergradient_raises_and_changes_nothing(batches):
    model = MLP()
    optimizer = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())
    train(model, optimizer, batches[:2])
    before = [p.detach().clone() for p in model.parameters()]
    hyperparameters = optimizer.hyperparameters()
    x, y = batches[2]
    F.nll_loss(model(x), y).backward()
    model.layer1.weight.grad[0, 0] = float("nan")
    with pytest.raises(hyperopt.DivergenceError) as error:
        optimizer.step()
    assert (error.value.level, error.value.hyperparameter, error.value.step) == (0, "lr", 3)
    assert "level 0 (Adam)" in str(error.value) and "step 3" in str(error.value)
    assert optimizer.hyperparameters() == hyperparameters
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_param_groups_learn_separately(batches):
    torch.manual_seed(0)
    model = MLP()
    optimizer = hyperopt.SGD([{"params": model.layer1.parameters()},
                              {"params": model.layer2.parameters(), "lr": 0.05}],
                             lr=0.01, hyper=hyperopt.SGD(lr=0.01))
    train(model, optimizer, batches)
    first, second = optimizer.hyperparameters(0), optimizer.hyperparameters(1)
    assert first[0]["lr"] != pytest.approx(0.01) and second[0]["lr"] != pytest.approx(0.05)
    assert first[0]["lr"] != pytest.approx(second[0]["lr"])
    assert len(optimizer.hyper.param_groups) == 2


def test_stepping_a_level_above_directly_is_refused():
    optimizer = hyperopt.stack("SGD/SGD", MLP().parameters())
    with pytest.raises(RuntimeError, match="weights' optimizer"):
        optimizer.hyper.step()
    with pytest.raises(RuntimeError, match="no parameters"):
        hyperopt.SGD(lr=0.1).step()


def test_trains_a_compiled_model(batches):
    torch.manual_seed(0)
    model = MLP()
    compiled = torch.compile(model, backend="eager")
    optimizer = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())
    losses = train(compiled, optimizer, batches)
    assert losses[-1] < losses[0]
    assert optimizer.hyperparameters()[0]["lr"] != 1e-3


def test_state_dict_saves_to_a_buffer():
    optimizer = hyperopt.stack("RMSProp/Adam/SGD", MLP().parameters())
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    assert buffer.tell() > 0


@pytest.mark.slow  # compiling takes tens of seconds
@pytest.mark.parametrize("spec", ["Adam/SGD(1e-5)", "RMSProp^{α,γ}/SGD(1e-4)"])
def test_compiled_update_computes_the_same_numbers(spec, batches):
    torch.manual_seed(0)
    model = MLP().double()
    plain, compiled = copy.deepcopy(model), copy.deepcopy(model)
    data = [(x.double(), y) for x, y in batches]
    plain_opt = hyperopt.stack(spec, plain.parameters())
    compiled_opt = hyperopt.stack(spec, compiled.parameters(), compile=True)
    assert train(compiled, compiled_opt, data) == pytest.approx(train(plain, plain_opt, data), rel=1e-12)
    # inductor fuses and reorders the arithmetic, so the two agree to rounding amplified by training
    for a, b in zip(compiled.parameters(), plain.parameters()):
        assert_relative_close(a, b, 1e-10, "weights")
    for ours, theirs in zip(compiled_opt.hyperparameters(), plain_opt.hyperparameters()):
        assert ours == pytest.approx(theirs, rel=1e-10)


def test_a_scheduler_drives_the_step_size_at_the_top_of_a_stack(batches):
    torch.manual_seed(0)
    model = MLP()
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    optimizers = [hyperopt.SGD(ours.parameters(), lr=0.1, momentum=0.9),
                  torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, foreach=False)]
    schedulers = [torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.1) for opt in optimizers]
    for x, y in batches:
        for m, opt, scheduler in zip((ours, theirs), optimizers, schedulers):
            train_step(m, opt, x, y)
            scheduler.step()
    assert optimizers[0].hyperparameters()[0]["lr"] == pytest.approx(0.1 * 0.1 ** 4)
    eps = torch.finfo(torch.float32).eps  # to rounding, as in the torch.optim.SGD test above
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=50 * eps, atol=50 * eps * float(b.detach().abs().max()))


@pytest.mark.slow  # a fresh interpreter; CI also runs tests/library in a venv of torch and pytest alone
def test_the_library_needs_torch_alone():
    """hyperopt and models import and train with none of the experiments' packages importable."""
    import subprocess
    import sys

    program = ("import sys\n"
               "for name in ('numpy', 'hydra', 'omegaconf', 'pandas', 'matplotlib', 'torchvision', 'wandb', 'tqdm'):\n"
               "    sys.modules[name] = None  # an import of it now fails\n"
               "import torch, torch.nn.functional as F, hyperopt, models\n"
               "model = models.MLP()\n"
               "optimizer = hyperopt.stack('Adam/SGD(1e-5)', model.parameters())\n"
               "for _ in range(3):\n"
               "    loss = F.nll_loss(model(torch.rand(8, 1, 28, 28)), torch.randint(0, 10, (8,)))\n"
               "    optimizer.zero_grad(); loss.backward(); optimizer.step()\n"
               "print(optimizer)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Adam(") and "/SGD(1e-05)" in result.stdout


@pytest.mark.parametrize("spec, theirs, most", [
    # (stack, its torch.optim counterpart, most state bytes as a multiple of the counterpart's)
    ("Adam/SGD(1e-5)", lambda p: torch.optim.Adam(p), 1.5),       # m, v and the last gradient
    ("Adam^α/SGD(1e-5)", lambda p: torch.optim.Adam(p), 1.0),     # m and v: α's column is m̂ / (√v̂ + ε)
    ("SGD(0.1, 0.9)/SGD(1e-3)", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 2.0),  # the buffer, and the last
    ("RMSProp/SGD(1e-4)", lambda p: torch.optim.RMSprop(p), 2.0),  # the average and the last gradient
])
def test_state_holds_at_most_one_parameter_sized_tensor_beyond_torch_optim(spec, theirs, most, batches):
    """Between steps, counting every tensor the optimizer can reach (its state, every level, whatever it caches),
    not only what it says its state is."""
    torch.manual_seed(0)
    ours_model, their_model = MLP(), MLP()
    ours, reference = hyperopt.stack(spec, ours_model.parameters()), theirs(their_model.parameters())
    train(ours_model, ours, batches[:3])
    train(their_model, reference, batches[:3])
    scalars = 4096  # (the learned values, step counts and such: a parameter-sized tensor is 400 kB)
    assert held_bytes(ours, ours_model) <= most * held_bytes(reference, their_model) + scalars


def held_bytes(optimizer, model) -> int:
    """The memory of every tensor reachable from the optimizer's attributes, less the model's parameters and
    gradients (each storage once)."""
    skip = {t.untyped_storage().data_ptr() for p in model.parameters() for t in (p, p.grad) if t is not None}
    storages, seen = {}, set()
    pending = [optimizer]
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in skip:
                storages[storage.data_ptr()] = storage.nbytes()
            pending.append(value.grad)
        elif isinstance(value, dict):
            pending += list(value.keys()) + list(value.values())
        elif isinstance(value, (list, tuple, set)):
            pending += list(value)
        elif type(value).__module__.startswith(("hyperopt", "torch.optim")):
            pending.append(vars(value))
    return sum(storages.values())


def test_a_stack_of_runs_says_what_is_wrong():
    with pytest.raises(ValueError, match="leading dimension of 3"):
        hyperopt.SGD(MLP().parameters(), runs=3, lr=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="has a value per run; say how many runs"):
        hyperopt.SGD(MLP().parameters(), lr=[0.1, 0.2, 0.3])
    stacked = [torch.zeros(3, 4, requires_grad=True)]
    with pytest.raises(ValueError, match="lr has 2 values for 3 runs"):
        hyperopt.SGD(stacked, runs=3, lr=[0.1, 0.2])
    with pytest.raises(ValueError, match="differ in their optimizers"):
        hyperopt.stack(["Adam/SGD", "SGD/SGD", "SGD/SGD"], stacked)
    with pytest.raises(ValueError, match="say which"):
        hyperopt.stack(["SGD/SGD"] * 3, stacked).hyperparameters()
    assert str(hyperopt.stack(["SGD(0.1)/SGD", "SGD(0.2)/SGD", "SGD(0.3)/SGD"], stacked)) == \
        "[SGD(0.1)/SGD(0.01); SGD(0.2)/SGD(0.01); SGD(0.3)/SGD(0.01)]"


HYPEROPTIMIZERS = [spec for spec in TABLE_1_STACKS if "/" in spec] + [
    "SGD(0.1, 0.9)/SGD(1e-3)/SGD(1e-4)", "Adam/Adam(1e-4)/Adam(1e-5)",  # (learned and fixed β at three heights)
    "Adam(1e-3, log_lr=1)/Adam(1e-2)", "RMSProp(0.01, log_lr=1)/SGD(1e-4)"]  # (parameterisations side by side)


@pytest.mark.parametrize("spec", HYPEROPTIMIZERS)
def test_a_lone_run_learns_what_a_stack_of_one_run_learns(spec, batches):
    """On the CPU a lone run does its step's scalar arithmetic in Python numbers; a stack of runs (and a GPU, and a
    compiled step) in tensors. A stack of one run learns what the lone run learns, for every optimizer of Table 1
    (float64)."""
    torch.manual_seed(0)
    model = MLP().double()
    network = batch_models([copy.deepcopy(model)])
    alone = hyperopt.stack(spec, model.parameters())
    one_run = hyperopt.stack([spec], network.parameters())
    for x, y in batches:
        x = x.double()
        for net, optimizer in ((model, alone), (network, one_run)):
            optimizer.zero_grad()
            output = net(x.unsqueeze(0))[0] if net is network else net(x)
            F.nll_loss(output, y).backward()
            optimizer.step()
    for name, weight in model.state_dict().items():
        assert_relative_close(network.run_state_dict(0)[name], weight, 1e-9, name)
    for level, (ours, theirs) in enumerate(zip(one_run.hyperparameters(run=0), alone.hyperparameters())):
        for name, value in theirs.items():
            assert_relative_close(torch.tensor(ours[name]), torch.tensor(value), 1e-9, f"level {level} {name}")
    assert alone.hyperparameters()[0]["lr"] != hyperopt.stack(spec, MLP().parameters()).hyperparameters()[0]["lr"]


def test_each_learned_value_is_read_and_differentiated_through_its_own_parameterisation():
    """A level's learned values are converted a block of adjacent columns of one kind at a time: each column as the
    reference writes its parameterisation (to the bit), and the chain rule through it as autograd has it."""
    from hyperopt.parameterisations import IDENTITY, LOG, SQUARE, UNIT_INTERVAL, times_derivatives, \
        to_value_columns
    written = {IDENTITY: lambda x: x, LOG: torch.exp, SQUARE: lambda x: x * x,
               UNIT_INTERVAL: lambda x: (x.tanh() + 1.0) / 2.0}
    kinds = [UNIT_INTERVAL, IDENTITY, UNIT_INTERVAL, UNIT_INTERVAL, LOG, SQUARE, LOG, IDENTITY]
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(3, len(kinds), generator=generator, dtype=torch.float64)
    terms = torch.randn(3, len(kinds), generator=generator, dtype=torch.float64)
    columns, scaled = to_value_columns(kinds, raw), times_derivatives(kinds, raw, terms.clone())
    for i, kind in enumerate(kinds):
        x = raw[:, i].clone().requires_grad_()
        value = written[kind](x)
        assert columns[i].shape == (3, 1) and torch.equal(columns[i][:, 0], value.detach()), i
        (slope,) = torch.autograd.grad(value.sum(), x)
        assert_relative_close(scaled[:, i], terms[:, i] * slope, 1e-15, f"column {i}")


@pytest.mark.parametrize("specs, found", [
    # the first value out of range: at level 1, at level 0, none
    (["SGD(0.01, 0.5)/SGD(1e-2)/SGD(1e3)", "SGD(0.01, 0.5)/SGD(1e-3)/SGD(1e4)", "SGD(0.01, 0.5)/SGD(1e-3)/SGD(1e-3)"],
     [(0, 1, "lr"), (1, 0, "lr")]),
    # a momentum at level 0, below a level whose β are learned; none
    (["SGD(0.01, 0.5)/Adam(1e-2)/SGD(1e3)", "SGD(0.01, 0.5)/Adam(1e-3)/SGD(1e-3)"], [(0, 0, "momentum")])])
def test_a_stack_of_runs_notes_the_first_value_out_of_range_at_any_level_as_each_lone_run_does(specs, found):
    """A stack of runs checks every level's values at once on the device; each lone run checks them in numbers,
    level by level. Both note the same step, level, hyperparameter and value."""
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(64, 1, 28, 28, generator=generator, dtype=torch.float64),
                torch.randint(10, (64,), generator=generator)) for _ in range(4)]
    alone = []
    for run, spec in enumerate(specs):
        torch.manual_seed(0)
        model = MLP().double()
        optimizer = hyperopt.stack(spec, model.parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hyperopt.OutOfRangeWarning)
            train(model, optimizer, batches)
        alone += [{**event, "run": run} for event in optimizer.out_of_range()]
    assert [(event["run"], event["level"], event["hyperparameter"]) for event in alone] == found
    models = []
    for _ in specs:
        torch.manual_seed(0)
        models.append(MLP().double())
    runs = batch_models(models)
    optimizer = hyperopt.stack(specs, runs.parameters())
    for x, y in batches:
        optimizer.zero_grad()
        # each run's own mean loss (a mean over all runs would scale each run's gradient by 1 / runs)
        F.nll_loss(runs(x.expand(len(specs), *x.shape)).flatten(0, 1), y.repeat(len(specs)),
                   reduction="sum").div(len(y)).backward()
        optimizer.step()
    together = optimizer.out_of_range()
    assert [{key: value for key, value in event.items() if key != "value"} for event in together] == \
        [{key: value for key, value in event.items() if key != "value"} for event in alone]
    for ours, theirs in zip(together, alone):
        assert ours["value"] == pytest.approx(theirs["value"], rel=1e-9)


def test_a_bias_correction_of_zero_is_a_divergence_as_numbers_and_as_tensors(batches):
    """A huge step size drives Adam's β to 1, where 1 / (1 - β^t) is a division by zero, on which Python numbers (a
    lone run on the CPU) would raise and a tensor holds inf. Both end in the same divergence, at the same step:
    DivergenceError alone, the run frozen in a stack of runs."""
    torch.manual_seed(0)
    model = MLP().double()
    network = batch_models([copy.deepcopy(model)])
    alone, as_tensors = hyperopt.stack("Adam/SGD(1e10)", model.parameters()), \
        hyperopt.stack(["Adam/SGD(1e10)"], network.parameters())
    with pytest.raises(hyperopt.DivergenceError) as error:
        train(model, alone, [(x.double(), y) for x, y in batches])
    for x, y in batches[:error.value.step]:
        as_tensors.zero_grad()
        F.nll_loss(network(x.double().unsqueeze(0))[0], y).backward()
        as_tensors.step()
    assert [run["step"] for run in as_tensors.diverged()] == [error.value.step]


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_a_copied_stack_trains_on_as_the_original_does(how, batches):
    """A copy of the model and its whole stack (every level, its state, its divergence record) takes the same steps
    as the original."""
    import pickle

    torch.manual_seed(0)
    model = MLP()
    optimizer = hyperopt.stack("Adam/SGD(1e-5)/SGD(1e-4)", model.parameters())
    train(model, optimizer, batches[:3])
    if how == "deepcopy":
        model_copy, optimizer_copy = copy.deepcopy((model, optimizer))
    elif how == "pickle":
        model_copy, optimizer_copy = pickle.loads(pickle.dumps((model, optimizer)))
    else:
        buffer = io.BytesIO()
        torch.save((model, optimizer), buffer)
        buffer.seek(0)
        model_copy, optimizer_copy = torch.load(buffer, weights_only=False)  # (our own object, just written)
    assert train(model_copy, optimizer_copy, batches[3:]) == train(model, optimizer, batches[3:])
    assert optimizer_copy.hyperparameters() == optimizer.hyperparameters()
    assert optimizer_copy.hyper.hyper.param_groups[0]["params"][0] is optimizer_copy.hyper.param_groups[0]["hyper_raw"]


def test_a_param_group_with_its_own_momentum_learns_it(batches):
    """Built with momentum 0, a group given momentum 0.9 learns μ, as it would built with 0.9 (the reference's rule
    applied to each group's own values); a learn= given to the optimizer still holds for every group."""
    torch.manual_seed(0)
    model = MLP()
    optimizer = hyperopt.SGD([{"params": model.layer1.parameters(), "momentum": 0.9},
                              {"params": model.layer2.parameters()}], lr=0.05, hyper=hyperopt.SGD(lr=1e-3))
    assert [group["learn"] for group in optimizer.param_groups] == [("lr", "momentum"), ("lr",)]
    train(model, optimizer, batches[:5])
    assert optimizer.hyperparameters(0)[0]["momentum"] != 0.9
    fixed = hyperopt.SGD([{"params": MLP().parameters(), "momentum": 0.9}], lr=0.05, learn=("lr",),
                         hyper=hyperopt.SGD(lr=1e-3))
    assert fixed.param_groups[0]["learn"] == ("lr",)


@pytest.mark.parametrize("build, error, message", [
    (lambda p: hyperopt.Adam(p, weight_decay=0.01), TypeError, "Adam takes no weight decay"),
    (lambda p: hyperopt.Adam([{"params": p, "weight_decay": 0.01}]), ValueError, "Adam takes no weight decay"),
    (lambda p: hyperopt.SGD([{"params": p, "dampening": 0.1}]), ValueError, "SGD has no hyperparameter ['dampening']"),
    (lambda p: hyperopt.SGD([torch.zeros(3, dtype=torch.complex64, requires_grad=True)]), ValueError,
     "complex parameters"),
    (lambda p: hyperopt.stack("RMSProp(0)/SGD", p), ValueError, "would stay 0"),
])
def test_what_a_level_would_not_use_is_refused_with_the_reason(build, error, message):
    with pytest.raises(error, match=re.escape(message)):
        build(MLP().parameters())


def test_a_tensor_step_size_is_a_step_size(batches):
    torch.manual_seed(0)
    model = MLP()
    twin = copy.deepcopy(model)
    ours = hyperopt.SGD(model.parameters(), lr=torch.tensor(0.1), hyper=hyperopt.SGD(lr=torch.tensor(1e-3)))
    plain = hyperopt.SGD(twin.parameters(), lr=0.1, hyper=hyperopt.SGD(lr=1e-3))
    assert train(model, ours, batches[:4]) == train(twin, plain, batches[:4])


@pytest.mark.parametrize("spec", ["Adam", "RMSProp/SGD", "AdaGrad"])
def test_an_epsilon_that_is_zero_in_float16_is_refused_at_construction(spec):
    half = [torch.zeros(4, dtype=torch.float16, requires_grad=True)]
    with pytest.raises(ValueError, match=r"is 0 in torch.float16, whose smallest positive number is 6e-08"):
        hyperopt.stack(spec, half)
    hyperopt.stack(spec, [torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)])  # bf16 holds 1e-10
    if spec == "Adam":
        hyperopt.stack("Adam(eps=1e-4)", half)


@pytest.mark.parametrize("spec", ["Adam(0.001, 0.0)", "Adam^α(0.001, 0.0)/SGD(1e-5)", "RMSProp^α(0.01, 0.0)/SGD"])
def test_a_fixed_beta_of_zero_is_accepted_as_torch_optim_accepts_it(spec, batches):
    torch.manual_seed(0)
    model = MLP()
    before = copy.deepcopy(model)
    optimizer = hyperopt.stack(spec, model.parameters())
    assert all(torch.isfinite(torch.tensor(train(model, optimizer, batches[:5]))))
    assert not torch.equal(model.layer1.weight, before.layer1.weight)
    assert optimizer.hyperparameters()[0].get("beta1", optimizer.hyperparameters()[0].get("gamma")) == 0.0


@pytest.mark.parametrize("as_tensors", [False, True])
def test_rmsprops_gamma_term_is_zero_where_a_learned_gamma_has_rounded_to_zero(as_tensors):
    """Where γ is 0, s is g² and γ's term (s - g²) / (s + ε) 0; its sum, made from s / (s + ε) - w², is that 0 only
    to rounding, which the divisor nonzero(0) (the smallest normal number) would make some 1e300."""
    from hyperopt import rmsprop
    rounding = 1e-17
    if as_tensors:  # (a stack of two runs: one γ at 0, one not)
        h = {"lr": torch.tensor([0.01, 0.01], dtype=torch.float64),
             "gamma": torch.tensor([0.0, 0.5], dtype=torch.float64)}
        sums = [torch.ones(2, dtype=torch.float64), torch.full((2,), rounding, dtype=torch.float64)]
        _, term = rmsprop.hypergradient_terms(h, ("lr", "gamma"), sums)
        assert term.tolist() == [0.0, -0.01 * rounding / (2 * 0.5)]
    else:
        _, term = rmsprop.hypergradient_terms({"lr": 0.01, "gamma": 0.0}, ("lr", "gamma"), [1.0, rounding])
        assert term == 0.0


def test_a_division_by_zero_in_numbers_gives_what_a_tensor_gives():
    """The host path divides Python numbers where the tensor path divides tensors: by 0 they must agree (±inf, NaN
    for 0 / 0 and NaN / 0), not raise ZeroDivisionError."""
    from hyperopt.scalars import divide
    for a in (2.0, -2.0, 0.0, math.nan, math.inf):
        for b in (0.0, -0.0, 4.0):
            expected = (torch.tensor(a, dtype=torch.float64) / torch.tensor(b, dtype=torch.float64)).item()
            assert divide(a, b) == pytest.approx(expected, nan_ok=True)
            assert math.copysign(1.0, divide(a, b)) == math.copysign(1.0, expected) or math.isnan(expected)
            assert torch.equal(divide(torch.tensor(a), b), torch.tensor(a) / b) or math.isnan(expected)


def test_a_step_size_learned_as_its_logarithm_changes_by_a_factor_and_stays_above_zero():
    """Two gradients that point opposite ways: the additive step size is pushed below 0 (gradient ascent), the
    one learned as log α shrinks by the factor exp(-κ·α·g₂·g₁) and stays above 0."""
    def after_two_opposite_steps(spec):
        w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
        opt = hyperopt.stack(spec, [w], keep_in_range=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hyperopt.OutOfRangeWarning)
            for sign in (1.0, -1.0):
                opt.zero_grad()
                (sign * w).sum().backward()
                opt.step()
        return opt.hyperparameters()[0]["lr"], opt
    additive, _ = after_two_opposite_steps("SGD(0.01)/SGD(5.0)")
    in_log, opt = after_two_opposite_steps("SGD(0.01, log_lr=1)/SGD(5.0)")
    assert additive == pytest.approx(0.01 - 5.0)
    assert in_log == pytest.approx(0.01 * math.exp(-5.0 * 0.01 * 1.0), rel=1e-12)  # ∂L/∂log α = α·(-g₂·g₁)
    assert hyperopt.stack(str(opt), [torch.zeros(1)]).param_groups[0]["log_lr"]  # the notation says it back


@pytest.mark.parametrize("spec, message", [
    ("SGD(0.1, log_lr=1)", "no level above learns it"),
    ("Adam^{β1,β2}(log_lr=1)/SGD(1e-3)", "no level above learns it"),
    ("SGD(0.0, log_lr=1)/SGD(1e-3)", "must start above 0"),
])
def test_a_step_size_in_log_space_where_nothing_learns_it_or_from_zero_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        hyperopt.stack(spec, [torch.zeros(2, requires_grad=True)])


@pytest.mark.parametrize("spec, step, rel, said_back", [
    # the step g·α = 10 would take the first-order decrease g·S = 10 past the loss 1/2: shortened to S = L/g = 1/2,
    # and α to 1/2, Polyak's step size (L - 0)/g²
    ("SGD(10.0, polyak=1)/SGD(0.0)", 0.5, 1e-15, "SGD(0.5, polyak=1)/SGD(0.0)"),
    # half the loss: the step g·α = 0.01 promises far less than the bound L/2 = 1/4, so polyak_start lengthens it
    # to S = 1/4, and α to 1/4
    ("SGD(0.01, polyak=0.5, polyak_start=1)/SGD(0.0)", 0.25, 1e-14, "SGD(0.25, polyak=0.5, polyak_start=1)/SGD(0.0)"),
], ids=["shortened", "started"])
def test_polyaks_bound_on_one_dimension_is_the_polyak_step_size(spec, step, rel, said_back):
    """L(w) = w²/2 from w = 1, the level above not moving α: the first step, and α, are Polyak's."""
    w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = hyperopt.stack(spec, [w])
    loss = (w * w).sum() / 2
    loss.backward()
    opt.step(loss=loss.detach())
    assert w.item() == pytest.approx(1.0 - step, rel=1e-15)
    assert opt.hyperparameters()[0]["lr"] == pytest.approx(step, rel=rel)
    assert str(opt) == said_back  # the notation says it back
    assert hyperopt.stack(str(opt), [torch.zeros(1)]).needs_loss


@pytest.mark.parametrize("level", ["SGD", "SGD({a}, 0.9)", "Adam", "AdamW({a}, wd=0.1)", "AdaGrad", "RMSProp",
                                   "Adam({a}, log_lr=1)", "RMSProp({a}, log_lr=1)"])
@pytest.mark.parametrize("alpha, options", [(30.0, "polyak=1"), (1e-7, "polyak=0.3, polyak_start=1")],
                         ids=["shortened", "started"])
def test_the_step_size_polyaks_bound_leaves_is_the_one_that_takes_the_step_it_took(level, alpha, options):
    """Whatever the bound did to the first step (shortened a step size too large; set one far too small), the
    learned step size it leaves is the one with which the plain optimizer, from the same start, takes the same
    step: the level above goes on from the step size actually used (RMSProp learns √α: scaling the stored value
    by the factor would scale α by its square)."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    spec = (level if "{a}" in level else level + "({a})").format(a=alpha)
    spec = spec[:-1] + f", {options})/SGD(0.0)"
    bounded = [torch.nn.Parameter(p.clone()) for p in start]
    opt = hyperopt.stack(spec, bounded)
    loss = sum(((p - 1.0) ** 2).sum() for p in bounded)
    loss.backward()
    opt.step(loss=loss.detach())
    learned = opt.hyperparameters()[0]
    plain = [torch.nn.Parameter(p.clone()) for p in start]
    fixed = {name: value for name, value in learned.items()}
    reference = type(opt)(plain, **fixed)
    sum(((p - 1.0) ** 2).sum() for p in plain).backward()
    reference.step()
    decrease = sum((g * (a - b)).sum() for g, a, b in zip([2 * (p - 1.0) for p in start], start, bounded))
    for ours, theirs in zip(bounded, plain):
        assert_relative_close(ours.detach(), theirs.detach(), 1e-12, spec)
    share = 0.3 if "polyak_start" in options else 1.0
    assert decrease.item() == pytest.approx(share * loss.item(), rel=1e-12)  # the step is at the bound


def test_a_run_whose_steps_stay_within_polyaks_bound_takes_the_papers_steps(batches):
    torch.manual_seed(0)
    model = MLP().double()
    bounded_model = copy.deepcopy(model)
    plain = hyperopt.stack("Adam(1e-3)/Adam(1e-4)", model.parameters())
    bounded = hyperopt.stack("Adam(1e-3, polyak=1)/Adam(1e-4)", bounded_model.parameters())
    for x, y in batches[:6]:
        for net, optimizer in ((model, plain), (bounded_model, bounded)):
            train_step(net, optimizer, x.double(), y)  # (it hands the loss over where the optimizer asks)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), bounded_model.parameters()))
    assert plain.hyperparameters() == bounded.hyperparameters()


@pytest.mark.parametrize("start", [False, True], ids=["bound", "bound and start"])
def test_polyaks_bound_holds_each_run_of_a_stack_of_runs_as_it_holds_the_run_alone(start, batches):
    """Each run's loss bounds its own step: one run starts far above the bound, the other within it (with
    polyak_start, far below it and far above)."""
    torch.manual_seed(0)
    models = [MLP().double() for _ in range(2)]
    network = batch_models([copy.deepcopy(model) for model in models])
    specs = ["Adam(0.5, polyak=1)/Adam(1e-3)", "Adam(1e-3, polyak=1)/Adam(1e-5)"] if not start else [
        "Adam(1e-6, polyak=0.3, polyak_start=1)/Adam(1e-3)", "Adam(1.0, polyak=0.3, polyak_start=1)/Adam(1e-5)"]
    alone = [hyperopt.stack(spec, model.parameters()) for spec, model in zip(specs, models)]
    together = hyperopt.stack(specs, network.parameters())
    for x, y in batches[:6]:
        x = x.double()
        for model, optimizer in zip(models, alone):
            train_step(model, optimizer, x, y)
        together.zero_grad()
        losses = torch.stack([F.nll_loss(output, y) for output in network(torch.stack([x, x]))])
        losses.sum().backward()
        together.step(loss=losses.detach())
    for run, (model, optimizer) in enumerate(zip(models, alone)):
        for name, weight in model.state_dict().items():
            assert_relative_close(network.run_state_dict(run)[name], weight, 1e-9, f"run {run} {name}")
        for level, (ours, theirs) in enumerate(zip(together.hyperparameters(run=run), optimizer.hyperparameters())):
            for name, value in theirs.items():
                assert_relative_close(torch.tensor(ours[name]), torch.tensor(value), 1e-9, f"run {run} {name}")
    if not start:
        assert alone[0].hyperparameters()[0]["lr"] < 0.05 and alone[1].hyperparameters()[0]["lr"] > 5e-4


@pytest.mark.parametrize("make, step, message", [
    (lambda p: hyperopt.stack("Adam(polyak=1)/SGD(1e-3)", p), {}, r"opt.step\(loss=loss\)"),
    (lambda p: hyperopt.stack("Adam(polyak=1)/SGD(1e-3)", p), {"loss": -1.0}, "at least 0"),
    (lambda p: hyperopt.stack("Adam(polyak=1)/SGD(1e-3)", p), {"loss": torch.ones(2)}, "one loss per run"),
    (lambda p: hyperopt.stack("Adam(polyak=1)", p), None, "level above that learns lr"),
    (lambda p: hyperopt.stack("Adam^{β1,β2}(polyak=1)/SGD(1e-3)", p), None, "level above that learns lr"),
    (lambda p: hyperopt.stack("Adam/SGD(polyak=1)", p), None, "not a level above"),
    (lambda p: hyperopt.stack("Adam(polyak=1)/SGD(1e-3)", p, maximize=True), None, "maximize"),
    (lambda p: hyperopt.stack("Adam(polyak=1)/SGD(1e-3)", p, compile=True), None, "compile"),
    (lambda p: hyperopt.Adam([{"params": p[:1]}, {"params": p[1:], "polyak": True}], hyper=hyperopt.SGD(lr=1e-3)),
     None, "not to some param groups"),
    (lambda p: hyperopt.stack("Adam(polyak=1.5)/SGD(1e-3)", p), None, "from 0 .no bound. to 1"),
    (lambda p: hyperopt.stack("Adam(polyak_start=1)/SGD(1e-3)", p), None, "no bound for polyak_start"),
    (lambda p: hyperopt.stack("SGD(0.0, polyak=1, polyak_start=1)/SGD(1e-3)", p), None, "start it above 0"),
], ids=["no loss", "a negative loss", "a loss per run for one run", "nothing learns lr",
        "lr not learned", "a level above", "maximize", "compiled", "one param group of two", "a share above 1",
        "a start without a bound", "a start from 0"])
def test_polyaks_bound_where_it_cannot_mean_what_it_says_is_refused_before_anything_moves(make, step, message):
    params = [torch.nn.Parameter(torch.ones(2, dtype=torch.float64)) for _ in range(2)]
    with pytest.raises((ValueError, TypeError), match=message):
        optimizer = make(params)
        sum((p * p).sum() for p in params).backward()
        optimizer.step(**step)
    assert all(torch.equal(p, torch.ones(2, dtype=torch.float64)) for p in params)


@pytest.mark.parametrize("spec", ["Adam(polyak=1)/SGD(1e-3)", "Adam(polyak=0.3, polyak_start=1)/SGD(1e-3)"])
def test_a_loss_that_is_nan_under_polyaks_bound_is_a_divergence_as_without_it(spec):
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = hyperopt.stack(spec, [w])
    loss = (w * float("nan")).sum()
    loss.backward()
    with pytest.raises(hyperopt.DivergenceError):
        opt.step(loss=loss.detach())
    assert torch.equal(w, torch.ones(2, dtype=torch.float64))
