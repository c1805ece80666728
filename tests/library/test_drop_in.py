"""A hyperoptimizer in the training loop people already have: schedules at any level, gradient clipping, AdamW,
parameters without a gradient, divergence at any step."""

import copy
import gc
import inspect
import re

import pytest
import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler

import hyperopt
from hyperopt.notation import OPTIMIZERS
from models import MLP, batch_models
from tests.library.closeness import assert_relative_close


@pytest.fixture
def batches(synthetic_batches):
    return [(x.double(), y) for x, y in synthetic_batches[:12]]


def loss_of(model, x, y):
    return F.nll_loss(model(x), y)


SCHEDULERS = {
    "StepLR": lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "LambdaLR warmup and decay": lambda opt: lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4) * 0.9 ** s),
    "CosineAnnealingLR": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=1e-3),
    "LinearLR": lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=4),
    "ExponentialLR": lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.8),
    "OneCycleLR": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=12),
    "CyclicLR": lambda opt: lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=3),
    "ReduceLROnPlateau": lambda opt: lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0),
}


def train_with(model, optimizer, scheduler, batches):
    for x, y in batches:
        optimizer.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        optimizer.step()
        scheduler.step(loss.item()) if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau) else scheduler.step()


@pytest.mark.parametrize("schedule", SCHEDULERS)
@pytest.mark.parametrize("stack, plain, level", [
    ("SGD(0.1, 0.9)/SGD(0)", "SGD(0.1, 0.9)", 0),  # OneCycleLR and CyclicLR cycle the momentum too
    ("Adam^α(0.01)/SGD(0)", "Adam(0.01)", 0),
    ("SGD(0.1)/SGD(1e-3)/SGD(0)", "SGD(0.1)/SGD(1e-3)", 1),  # a schedule on the hyper-step size
])
def test_a_schedule_on_a_value_learned_at_step_size_zero_is_the_schedule_without_the_level_above(
        schedule, stack, plain, level, batches):
    """The oracle for what a schedule means: with the level above at step size 0 the learned value never moves,
    and the schedule's factor times it is exactly the schedule of the same optimizer without that level."""
    if schedule in ("OneCycleLR", "CyclicLR") and "Adam" in stack:
        pytest.skip("they cycle a momentum or Adam's betas; hyperopt.Adam names β1 beta1")
    torch.manual_seed(0)
    models = [MLP().double(), None]
    models[1] = copy.deepcopy(models[0])
    optimizers = [hyperopt.stack(spec, m.parameters()) for spec, m in zip((stack, plain), models)]
    for m, opt in zip(models, optimizers):
        train_with(m, opt, SCHEDULERS[schedule](opt.levels()[level]), batches)
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.equal(a, b)
    assert optimizers[0].hyperparameters()[level] == pytest.approx(optimizers[1].hyperparameters()[level], rel=0)


def test_a_step_size_set_to_zero_by_hand_stops_the_weights(batches):
    torch.manual_seed(0)
    model = MLP().double()
    optimizer = hyperopt.stack("Adam/SGD(1e-4)", model.parameters())
    for x, y in batches[:3]:
        optimizer.zero_grad()
        loss_of(model, x, y).backward()
        optimizer.step()
    optimizer.param_groups[0]["lr"] = 0.0
    weights = [p.clone() for p in model.parameters()]
    for x, y in batches[3:6]:
        optimizer.zero_grad()
        loss_of(model, x, y).backward()
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert optimizer.hyperparameters()[0]["lr"] == 0.0


def test_a_schedule_cannot_scale_a_learned_value_that_started_at_zero(batches):
    model = MLP().double()
    optimizer = hyperopt.stack("SGD(0.0)/SGD(1e-3)", model.parameters())
    optimizer.param_groups[0]["lr"] = 0.1
    loss_of(model, *batches[0]).backward()
    with pytest.raises(ValueError, match="made with lr=0, which a schedule's factor cannot scale"):
        optimizer.step()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
