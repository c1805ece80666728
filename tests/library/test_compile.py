"""The step as one graph: no graph breaks under torch.compile for any stack, and a compiled step computes what the
eager step computes, step for step."""

import copy
import sys

import pytest
import torch
import torch.nn.functional as F

import hyperopt
from experiments.paper import TABLE_1_STACKS
from models import MLP, batch_models
from tests.library.closeness import assert_relative_close

TALL = ["SGD(0.1, 0.9)/SGD(1e-3)/SGD(1e-4)/SGD(1e-4)", "Adam/SGD(1e-5)/Adam(1e-3)/SGD(1e-4)",
        "AdaGrad/AdaGrad/AdaGrad(1e-3)/SGD(1e-4)", "RMSProp^{α,γ}/RMSProp(1e-4)/RMSProp(1e-4)/SGD(1e-4)"]
RUNS = 3


def prepared(spec: str, runs: int | None, steps: int = 2):
    """A float64 MLP (or a network of runs) and its stack, `steps` steps in, the next gradient computed."""
    torch.manual_seed(0)
    if runs is None:
        model = MLP().double()
        optimizer = hyperopt.stack(spec, model.parameters())
    else:
        model = batch_models([MLP().double() for _ in range(runs)])
        optimizer = hyperopt.stack([spec] * runs, model.parameters())
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.rand((runs or 1) * 32, 1, 28, 28, generator=generator, dtype=torch.float64),
                torch.randint(0, 10, ((runs or 1) * 32,), generator=generator)) for _ in range(8)]

    def gradient(x, y):
        x = x if runs is None else x.unflatten(0, (runs, -1))
        optimizer.zero_grad()
        F.nll_loss(model(x).reshape(-1, 10), y).backward()
    for x, y in batches[:steps]:
        gradient(x, y)
        optimizer.step()
    return model, optimizer, gradient, batches[steps:]


def graph_breaks(step) -> int:
    return torch._dynamo.explain(step)().graph_break_count


def assert_trained_alike(compiled_model, compiled, eager_model, eager, runs: int | None = None) -> None:
    """The weights and every learned value (of each run) of a compile=True stack and of its eager twin, to rounding
    (float64)."""
    for (name, a), b in zip(compiled_model.named_parameters(), eager_model.parameters()):
        assert_relative_close(a, b, 1e-10, name)
    for run in range(runs or 1):
        for ours, theirs in zip(compiled.hyperparameters(run=run), eager.hyperparameters(run=run)):
            assert ours == pytest.approx(theirs, rel=1e-10), f"run {run}"


CASES = [(spec, None) for spec in TABLE_1_STACKS + TALL] + [("Adam/SGD(1e-5)", RUNS), (TALL[0], RUNS)]


@pytest.mark.slow  # dynamo traces each step: a second or two each
@pytest.mark.parametrize("spec, runs", CASES)
def test_the_step_compiles_without_graph_breaks(spec, runs):
    model = MLP()
    adam = torch.optim.Adam(model.parameters())
    F.nll_loss(model(torch.rand(4, 1, 28, 28)), torch.zeros(4, dtype=torch.long)).backward()
    adam.step()
    _, optimizer, gradient, batches = prepared(spec, runs)
    gradient(*batches[0])
    assert graph_breaks(optimizer.step) <= graph_breaks(adam.step) == 0


@pytest.mark.slow  # compiling takes seconds (aot_eager) to tens of seconds (inductor)
@pytest.mark.parametrize("spec, runs, backend", [(spec, runs, "aot_eager") for spec, runs in CASES]
                         + [("Adam/SGD(1e-5)", None, "inductor")])
def test_a_compiled_step_computes_the_eager_numbers(spec, runs, backend):
    """torch.compile(opt.step) against opt.step from the same state, float64: a lone run's eager step does its
    scalars in Python numbers and the compiled one in tensors; inductor also fuses and reorders the arithmetic."""
    eager_model, eager, eager_gradient, batches = prepared(spec, runs)
    compiled_model, optimizer, compiled_gradient, _ = prepared(spec, runs)
    step = torch.compile(optimizer.step, backend=backend)
    for number, (x, y) in enumerate(batches, 3):
        eager_gradient(x, y)
        eager.step()
        compiled_gradient(x, y)
        step()
        for (name, a), b in zip(compiled_model.named_parameters(), eager_model.parameters()):
            assert_relative_close(a, b, 1e-10, f"{name} at step {number}")
    for run in range(runs or 1):
        pairs = zip(optimizer.hyperparameters(run=run), eager.hyperparameters(run=run))
        for level, (ours, theirs) in enumerate(pairs):
            for name, value in theirs.items():
                assert ours[name] == pytest.approx(value, rel=1e-10), f"level {level} {name}"
    assert eager.hyperparameters(run=0) != prepared(spec, runs, steps=0)[1].hyperparameters(run=0) or "/" not in spec


