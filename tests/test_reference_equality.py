"""Step-for-step equality with the paper's reference code on real MNIST batches, in float64."""

import pytest
import torch

from models import MLP
from tests.closeness import assert_relative_close
from tests.reference import run_ours, run_reference

TABLE_1_STACKS = [
    "SGD(0.01)", "SGD/SGD", "SGD/Adam(0.1)", "SGD/AdaGrad", "SGD/RMSProp(0.1)",
    "Adam", "Adam/SGD(1e-5)", "Adam^α/SGD(1e-5)", "Adam/Adam", "Adam^α/Adam",
    "AdaGrad", "AdaGrad/SGD", "AdaGrad/AdaGrad",
    "RMSProp", "RMSProp^α/SGD(1e-4)", "RMSProp^{α,γ}/SGD(1e-4)", "RMSProp^α/RMSProp(1e-4)",
    "RMSProp^{α,γ}/RMSProp(1e-4)",
]
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


@pytest.mark.parametrize("hypergradient", ["closed_form", "autograd"])
@pytest.mark.parametrize("spec", TABLE_1_STACKS + OTHER_STACKS)
def test_matches_reference_step_for_step(spec, hypergradient, mnist_batches):
    torch.manual_seed(0)
    model = MLP().double()
    reference = run_reference(spec, model, mnist_batches)
    ours = run_ours(spec, model, mnist_batches, hypergradient=hypergradient)
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