@pytest.mark.parametrize("values", [{}, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}])
def test_adamw_is_torch_optim_adamw_when_nothing_is_learned(values, dtype, tolerance, batches):
    torch.manual_seed(0)
    ours = MLP().to(dtype)
    theirs = copy.deepcopy(ours)
    optimizers = [hyperopt.AdamW(ours.parameters(), **values), torch.optim.AdamW(theirs.parameters(), **values)]
    schedulers = [lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4)) for opt in optimizers]
    for x, y in batches:
        for model, opt, scheduler in zip((ours, theirs), optimizers, schedulers):
            opt.zero_grad()
            loss_of(model, x.to(dtype), y).backward()
            opt.step()
            scheduler.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * float(b.detach().abs().max()))


def test_adamw_learns_its_step_size_and_its_decay(batches):
    torch.manual_seed(0)
    model = MLP().double()
    optimizer = hyperopt.stack("AdamW^{α,λ}(0.01, wd=0.1)/SGD(1e-3)", model.parameters())
    assert str(optimizer) == "AdamW^{α,λ}(0.01, 0.9, 0.999, 1e-08, 0.1)/SGD(0.001)"
    for x, y in batches:
        optimizer.zero_grad()
        loss_of(model, x, y).backward()
        optimizer.step()
    learned = optimizer.hyperparameters()[0]
    assert learned["lr"] != 0.01 and learned["weight_decay"] != 0.1
    with pytest.raises(ValueError, match="learns its weight decay together with its step size"):
        hyperopt.AdamW(MLP().parameters(), learn=("weight_decay",), hyper=hyperopt.SGD(lr=1e-3))


@pytest.mark.parametrize("spec", ["SGD(0.1, 0.9, 0.01)/SGD(1e-3)", "Adam/SGD(1e-5)", "AdamW(0.01)/SGD(1e-4)"])
def test_a_frozen_layer_is_left_alone_and_changes_nothing_else(spec, batches):
    """The stack over every parameter, one layer frozen, learns exactly what the stack over the others learns."""
    torch.manual_seed(0)
    models = [MLP().double(), None]
    models[1] = copy.deepcopy(models[0])
    frozen = models[0].layer1.weight
    frozen.requires_grad_(False)
    before = frozen.clone()
    everything = hyperopt.stack(spec, models[0].parameters())
    trainable = hyperopt.stack(spec, [p for name, p in models[1].named_parameters() if name != "layer1.weight"])
    models[1].layer1.weight.requires_grad_(False)
    for x, y in batches:
        for model, opt in zip(models, (everything, trainable)):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            opt.step()
    assert torch.equal(frozen, before) and set(everything.state[frozen]) <= {"step"}
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.equal(a, b)
    assert everything.hyperparameters() == trainable.hyperparameters()


def test_a_parameter_without_a_gradient_in_one_step_is_skipped_as_torch_optim_skips_it(batches):
    torch.manual_seed(0)
    ours = MLP().double()
    theirs = copy.deepcopy(ours)
    optimizers = [hyperopt.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01),
                  torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, foreach=False)]
    for step, (x, y) in enumerate(batches):
        for model, opt in zip((ours, theirs), optimizers):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            if step % 3 == 1:
                model.layer2.bias.grad = None  # as a branch the step did not take leaves it
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
@pytest.mark.parametrize("skipped", ["a step() without backward", "a group frozen for its first 5 steps"])
def test_a_group_without_gradients_takes_no_step_as_in_torch_optim_adamw(skipped, dtype, tolerance, batches):
    """Its step count (Adam's bias correction) stays where it was, as torch.optim's per-parameter count does."""
    torch.manual_seed(0)
    ours = MLP().to(dtype)
    theirs = copy.deepcopy(ours)
    optimizers = [hyperopt.AdamW([{"params": m.layer1.parameters()}, {"params": m.layer2.parameters()}], lr=0.01,
                                 weight_decay=0.1) for m in (ours,)]
    optimizers.append(torch.optim.AdamW([{"params": theirs.layer1.parameters()},
                                         {"params": theirs.layer2.parameters()}], lr=0.01, weight_decay=0.1))
    for step, (x, y) in enumerate(batches):
        for model, opt in zip((ours, theirs), optimizers):
            opt.zero_grad()
            frozen = skipped.startswith("a group frozen") and step < 5
            model.layer1.requires_grad_(not frozen)
            if not (skipped.startswith("a step()") and step in (2, 3)):
                loss_of(model, x.to(dtype), y).backward()
            opt.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert_relative_close(a, b, tolerance, f"step {step + 1}")
        # (and the parameters that have a state are the same: none of a group that has not stepped)
        assert sorted(optimizers[0].state_dict()["state"]) == sorted(optimizers[1].state_dict()["state"])