@pytest.mark.slow  # compiling takes seconds
@pytest.mark.parametrize("spec", ["SGD(0.1, 0.9)/SGD(1e-3)", "Adam/SGD(1e-5)"])
@pytest.mark.parametrize("eager_steps", [0, 2])
def test_a_compiled_step_keeps_the_hypergradient_of_the_gradient_before_clipping(spec, eager_steps):
    """A compiled step reads no version counters: once it has been compiled, the hooks keep a copy of every
    gradient as backward made it. (Compiled from the first step, or after eager steps that clipped.)"""
    def clipped(model, gradient):
        def clip_after(x, y):
            gradient(x, y)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        return clip_after
    eager_model, eager, eager_gradient, _ = prepared(spec, None, steps=0)
    model, optimizer, gradient, batches = prepared(spec, None, steps=0)
    eager_gradient, gradient = clipped(eager_model, eager_gradient), clipped(model, gradient)
    step = torch.compile(optimizer.step, backend="aot_eager")
    for number, (x, y) in enumerate(batches + batches, 1):
        eager_gradient(x, y)
        eager.step()
        gradient(x, y)
        optimizer.step() if number <= eager_steps else step()
    for (name, a), b in zip(model.named_parameters(), eager_model.parameters()):
        assert_relative_close(a, b, 1e-10, name)
    assert optimizer.hyperparameters()[0]["lr"] == pytest.approx(eager.hyperparameters()[0]["lr"], rel=1e-10)


@pytest.mark.slow  # inductor compiles the step: ten seconds or so
def test_compile_true_compiles_the_whole_step_once_whatever_the_schedules_set():
    """compile=True: the whole step under torch.compile from the third step, one graph for the run while schedules
    move a learned value's factor (the weights' level) and a fixed step size (the top) every step, and clipping
    changes the gradients; the eager step's numbers (float64). Once compiled, a step makes no tensor of numbers
    (torch.tensor): on a GPU that is a copy from the host, which waits for every kernel queued before it. (Watched
    with sys.setprofile: dynamo guards on torch.tensor itself, so replacing it would compile the step again.)"""
    made = []

    def watch(frame, event, function):
        if event == "c_call" and function is torch.tensor:
            made.append(frame.f_code.co_name)
    runs = []
    for compile in (True, False):
        model, optimizer, gradient, batches = prepared("Adam/SGD(1e-5)", None, steps=0)
        optimizer.compile = compile
        schedules = [torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1)),
                     torch.optim.lr_scheduler.StepLR(optimizer.hyper, step_size=1, gamma=0.8)]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        for number, (x, y) in enumerate(batches, 1):
            gradient(x, y)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            made.clear()
            sys.setprofile(watch)
            try:
                optimizer.step()
            finally:
                sys.setprofile(None)
            if compile and number > 3:  # (the third step is traced)
                assert made == [], f"step {number}"
            for schedule in schedules:
                schedule.step()
        runs.append((model, optimizer, torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs))
    (compiled_model, compiled, graphs), (eager_model, eager, _) = runs
    assert graphs == 1
    assert_trained_alike(compiled_model, compiled, eager_model, eager)
    assert isinstance(compiled.param_groups[0]["lr"], float) and compiled.param_groups[0]["last_step"]["lr"] == \
        eager.param_groups[0]["last_step"]["lr"]


