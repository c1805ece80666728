"""Step-for-step equality with the paper's reference code, in float64: on synthetic batches in the fast tier, on
real MNIST batches in the full suite. Skipped where the reference code is not installed (the `test` extra)."""

import copy

import pytest
import torch
import torch.nn.functional as F

import hyperopt
from experiments.paper import TABLE_1_STACKS
from experiments.step import train_step
from models import MLP
from tests.library.closeness import assert_relative_close

reference = pytest.importorskip("experiments.reference", reason="the paper's reference code (the test extra)",
                                exc_type=ImportError)
natural_values, reference_step, run_ours, run_reference = (
    reference.natural_values, reference.reference_step, reference.run_ours, reference.run_reference)

OTHER_STACKS = [
    "SGD(0.1, 0.9)", "SGD(lr=0.1, momentum=0.9)/SGD(1e-3)", "SGD(0.05, 0.5)/Adam(1e-3)",
    "SGD/SGD(0.01)/SGD(0.01)/SGD(0.01)", "Adam/SGD(1e-5)/Adam(1e-3)/SGD(1e-4)", "RMSProp/Adam(1e-3)/AdaGrad(1e-3)",
]
RELATIVE = 1e-9


def assert_close(ours, reference, what):
    assert_relative_close(ours, reference, RELATIVE, what)


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the reference makes its hyperparameters in the default dtype
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(params=["synthetic", pytest.param("mnist", marks=pytest.mark.slow)])
def batches(request):
    return request.getfixturevalue(f"{request.param}_batches")


@pytest.mark.parametrize("spec", TABLE_1_STACKS + OTHER_STACKS)
def test_matches_reference_step_for_step(spec, batches):
    torch.manual_seed(0)
    model = MLP().double()
    reference = run_reference(spec, model, batches)
    ours = run_ours(spec, model, batches)
    for step, (ref_loss, ref_w, ref_h, our_loss, our_w, our_h) in enumerate(zip(*reference, *ours)):
        assert_close(our_loss, ref_loss, f"{spec} loss at step {step}")
        assert_close(our_w, ref_w, f"{spec} weights at step {step}")
        assert len(our_h) == len(ref_h)
        for level, (ref_level, our_level) in enumerate(zip(ref_h, our_h)):
            for name, value in ref_level.items():
                assert_close(our_level[name], value, f"{spec} level {level} {name} at step {step}")
    # the hyperparameters must actually have moved, or the comparison proves little
    if "/" in spec:
        assert ours[2][-1][0] != ours[2][0][0]


@pytest.mark.parametrize("foreach", [False, True], ids=["single tensor", "multi tensor"])
@pytest.mark.parametrize("tensor_path", [False, True], ids=["numbers", "tensors"])
@pytest.mark.parametrize("spec, steps", [("Adam(1e-3, 1e-300)/SGD(1e-5)", 10), ("Adam(1e-3, 0.9, 1e-300)/SGD(1e-5)", 3),
                                         ("RMSProp(0.01, 1e-300)/SGD(1e-4)", 10)])
def test_a_beta_at_0_is_learned_as_the_reference_learns_it(spec, steps, tensor_path, foreach, synthetic_batches,
                                                           monkeypatch):
    """A β (or γ) stored as atanh(2β - 1) that has reached 0 (below about -9 stored in float32, -19 in float64; the
    first GPU run's Adam/SGD/SGD on ResNet-20 took β1 there within 5 steps), here from the start (-inf stored, as
    the reference stores a β below 1e-16): the reference trains on, its β held at 0 by a hypergradient of 0 (the
    parameterisation's derivative is 0 there). Ours once stopped with a NaN hypergradient: its terms recover the
    old average as (new - g) / β, 0 / 0 at β = 0. (A linear model: none of its gradients is 0, which with β2 = 0
    would put √v̂ at 0, where the reference's hypergradient is NaN as well. With β2 near 0 the update is about
    α sign(g), and the difference from the reference grows a hundredfold a step, at β2 = 1e-6 as at 0: 3 steps.)"""
    if tensor_path:
        monkeypatch.setattr(hyperopt.hypergradient, "on_host", lambda weights: False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10), torch.nn.LogSoftmax(-1)).double()
    reference = run_reference(spec, model, synthetic_batches[:steps])
    ours = run_ours(spec, model, synthetic_batches[:steps], foreach=foreach)
    name = "gamma" if spec.startswith("RMSProp") else "beta1" if "0.9" not in spec else "beta2"
    for step, (ref_w, ref_h, our_w, our_h) in enumerate(zip(*reference[1:], *ours[1:])):
        assert_close(our_w, ref_w, f"weights at step {step}")
        assert our_h[0][name] == ref_h[0][name] == 0.0
        assert_close(our_h[0]["lr"], ref_h[0]["lr"], f"lr at step {step}")
    assert ours[2][-1][0]["lr"] != ours[2][0][0]["lr"]