def test_a_nan_gradient_at_the_first_step_changes_nothing_alone_and_freezes_its_run_in_a_stack(batches):
    torch.manual_seed(0)
    model = MLP().double()
    optimizer = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())
    weights = [p.clone() for p in model.parameters()]
    loss_of(model, *batches[0]).backward()
    model.layer1.weight.grad[0, 0] = float("nan")
    with pytest.raises(hyperopt.DivergenceError, match=r"level 0 \(Adam\): the gradient of its parameters is nan "
                                                       r"at step 1"):
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters())) and not optimizer.state[weights[0]]

    runs = batch_models([MLP().double() for _ in range(2)])
    optimizer = hyperopt.stack(["Adam/SGD(1e-5)"] * 2, runs.parameters())
    x, y = batches[0]
    F.nll_loss(runs(x.expand(2, *x.shape)).flatten(0, 1), y.repeat(2)).backward()
    next(runs.parameters()).grad[1].view(-1)[0] = float("inf")
    before = [p.clone() for p in runs.parameters()]
    optimizer.step()
    assert optimizer.diverged() == [{"run": 1, "step": 1, "level": 0, "optimizer": "Adam", "hyperparameter": None}]
    for a, b in zip(before, runs.parameters()):
        assert torch.equal(a[1], b[1]) and not torch.equal(a[0], b[0])


@pytest.mark.parametrize("keep", [False, True])
def test_a_learned_step_size_below_zero_is_said_once_and_kept_at_zero_on_request(keep):
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(64, 1, 28, 28, generator=generator, dtype=torch.float64),
                torch.randint(10, (64,), generator=generator)) for _ in range(12)]
    torch.manual_seed(0)
    model = MLP().double()
    optimizer = hyperopt.stack("SGD(0.01)/SGD(1e3)", model.parameters(), keep_in_range=keep)
    alphas = []
    with pytest.warns(hyperopt.OutOfRangeWarning) as warned:
        for x, y in batches:
            optimizer.zero_grad()
            loss_of(model, x, y).backward()
            optimizer.step()
            alphas.append(optimizer.hyperparameters()[0]["lr"])
    messages = [str(w.message) for w in warned if issubclass(w.category, hyperopt.OutOfRangeWarning)]
    assert len(messages) == 1 and re.match(r"level 0 \(SGD\): the learned 'lr' is -\S+ after step \d+, outside "
                                           r"\[0, ∞\)", messages[0])
    [event] = optimizer.out_of_range()
    assert event["run"] == 0 and event["level"] == 0 and event["hyperparameter"] == "lr" and event["value"] < 0
    assert f"after step {event['step']}," in messages[0]
    assert (min(alphas) >= 0.0) == keep and (0.0 in alphas) == keep
    assert warned[0].filename == __file__  # the warning points at the caller's step()