@pytest.mark.slow  # inductor compiles the step, and again for each case below: tens of seconds
def test_compile_true_takes_a_loaded_state_and_a_step_where_a_parameter_has_no_gradient():
    """The compiled step reads no parameter's state where the flat buffers are found to be theirs just before the
    call (so that torch.compile guards on none of their tensors). A load_state_dict replaces the states, and a step
    where one parameter has no gradient steps the others alone: both take the eager numbers (float64)."""
    runs = []
    for compile in (True, False):
        model, optimizer, gradient, batches = prepared("SGD(0.1, 0.9)/SGD(1e-3)", None, steps=0)
        optimizer.compile = compile
        for number, (x, y) in enumerate(batches, 1):
            gradient(x, y)
            if number == 7:
                list(model.parameters())[-1].grad = None
            optimizer.step()
            if number == 2:
                saved = copy.deepcopy(optimizer.state_dict())
            if number == 4:  # (compiled from the third step)
                optimizer.load_state_dict(saved)
        runs.append((model, optimizer))
    (compiled_model, compiled), (eager_model, eager) = runs
    assert_trained_alike(compiled_model, compiled, eager_model, eager)
    for p, q in zip(compiled_model.parameters(), eager_model.parameters()):  # the states a caller reads
        assert compiled.state[p].keys() == eager.state[q].keys()
        for key, value in eager.state[q].items():
            assert_relative_close(compiled.state[p][key], value, 1e-10, key)


@pytest.mark.slow  # inductor compiles the step: ten seconds or so
def test_compile_true_under_a_scaler_clipping_and_a_cycling_schedule_takes_the_eager_numbers():
    """As a mixed-precision loop runs it: a GradScaler (which hands itself to step), the gradients unscaled and
    clipped before the step, OneCycleLR moving the step size and β1 every step; compiled and eager, float64."""
    runs = []
    for compile in (True, False):
        model, optimizer, _, batches = prepared("Adam/SGD(1e-5)", None, steps=0)
        optimizer.compile = compile
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=len(batches))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        for x, y in batches:
            optimizer.zero_grad()
            scaler.scale(F.nll_loss(model(x), y)).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
        runs.append((model, optimizer))
    (compiled_model, compiled), (eager_model, eager) = runs
    assert_trained_alike(compiled_model, compiled, eager_model, eager)


@pytest.mark.slow  # inductor compiles a step for each stack (its cache makes the later ones quick)
def test_every_compile_true_stack_in_a_process_is_compiled_however_many_there_are():
    """Dynamo keeps at most recompile_limit graphs (8) per code object, and every compile=True stack compiles its
    own: each stack compiles a copy of the step, so the ninth in a process (the third here, under a limit of 2) is
    compiled too, not run eagerly with a line in dynamo's log."""
    with torch._dynamo.config.patch(recompile_limit=2):
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        twins = [prepared("SGD(0.1)/SGD(1e-3)", None, steps=0) for _ in range(4)]
        for _, optimizer, _, _ in twins[1:]:
            optimizer.compile = True
        for x, y in twins[0][3]:
            for _, optimizer, gradient, _ in twins:
                gradient(x, y)
                optimizer.step()
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 3
    eager_model, eager = twins[0][:2]
    for compiled_model, compiled, _, _ in twins[1:]:
        assert_trained_alike(compiled_model, compiled, eager_model, eager)


@pytest.mark.slow  # inductor compiles the step: ten seconds or so
@pytest.mark.parametrize("spec", ["Adam/SGD(1e-5)", TALL[0]])
def test_compile_true_steps_a_stack_of_runs_as_the_eager_step_does(spec):
    """Runs stacked in one param group (runs=3): the compiled step takes each run's own values, as the eager step
    does (float64)."""
    runs = []
    for compile in (True, False):
        model, optimizer, gradient, batches = prepared(spec, RUNS, steps=0)
        optimizer.compile = compile
        for x, y in batches:
            gradient(x, y)
            optimizer.step()
        runs.append((model, optimizer))
    (compiled_model, compiled), (eager_model, eager) = runs
    assert_trained_alike(compiled_model, compiled, eager_model, eager, RUNS)


@pytest.mark.slow  # inductor compiles the step: ten seconds or so
def test_compile_true_makes_no_state_for_a_parameter_that_never_had_a_gradient():
    """As the eager step and torch.optim: a parameter never stepped has no entry in the state (nor in a saved one)."""
    saved = []
    for compile in (True, False):
        model, optimizer, gradient, batches = prepared("Adam/SGD(1e-5)", None, steps=0)
        optimizer.compile = compile
        for x, y in batches[:4]:
            gradient(x, y)
            list(model.parameters())[-1].grad = None
            optimizer.step()
        saved.append(sorted(optimizer.state_dict()["state"]))
    assert saved[0] == saved[1] == [0, 1, 2]
