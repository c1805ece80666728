"""A stack in one process, as users run it (a schedule, a GradScaler that unscales to clip, clipping, all three
together), against autograd through the updates actually taken (tests/library/unrolled.py), which reads nothing
of the library."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler

import hyperopt
from models import MLP
from tests.library.unrolled import learned_values, schedule_factors, unrolled


@pytest.fixture
def batches(synthetic_batches):
    return [(x.double(), y) for x, y in synthetic_batches[:10]]


def loss_of(outputs, y):
    return F.nll_loss(outputs, y)


def warmup_from_zero(step):  # 0 at the first update: the weights do not move, nor does α at the next
    return min(1.0, step / 5)


def with_two_stops(step):  # an update not taken (factor 0) at steps 4 and 5
    return 0.0 if step in (3, 4) else 1.0


SCHEDULES = {
    "LambdaLR warmup from 0": lambda opt: lr_scheduler.LambdaLR(opt, warmup_from_zero),
    "LambdaLR with two stops": lambda opt: lr_scheduler.LambdaLR(opt, with_two_stops),
    "OneCycleLR, momentum cycled": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=10),
    "StepLR": lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
}


def train(model, optimizer, batches, learned, scheduler=None, scaler=None, clip=None, in_log=()):
    """The loop as users write it: a schedule stepped after the optimizer, GradScaler unscaling before clipping,
    the loss handed to step where the optimizer asks for it. The learned values after each step."""
    history = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = loss_of(model(x), y)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler and clip:
            scaler.unscale_(optimizer)
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        handed = {"loss": loss.detach()} if optimizer.needs_loss else {}
        if scaler:
            scaler.step(optimizer, **handed)
            scaler.update()
        else:
            optimizer.step(**handed)
        if scheduler:
            scheduler.step()
        history.append(learned_values(optimizer, learned, in_log))
    return history


def assert_trained_as_unrolled(model, ours: list[dict], oracle: tuple[list[dict], dict]) -> None:
    learned, weights = oracle
    assert len(ours) == len(learned)
    for step, (a, b) in enumerate(zip(ours, learned), 1):
        for name in b:
            assert a[name] == pytest.approx(b[name], rel=1e-10, abs=1e-14), f"{name} after step {step}"
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), weights[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("spec, optimizer, values, learned, kappa", [
    ("SGD(0.1)/SGD(0.05)", "SGD", {"lr": 0.1}, ("lr",), 0.05),
    ("SGD(0.1, 0.9)/SGD(1e-2)", "SGD", {"lr": 0.1, "momentum": 0.9}, ("lr", "momentum"), 1e-2),
])
def test_a_schedule_scales_the_update_the_hypergradient_differentiates(schedule, spec, optimizer, values, learned,
                                                                       kappa, batches):
    """The hypergradient at step t differentiates update t-1, taken with the schedule's factor of step t-1."""
    if schedule == "OneCycleLR, momentum cycled" and "momentum" not in values:
        pytest.skip("OneCycleLR cycles the momentum: the stack with one learns it")
    torch.manual_seed(0)
    model = MLP().double()
    oracle = unrolled(copy.deepcopy(model), loss_of, batches, optimizer, values, learned, kappa,
                      factors=schedule_factors(SCHEDULES[schedule], values, len(batches)))
    stack = hyperopt.stack(spec, model.parameters())
    ours = train(model, stack, batches, learned, SCHEDULES[schedule](stack))
    assert_trained_as_unrolled(model, ours, oracle)


def test_adam_learns_alpha_and_both_betas_through_a_schedule(batches):
    torch.manual_seed(0)
    model = MLP().double()
    learned = ("lr", "beta1", "beta2")
    oracle = unrolled(copy.deepcopy(model), loss_of, batches, "Adam", {}, learned, 1e-5,
                      factors=schedule_factors(SCHEDULES["LambdaLR warmup from 0"], {"lr": 1e-3}, len(batches)))
    stack = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())
    ours = train(model, stack, batches, learned, SCHEDULES["LambdaLR warmup from 0"](stack))
    assert_trained_as_unrolled(model, ours, oracle)


@pytest.mark.parametrize("spec, optimizer, learned, kappa", [
    ("SGD(0.1)/SGD(1e-3)", "SGD", ("lr",), 1e-3),
    ("Adam/SGD(1e-5)", "Adam", ("lr", "beta1", "beta2"), 1e-5),
])
@pytest.mark.parametrize("scale", [2.0 ** 16, 3.0 * 2.0 ** 10])
def test_a_grad_scaler_unscaled_before_clipping_leaves_the_hypergradient_of_the_unscaled_gradient(
        spec, optimizer, learned, kappa, scale, batches):
    """The documentation's recipe (docs/training-loop.md), and what Accelerate and the Hugging Face Trainer do in
    fp16: scaler.unscale_(opt), clip, scaler.step(opt). (The scaler's 1/scale is a float32: a scale that is not a power of two leaves each
    gradient off by its rounding, 3072 × float32(1/3072) = 1 + 3.0e-8, for us as for torch.optim.)"""
    torch.manual_seed(0)
    model = MLP().double()
    values = {"lr": 0.1} if optimizer == "SGD" else {}
    rounding = scale * float(torch.tensor(scale, dtype=torch.float64).reciprocal().float())
    oracle = unrolled(copy.deepcopy(model), loss_of, batches, optimizer, values, learned, kappa, clip=0.05,
                      gradient_factor=rounding)
    stack = hyperopt.stack(spec, model.parameters())
    ours = train(model, stack, batches, learned, scaler=torch.amp.GradScaler("cpu", init_scale=scale), clip=0.05)
    assert_trained_as_unrolled(model, ours, oracle)