def test_a_stack_of_runs_notes_each_runs_first_value_out_of_range():
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(64, 1, 28, 28, generator=generator, dtype=torch.float64),
                torch.randint(10, (64,), generator=generator)) for _ in range(6)]
    models = []
    for _ in range(3):
        torch.manual_seed(0)
        models.append(MLP().double())
    runs = batch_models(models)
    optimizer = hyperopt.stack(["SGD(0.01)/SGD(1e3)", "SGD(0.01)/SGD(0)", "SGD(0.01)/SGD(1e3)"], runs.parameters())
    for x, y in batches[:6]:
        optimizer.zero_grad()
        F.nll_loss(runs(x.expand(3, *x.shape)).flatten(0, 1), y.repeat(3)).backward()
        optimizer.step()
    assert [event["run"] for event in optimizer.out_of_range()] == [0, 2]


def scaled_training(model, optimizer, batches, scaler, between=None):
    for x, y in batches:
        optimizer.zero_grad()
        scaler.scale(loss_of(model, x, y)).backward()
        if between is not None:
            between(model, scaler, optimizer)
        scaler.step(optimizer)
        scaler.update()


def test_a_grad_scaler_is_taken_off_exactly_and_a_step_it_skips_is_skipped(batches):
    torch.manual_seed(0)
    models = [MLP().double(), None]
    models[1] = copy.deepcopy(models[0])
    optimizers = [hyperopt.stack("Adam/SGD(1e-5)", m.parameters()) for m in models]
    scaled_training(models[0], optimizers[0], batches, torch.amp.GradScaler("cpu", init_scale=2.0 ** 12))
    for x, y in batches:
        optimizers[1].zero_grad()
        loss_of(models[1], x, y).backward()
        optimizers[1].step()
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.equal(a, b)  # a power of two on and off again changes no bit
    assert optimizers[0].hyperparameters() == optimizers[1].hyperparameters()

    def overflow(model, scaler, optimizer):
        model.layer2.bias.grad[0] = float("inf")
    weights, values = [p.clone() for p in models[0].parameters()], optimizers[0].hyperparameters()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    scaled_training(models[0], optimizers[0], batches[:1], scaler, overflow)
    assert all(torch.equal(a, b) for a, b in zip(weights, models[0].parameters()))
    assert optimizers[0].hyperparameters() == values and scaler.get_scale() == 2.0 ** 11


def test_clipping_sees_the_same_gradient_whether_zero_grad_sets_none_or_zeros(batches):
    torch.manual_seed(0)
    models = [MLP().double(), None]
    models[1] = copy.deepcopy(models[0])
    optimizers = [hyperopt.stack("SGD(0.1, 0.9)/SGD(1e-2)", m.parameters()) for m in models]
    for x, y in batches:
        for model, optimizer, to_none in zip(models, optimizers, (True, False)):
            optimizer.zero_grad(set_to_none=to_none)
            for half in (slice(0, len(x) // 2), slice(len(x) // 2, None)):  # two micro-batches, accumulated
                (loss_of(model, x[half], y[half]) / 2).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            optimizer.step()
    assert optimizers[0].hyperparameters() == optimizers[1].hyperparameters()
    assert optimizers[0].hyperparameters()[0]["lr"] != 0.1


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_nesterov_sgd_is_torch_optim_sgd_with_nesterov(weight_decay, batches):
    torch.manual_seed(0)
    ours = MLP().double()
    theirs = copy.deepcopy(ours)
    optimizers = [hyperopt.stack(f"SGD(0.1, 0.9, {weight_decay}, nesterov=1)", ours.parameters()),
                  torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=weight_decay,
                                  nesterov=True, foreach=False)]
    assert str(optimizers[0]) == f"SGD(0.1, 0.9{', 0.01' if weight_decay else ''}, nesterov=1)"
    for x, y in batches:
        for model, opt in zip((ours, theirs), optimizers):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            opt.step()
    eps = torch.finfo(torch.float64).eps  # to rounding: with several tensors μ and α are one-element tensors
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=50 * eps, atol=50 * eps * float(b.detach().abs().max()))
    with pytest.raises(ValueError, match="nesterov=True needs a momentum"):
        hyperopt.SGD(MLP().parameters(), lr=0.1, nesterov=True)


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_a_one_element_tensor_step_size_is_a_number_as_in_torch_optim(shape, batches):
    torch.manual_seed(0)
    models = [MLP().double(), None]
    models[1] = copy.deepcopy(models[0])
    optimizers = [hyperopt.Adam(models[0].parameters(), lr=torch.full(shape, 0.01, dtype=torch.float64),
                                  hyper=hyperopt.SGD(lr=1e-4)),
                  hyperopt.Adam(models[1].parameters(), lr=0.01, hyper=hyperopt.SGD(lr=1e-4))]
    for x, y in batches[:4]:
        for model, opt in zip(models, optimizers):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            opt.step()
    assert optimizers[0].hyperparameters() == optimizers[1].hyperparameters()