def test_weight_decay_hypergradients_are_those_of_the_l2_regularised_loss(batches):
    """SGD(α, μ, λ)/SGD(κ) equals the reference code minimising loss + (λ/2)|w|², step for step."""
    decay, spec = 0.01, "SGD(0.1, 0.9)/SGD(1e-3)"
    torch.manual_seed(0)
    model = MLP().double()
    theirs = copy.deepcopy(model)
    ours = hyperopt.stack("SGD(0.1, 0.9, 0.01)/SGD(1e-3)", model.parameters())

    def regularised(output, y):
        return F.nll_loss(output, y) + decay / 2 * sum(p.pow(2).sum() for p in theirs.parameters())
    wrapper, reference = reference_step(spec, theirs, regularised)
    for step, (x, y) in enumerate(batches[:20]):
        train_step(model, ours, x, y)
        reference(x, y)
        for name, value in natural_values(wrapper.optimizer)[0].items():
            assert_close(ours.hyperparameters()[0][name], value, f"{name} at step {step}")
        assert_close(torch.cat([p.reshape(-1) for p in model.parameters()]),
                     torch.cat([p.detach().reshape(-1) for p in theirs.parameters()]), f"weights at step {step}")
    assert ours.hyperparameters()[0]["lr"] != 0.1 and ours.hyperparameters()[0]["momentum"] != 0.9


@pytest.mark.parametrize("spec", ["SGD/Adam(0.1)", "Adam^α/Adam", "RMSProp/SGD(1e-4)"])
def test_the_reference_backend_of_the_harness_computes_our_numbers(spec, synthetic_batches):
    """backend=reference drives the reference code through the harness's own step (experiments.tasks.train_step):
    step for step, the same numbers as our optimizer."""
    torch.manual_seed(0)
    model = MLP().double()
    theirs, ours = copy.deepcopy(model), copy.deepcopy(model)
    backend, optimizer = reference.ReferenceBackend(spec, theirs), hyperopt.stack(spec, ours.parameters())
    for step, (x, y) in enumerate(synthetic_batches[:10]):
        assert_close(train_step(theirs, backend, x, y), train_step(ours, optimizer, x, y), f"loss at step {step}")
        for level, (their_level, our_level) in enumerate(zip(backend.hyperparameters(), optimizer.hyperparameters())):
            for name, value in their_level.items():
                assert_close(our_level[name], value, f"level {level} {name} at step {step}")
    assert_close(torch.cat([p.reshape(-1) for p in ours.parameters()]),
                 torch.cat([p.detach().reshape(-1) for p in theirs.parameters()]), "weights")
    assert optimizer.hyperparameters()[0]["lr"] != hyperopt.stack(spec, MLP().parameters()).hyperparameters()[0]["lr"]


CLIPPINGS = {
    "clip_grad_norm_": lambda params: torch.nn.utils.clip_grad_norm_(params, 0.05),
    "clip_grad_value_": lambda params: torch.nn.utils.clip_grad_value_(params, 1e-3),
}


@pytest.mark.parametrize("clip", CLIPPINGS)
@pytest.mark.parametrize("spec", ["SGD(0.5)/SGD(1e-2)", "SGD(0.1, 0.9)/SGD(1e-3)", "Adam/SGD(1e-5)",
                                  "RMSProp/SGD(1e-4)/SGD(1e-4)", "Adam(1e-3, 1e-300)/SGD(1e-5)"])
def test_with_clipping_the_hypergradient_is_the_reference_codes(spec, clip, batches):
    """Clipping between backward() and step() changes the step taken, not the derivative of the loss: the
    hypergradient is from the gradient as backward made it (the reference gets it from the graph)."""
    torch.manual_seed(0)
    model = MLP().double()
    theirs = copy.deepcopy(model)
    ours = hyperopt.stack(spec, model.parameters())
    wrapper = reference.gdtuo.ModuleWrapper(theirs, optimizer=reference.reference_stack(spec))
    wrapper.initialize()
    for step, (x, y) in enumerate(batches[:12]):
        ours.zero_grad()
        F.nll_loss(model(x), y).backward()
        CLIPPINGS[clip](model.parameters())
        ours.step()
        wrapper.begin()
        loss = F.nll_loss(wrapper.forward(x), y)
        wrapper.zero_grad()
        loss.backward(create_graph=True)
        CLIPPINGS[clip](theirs.parameters())
        wrapper.step()
        for level, (our_level, ref_level) in enumerate(zip(ours.hyperparameters(), natural_values(wrapper.optimizer))):
            for name, value in ref_level.items():
                assert_close(our_level[name], value, f"level {level} {name} at step {step}")
        assert_close(torch.cat([p.reshape(-1) for p in model.parameters()]),
                     torch.cat([p.detach().reshape(-1) for p in theirs.parameters()]), f"weights at step {step}")
    assert ours.hyperparameters()[0]["lr"] != hyperopt.stack(spec, MLP().parameters()).hyperparameters()[0]["lr"]