def test_a_schedule_a_scaler_and_clipping_together(batches):
    torch.manual_seed(0)
    model = MLP().double()
    learned = ("lr", "momentum")
    values = {"lr": 0.1, "momentum": 0.9}
    oracle = unrolled(copy.deepcopy(model), loss_of, batches, "SGD", values, learned, 1e-2, clip=0.05,
                      factors=schedule_factors(SCHEDULES["OneCycleLR, momentum cycled"], values, len(batches)))
    stack = hyperopt.stack("SGD(0.1, 0.9)/SGD(1e-2)", model.parameters())
    ours = train(model, stack, batches, learned, SCHEDULES["OneCycleLR, momentum cycled"](stack),
                 torch.amp.GradScaler("cpu", init_scale=2.0 ** 16), clip=0.05)
    assert_trained_as_unrolled(model, ours, oracle)


@pytest.mark.parametrize("spec, optimizer, values, learned, kappa", [
    ("SGD(0.1, log_lr=1)/SGD(0.5)", "SGD", {"lr": 0.1}, ("lr",), 0.5),
    ("SGD(0.1, 0.9, log_lr=1)/SGD(1e-2)", "SGD", {"lr": 0.1, "momentum": 0.9}, ("lr", "momentum"), 1e-2),
    ("Adam(1e-3, log_lr=1)/SGD(1e-2)", "Adam", {}, ("lr", "beta1", "beta2"), 1e-2),
])
def test_a_step_size_learned_as_its_logarithm_moves_as_autograd_through_the_updates_says(spec, optimizer, values,
                                                                                         learned, kappa, batches):
    """log_lr=True: the level above descends on log α, whose hypergradient is α·∂L/∂α; with a schedule, so that
    the chain rule goes through both the schedule's factor and exp, and a GradScaler unscaling to clip."""
    torch.manual_seed(0)
    model = MLP().double()
    start = {"lr": 1e-3, **values}
    oracle = unrolled(copy.deepcopy(model), loss_of, batches, optimizer, values, learned, kappa, in_log=("lr",),
                      factors=schedule_factors(SCHEDULES["StepLR"], start, len(batches)), clip=0.05)
    stack = hyperopt.stack(spec, model.parameters())
    ours = train(model, stack, batches, learned, SCHEDULES["StepLR"](stack),
                 torch.amp.GradScaler("cpu", init_scale=2.0 ** 16), clip=0.05, in_log=("lr",))
    assert_trained_as_unrolled(model, ours, oracle)
    assert ours[-1]["lr"] != pytest.approx(start["lr"], rel=1e-6)  # it did learn


@pytest.mark.parametrize("spec, optimizer, values, learned, kappa, in_log, share, start", [
    ("SGD(300.0, polyak=1)/SGD(0.05)", "SGD", {"lr": 300.0}, ("lr",), 0.05, (), 1.0, False),
    ("SGD(300.0, 0.9, log_lr=1, polyak=1)/SGD(1e-2)", "SGD", {"lr": 300.0, "momentum": 0.9}, ("lr", "momentum"), 1e-2,
     ("lr",), 1.0, False),
    ("Adam(0.5, polyak=1)/SGD(1e-5)", "Adam", {"lr": 0.5}, ("lr", "beta1", "beta2"), 1e-5, (), 1.0, False),
    ("Adam(0.5, log_lr=1, polyak=1)/SGD(1e-2)", "Adam", {"lr": 0.5}, ("lr", "beta1", "beta2"), 1e-2, ("lr",), 1.0,
     False),
    # a share of the loss, and the first step set at the bound from a step size far below it
    ("SGD(1e-4, polyak=0.3, polyak_start=1)/SGD(0.05)", "SGD", {"lr": 1e-4}, ("lr",), 0.05, (), 0.3, True),
    ("Adam^α(1e-6, log_lr=1, polyak=0.3, polyak_start=1)/SGD(1e-2)", "Adam", {"lr": 1e-6}, ("lr",), 1e-2, ("lr",),
     0.3, True),
])
def test_polyaks_bound_shortens_a_step_and_the_step_size_as_autograd_through_the_steps_taken_says(
        spec, optimizer, values, learned, kappa, in_log, share, start, batches):
    """polyak=c, with a schedule, a GradScaler unscaling to clip, and clipping: a step whose first-order decrease
    (by the gradient before clipping) exceeds c times the loss is scaled down to reach it, the learned step size
    with it, and the next hypergradient is that of the step taken; with polyak_start the first step is scaled to
    the bound whichever side it starts. The step size starts too large (or, set at the start, too small), so that
    the bound scales some steps and not others."""
    torch.manual_seed(0)
    model = MLP().double()
    capped = []
    oracle = unrolled(copy.deepcopy(model), loss_of, batches, optimizer, values, learned, kappa, in_log=in_log,
                      factors=schedule_factors(SCHEDULES["StepLR"], values, len(batches)), clip=0.05,
                      capped=capped, share=share, start=start)
    stack = hyperopt.stack(spec, model.parameters())
    ours = train(model, stack, batches, learned, SCHEDULES["StepLR"](stack),
                 torch.amp.GradScaler("cpu", init_scale=2.0 ** 16), clip=0.05, in_log=in_log)
    assert_trained_as_unrolled(model, ours, oracle)
    assert any(capped) and not all(capped), capped
    if start:  # raised at the first step by orders of magnitude
        assert oracle[0][0]["lr"] > 100 * values["lr"], oracle[0][0]