def trained_mlp(spec: str, batches, **options):
    """(the MLP, the stack) after a step on each batch."""
    torch.manual_seed(0)
    model = MLP().double()
    optimizer = hyperopt.stack(spec, model.parameters(), **options)
    for x, y in batches:
        optimizer.zero_grad()
        loss_of(model, x, y).backward()
        optimizer.step()
    return model, optimizer


def assert_resumes_bitwise(spec: str, model, optimizer, saved: dict, batches, **options) -> None:
    """A stack made anew over a copy of the model and loaded from `saved` trains on exactly as the original."""
    copied = copy.deepcopy(model)
    resumed = hyperopt.stack(spec, copied.parameters(), **options)
    resumed.load_state_dict(saved)
    for x, y in batches:
        for m, opt in ((model, optimizer), (copied, resumed)):
            opt.zero_grad()
            loss_of(m, x, y).backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), copied.parameters()))
    assert resumed.hyperparameters() == optimizer.hyperparameters()


def test_a_state_dict_whose_step_is_a_number_loads_as_torch_optim_loads_it(batches):
    """torch.optim wrote its step as a Python number for years, and still loads one."""
    model, optimizer = trained_mlp("Adam/SGD(1e-5)", batches[:3])
    saved = copy.deepcopy(optimizer.state_dict())  # (state_dict() hands out the optimizer's own state)
    for state in saved["state"].values():
        if "step" in state:
            state["step"] = float(state["step"])
    assert_resumes_bitwise("Adam/SGD(1e-5)", model, optimizer, saved, batches[3:6])


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("spec, accumulator", [("AdaGrad(0.01)/SGD(1e-3)", "sum"),
                                               ("RMSProp(0.01, 0.99)/SGD(1e-4)", "square_avg")])
def test_a_checkpoint_of_the_older_format_resumes_bitwise(spec, accumulator, foreach, batches):
    """AdaGrad's and RMSProp's states once kept the last gradient ("grad_prev") where they now keep g / √(G + ε)
    (g / √(s + ε)): a checkpoint saved then goes on as if it had never stopped. The older state is made from the new
    one with the gradient of the last step, which the training loop saw."""
    model, optimizer = trained_mlp(spec, batches[:3], foreach=foreach)
    saved = copy.deepcopy(optimizer.state_dict())
    for index, p in enumerate(model.parameters()):
        state = saved["state"][index]
        assert set(state) - {"step"} == {accumulator, "grad_scaled"}
        del state["grad_scaled"]
        state["grad_prev"] = p.grad.clone()
    assert_resumes_bitwise(spec, model, optimizer, saved, batches[3:6], foreach=foreach)


def test_a_dropped_stack_leaves_no_hook_on_the_parameters():
    model = MLP()
    optimizer = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})
    assert all(p._post_accumulate_grad_hooks for p in model.parameters())
    del optimizer
    gc.collect()
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())


@pytest.mark.parametrize("argument, says", [
    ("fused", "fused= has no meaning here"), ("amsgrad", "amsgrad= is not supported"),
    ("capturable", "capturable= is not needed"), ("differentiable", "differentiable= has no meaning here")])
def test_torch_optims_arguments_without_a_meaning_here_are_refused_saying_why(argument, says):
    with pytest.raises(TypeError, match=f"Adam: {says}"):
        hyperopt.Adam(MLP().parameters(), **{argument: True})


@pytest.mark.parametrize("make, error, says", [
    (lambda: hyperopt.stack("Adam/SGD", MLP().parameters(), for_each=True), TypeError,
     r"stack\(\) got the keyword argument\(s\) \['for_each'\]; its options, for every level, are"),
    (lambda: hyperopt.stack("Adam(eps=1e-9)/SGD", [torch.zeros(4, dtype=torch.float16, requires_grad=True)]),
     ValueError, r"is 0 in torch.float16"),
    (lambda: hyperopt.stack("SGD/SGD", [{"params": [shared]} for shared in [torch.zeros(2, requires_grad=True)] * 2]),
     ValueError, "some parameters appear in more than one parameter group"),
])
def test_an_error_that_is_not_about_the_notation_is_said_without_the_grammar(make, error, says):
    with pytest.raises(error, match=says) as raised:
        make()
    assert "The notation is" not in str(raised.value)


def test_sparse_gradients_are_refused_before_anything_changes():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = hyperopt.stack("Adam/SGD(1e-5)", embedding.parameters())
    before = embedding.weight.detach().clone()
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="Adam does not support sparse gradients"):
        optimizer.step()
    assert torch.equal(embedding.weight, before) and not optimizer.state  # (no entry, as torch.optim makes none)


@pytest.mark.parametrize("optimizer", [hyperopt.SGD, hyperopt.Adam, hyperopt.AdamW, hyperopt.AdaGrad,
                                       hyperopt.RMSProp])
def test_the_step_size_may_be_given_second_as_torch_optim_takes_it(optimizer, batches):
    torch.manual_seed(0)
    models = [MLP().double(), None]
    models[1] = copy.deepcopy(models[0])
    optimizers = [optimizer(models[0].parameters(), 0.003), optimizer(models[1].parameters(), lr=0.003)]
    for x, y in batches[:3]:
        for model, opt in zip(models, optimizers):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(*(m.parameters() for m in models)))
    assert optimizers[0].hyperparameters()[0]["lr"] == 0.003


def run_side_by_side(models, optimizers, batches, schedulers=(None, None), sign=(1.0, 1.0)):
    for x, y in batches:
        for model, opt, scheduler, factor in zip(models, optimizers, schedulers, sign):
            opt.zero_grad()
            (factor * loss_of(model, x, y)).backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()


@pytest.mark.parametrize("optimizer, torch_optimizer", [(hyperopt.Adam, torch.optim.Adam),
                                                        (hyperopt.AdamW, torch.optim.AdamW)])
def test_betas_is_torchs_spelling_of_beta1_and_beta2(optimizer, torch_optimizer, batches):
    torch.manual_seed(0)
    models = [MLP().double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [optimizer(models[0].parameters(), 0.01, betas=(0.8, 0.99)),
                  optimizer(models[1].parameters(), 0.01, beta1=0.8, beta2=0.99)]
    run_side_by_side(models, optimizers, batches[:3])
    assert all(torch.equal(a, b) for a, b in zip(*(m.parameters() for m in models)))
    assert optimizers[0].param_groups[0]["betas"] == (0.8, 0.99)
    with pytest.raises(TypeError, match="give betas=.β1, β2. or beta1= and beta2=, not both"):
        optimizer(MLP().parameters(), betas=(0.8, 0.99), beta1=0.9)
    with pytest.raises(TypeError, match="SGD has no hyperparameter \\['betas'\\]"):
        hyperopt.SGD(MLP().parameters(), betas=(0.8, 0.99))


@pytest.mark.parametrize("ours, theirs", [
    (lambda params: hyperopt.AdamW(params, 1e-3, weight_decay=0.0),
     lambda params: torch.optim.AdamW(params, 1e-3, weight_decay=0.0, foreach=False)),
    # β1 learned at step size 0: the schedule's factor times a learned value that does not move
    (lambda params: hyperopt.stack("Adam^{α,β1}(1e-3)/SGD(0)", params), lambda params: hyperopt.Adam(params, 1e-3))],
    ids=["AdamW against torch's", "a learned beta1 against a fixed one"])
def test_one_cycle_lr_cycles_beta1_as_on_torch_optim(ours, theirs, batches):
    """OneCycleLR's default (cycle_momentum) writes β1 into group["betas"], as torch.optim's Adam keeps it."""
    torch.manual_seed(0)
    models = [MLP().double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [ours(models[0].parameters()), theirs(models[1].parameters())]
    schedulers = [lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=12) for opt in optimizers]
    run_side_by_side(models, optimizers, batches[:7], schedulers)
    for a, b in zip(*(m.parameters() for m in models)):
        assert_relative_close(a, b, 1e-12, "weights")
    betas = optimizers[1].param_groups[0]["betas"]
    assert optimizers[0].param_groups[0]["betas"] == betas and 0.85 < betas[0] < 0.95  # (cycled from 0.95)
    assert optimizers[0].hyperparameters()[0]["beta1"] == pytest.approx(betas[0], rel=1e-12)


def test_beta1_set_by_hand_is_used_and_said_in_betas(batches):
    torch.manual_seed(0)
    models = [MLP().double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [hyperopt.Adam(models[0].parameters(), 1e-3), hyperopt.Adam(models[1].parameters(), 1e-3)]
    run_side_by_side(models, optimizers, batches[:2])
    optimizers[0].param_groups[0]["beta1"] = 0.5
    optimizers[1].param_groups[0]["betas"] = (0.5, 0.999)
    run_side_by_side(models, optimizers, batches[2:4])
    assert all(torch.equal(a, b) for a, b in zip(*(m.parameters() for m in models)))
    assert optimizers[0].param_groups[0]["betas"] == (0.5, 0.999) and optimizers[1].param_groups[0]["beta1"] == 0.5


def test_reading_a_stack_changes_nothing(batches):
    """repr, str and hyperparameters() report a betas= that a schedule wrote since the last step, and leave it for
    the next step to take. (torch 2.11's compiler calls repr while it builds its guards: a read that took betas=
    into beta1 there made the compiled step fail.)"""
    model = MLP().double()
    optimizer = hyperopt.stack("Adam(1e-3)/SGD(1e-5)", model.parameters())
    group = optimizer.param_groups[0]
    group["betas"] = (0.5, 0.999)
    before = dict(group)
    repr(optimizer), str(optimizer)
    assert optimizer.hyperparameters()[0]["beta1"] == pytest.approx(0.5, rel=1e-12)
    assert group == before and group["beta1"] == 0.9
    run_side_by_side([model], [optimizer], batches[:1])
    assert group["beta1"] == 0.5


@pytest.mark.parametrize("optimizer, torch_optimizer, values", [
    (hyperopt.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    (hyperopt.AdamW, torch.optim.AdamW, {"lr": 0.01})])
def test_maximize_is_torch_optims_when_nothing_is_learned(optimizer, torch_optimizer, values, batches):
    torch.manual_seed(0)
    models = [MLP().double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [optimizer(models[0].parameters(), maximize=True, **values),
                  torch_optimizer(models[1].parameters(), maximize=True, foreach=False, **values)]
    run_side_by_side(models, optimizers, batches[:4], sign=(-1.0, -1.0))
    for a, b in zip(*(m.parameters() for m in models)):
        assert_relative_close(a, b, 1e-13, "weights")


@pytest.mark.parametrize("spec", ["SGD(0.1, 0.9, 0.01)/SGD(1e-3)", "Adam/Adam(1e-4)/SGD(1e-5)"])
def test_a_maximizing_stack_takes_the_steps_of_the_minimizing_one_on_the_negated_loss(spec, batches):
    torch.manual_seed(0)
    models = [MLP().double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [hyperopt.stack(spec, models[0].parameters(), maximize=True),
                  hyperopt.stack(spec, models[1].parameters())]
    run_side_by_side(models, optimizers, batches[:5], sign=(-1.0, 1.0))
    assert all(torch.equal(a, b) for a, b in zip(*(m.parameters() for m in models)))
    assert optimizers[0].hyperparameters() == optimizers[1].hyperparameters()
    with pytest.raises(ValueError, match="maximize= is for the weights' optimizer"):
        hyperopt.Adam(MLP().parameters(), hyper=hyperopt.SGD(lr=1e-5, maximize=True))


def test_a_load_that_fails_changes_nothing(batches):
    torch.manual_seed(0)
    model = MLP().double()
    optimizer = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())
    run_side_by_side([model], [optimizer], batches[:3])
    before = copy.deepcopy(optimizer.state_dict())
    damaged = copy.deepcopy(before)
    damaged["hyper"]["param_groups"][0]["hyper_raw"] = torch.zeros(7, 7, dtype=torch.float64)  # not (1, 3)
    with pytest.raises(RuntimeError):
        optimizer.load_state_dict(damaged)
    after = optimizer.state_dict()
    for saved, now in ((before, after), (before["hyper"], after["hyper"])):
        assert [g["hyper_raw"].tolist() for g in saved["param_groups"]] == \
            [g["hyper_raw"].tolist() for g in now["param_groups"]]
        assert all(torch.equal(saved["state"][i][k], now["state"][i][k]) for i in saved["state"]
                   for k in saved["state"][i])
    run_side_by_side([model], [optimizer], batches[3:4])  # and it still steps


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizers_constructor_names_and_documents_its_hyperparameters(name):
    """What an IDE shows: the hyperparameters as arguments, in the notation's order, with their defaults, and an
    Args: entry for each (the table of optimizers is read, so a new one is held to this too)."""
    cls = OPTIMIZERS[name]
    parameters = inspect.signature(cls).parameters
    assert list(parameters)[:len(cls.HYPERPARAMETERS) + 1] == ["params", *cls.HYPERPARAMETERS]
    doc = inspect.getdoc(cls.__init__)
    for argument in ["params", *cls.HYPERPARAMETERS, "**options"]:
        assert re.search(rf"^\s+{re.escape(argument)}:", doc, re.MULTILINE), f"{name}: {argument} undocumented"
    options = inspect.getdoc(hyperopt.Hyperoptimizer.__init__)
    for option in ("hyper", "learn", "check_finite", "keep_in_range", "compile", "foreach", "maximize", "runs",
                   "process_group"):
        assert option in inspect.signature(hyperopt.Hyperoptimizer).parameters
        assert re.search(rf"^\s+{option}:", options, re.MULTILINE), f"{option} undocumented"


@pytest.mark.parametrize("spec, kept", [("SGD(0.01)/SGD(0.01)", "grad_prev"), ("RMSProp/SGD(1e-4)", "grad_scaled"),
                                        ("Adam/SGD(1e-5)", "grad_prev")])
def test_the_state_a_caller_holds_stays_the_optimizers_after_the_next_step(spec, kept, batches):
    # as torch.optim's: a tensor of state_dict() or optimizer.state is the optimizer's, updated in place (a
    # checkpoint taken while training goes on reads it); never memory the step frees
    torch.manual_seed(0)
    model = MLP().double()
    opt = hyperopt.stack(spec, model.parameters())
    for x, y in batches[:3]:
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
    held = {(index, key): value for index, state in opt.state_dict()["state"].items() for key, value in state.items()}
    x, y = batches[3]
    opt.zero_grad()
    loss_of(model, x, y).backward()
    opt.step()
    now = opt.state_dict()["state"]
    assert kept in {key for _, key in held}  # (what the step writes anew each time)
    for (index, key), value in held.items():
        assert value.untyped_storage().nbytes() > 0, (index, key)
        assert torch.equal(value, now[index][key]), (index, key)
