"""The step's paths against each other: the multi-tensor path (foreach=True, hyperopt/multi_tensor.py) computes the
single-tensor path's numbers at every step, for every optimizer, stack and param-group layout, on the host path
(Python numbers) and the tensor path (a GPU's); and it keeps each parameter's state as torch.optim does."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

import hyperopt
from hyperopt import hypergradient
from hyperopt.notation import OPTIMIZERS
from tests.library.closeness import assert_relative_close

STACKS = [f"{cls.NAME}/SGD(1e-4)" for cls in OPTIMIZERS.values()] + [
    "SGD(0.1, 0.9)/SGD(1e-3)", "SGD(0.1, 0.9, 0.01, nesterov=1)/Adam(1e-3)", "AdamW^{α,λ}(0.01)/SGD(1e-4)",
    "RMSProp^{α,γ}/RMSProp(1e-4)", "Adam^α/SGD(1e-4)", "Adam/Adam(1e-4)/Adam(1e-5)", "SGD(0.1)",
    "SGD(0.1, 0.9, log_lr=1)/SGD(1e-3)", "Adam(1e-3, log_lr=1)/Adam(1e-2)", "RMSProp(0.01, log_lr=1)/SGD(1e-4)",
    "Adam(0.5, polyak=1)/Adam(1e-2)", "AdamW(0.5, log_lr=1, polyak=1)/SGD(1e-3)"]
LAYOUTS = ["one group", "two groups", "a parameter frozen now and then", "a parameter trained from step 3",
           "two runs"]
STEPS = 6


def parameters(layout: str) -> list[torch.Tensor]:
    """A two-layer network's tensors (with a leading dimension of 2 for two runs), float64."""
    generator = torch.Generator().manual_seed(0)
    lead = (2,) if layout == "two runs" else ()
    shapes = [(5, 6), (5,), (3, 5), (3,)]
    params = [(torch.randn(lead + shape, generator=generator, dtype=torch.float64) / 2).requires_grad_()
              for shape in shapes]
    if layout == "a transposed weight":  # not contiguous, as a channels_last convolution's is not
        params[0] = params[0].detach().t().contiguous().t().requires_grad_()
    return params


def losses(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each run's loss (one for a lone run's tensors)."""
    w1, b1, w2, b2 = params
    hidden = torch.tanh(x @ w1.transpose(-1, -2) + b1.unsqueeze(-2))
    logits = hidden @ w2.transpose(-1, -2) + b2.unsqueeze(-2)
    return F.cross_entropy(logits.reshape(-1, 3), y.reshape(-1), reduction="none").reshape(y.shape).mean(-1)


def loss(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return losses(params, x, y).sum()


def make(spec: str, layout: str, params: list[torch.Tensor], foreach: bool):
    if layout == "two runs":
        return hyperopt.stack([spec, spec], [{"params": params, "runs": 2}], foreach=foreach)
    if layout == "two groups":
        optimizer = hyperopt.stack(spec, [{"params": params[:2]}], foreach=foreach)
        optimizer.add_param_group({"params": params[2:], "lr": optimizer.param_groups[0]["lr"] / 2})
        return optimizer
    return hyperopt.stack(spec, params, foreach=foreach)


def train(spec: str, layout: str, foreach: bool, tensor_path: bool, steps: int = STEPS, resume_at: int | None = None):
    """Each step's weights and learned values; with `resume_at`, the optimizer saved there (torch.save and
    load, weights_only) and rebuilt from the saved state."""
    on_host = hypergradient.on_host
    hypergradient.on_host = (lambda weights: False) if tensor_path else on_host
    try:
        params = parameters(layout)
        optimizer = make(spec, layout, params, foreach)
        generator = torch.Generator().manual_seed(1)
        lead = (2,) if layout == "two runs" else ()
        taken = []
        for step in range(1, steps + 1):
            x = torch.randn(lead + (8, 6), generator=generator, dtype=torch.float64)
            y = torch.randint(0, 3, lead + (8,), generator=generator)
            optimizer.zero_grad(set_to_none=layout != "gradients zeroed in place")
            each = losses(params, x, y)
            each.sum().backward()
            if layout == "a parameter frozen now and then" and step % 3 == 2:
                params[1].grad = None
            if layout == "a parameter trained from step 3" and step < 3:
                params[3].grad = None
            optimizer.step(**{"loss": each.detach()} if optimizer.needs_loss else {})
            if layout == "storages replaced at step 3" and step == 3:  # as Module.to() replaces them
                for p in params:
                    p.data = p.data.clone()
            taken.append([p.detach().clone() for p in params]
                         + [g["hyper_raw"].clone() for level in optimizer.levels() for g in level.param_groups])
            if step == resume_at:
                buffer = io.BytesIO()
                torch.save(optimizer.state_dict(), buffer)
                buffer.seek(0)
                optimizer = make(spec, layout, params, foreach)
                optimizer.load_state_dict(torch.load(buffer, weights_only=True))
        return taken, optimizer
    finally:
        hypergradient.on_host = on_host


@pytest.mark.parametrize("tensor_path", [False, True], ids=["numbers", "tensors"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spec", STACKS)
def test_the_multi_tensor_path_computes_the_single_tensor_paths_numbers(spec, layout, tensor_path):
    single, single_optimizer = train(spec, layout, foreach=False, tensor_path=tensor_path)
    multi, multi_optimizer = train(spec, layout, foreach=True, tensor_path=tensor_path)
    for step, (ours, theirs) in enumerate(zip(multi, single), 1):
        for index, (a, b) in enumerate(zip(ours, theirs)):
            assert_relative_close(a, b, 1e-12, f"step {step}, tensor {index}")
    for level_multi, level_single in zip(multi_optimizer.levels(), single_optimizer.levels()):
        for p_multi, p_single in zip(level_multi.state, level_single.state):
            a, b = level_multi.state[p_multi], level_single.state[p_single]
            assert sorted(a) == sorted(b)
            for key in a:
                assert a[key].shape == b[key].shape, key
                assert_relative_close(a[key], b[key], 1e-12, key)


@pytest.mark.parametrize("tensor_path", [False, True], ids=["numbers", "tensors"])
@pytest.mark.parametrize("layout", ["gradients zeroed in place", "storages replaced at step 3", "a transposed weight"])
@pytest.mark.parametrize("spec", ["SGD(0.1, 0.9)/SGD(1e-3)", "SGD(0.1)/SGD(1e-3)", "Adam/SGD(1e-4)",
                                  "AdamW^{α,λ}(0.01)/SGD(1e-4)"])
def test_the_multi_tensor_path_follows_what_the_caller_changes(spec, layout, tensor_path):
    """The multi-tensor path keeps flat tensors and views of the parameters from step to step: gradients refilled
    in place, parameters whose storage is replaced, and a weight no flat view can be made of change nothing."""
    single, _ = train(spec, layout, foreach=False, tensor_path=tensor_path)
    multi, _ = train(spec, layout, foreach=True, tensor_path=tensor_path)
    for step, (ours, theirs) in enumerate(zip(multi, single), 1):
        for index, (a, b) in enumerate(zip(ours, theirs)):
            assert_relative_close(a, b, 1e-12, f"step {step}, tensor {index}")


@pytest.mark.parametrize("spec", ["Adam/SGD(1e-4)", "SGD(0.1, 0.9)/SGD(1e-3)", "AdamW^{α,λ}(0.01)/SGD(1e-4)"])
@pytest.mark.parametrize("layout", ["one group", "two runs"])
def test_the_multi_tensor_path_resumes_bitwise(spec, layout):
    whole, _ = train(spec, layout, foreach=True, tensor_path=False)
    resumed, _ = train(spec, layout, foreach=True, tensor_path=False, resume_at=3)
    for ours, theirs in zip(resumed, whole):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_each_parameters_state_is_its_own_on_the_multi_tensor_path():
    """What torch.optim's users read: state[p]'s buffers shaped like p, changed by the steps, kept by a copy."""
    params = parameters("one group")
    optimizer = hyperopt.stack("Adam/SGD(1e-4)", params, foreach=True)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    for _ in range(2):
        optimizer.zero_grad()
        loss(params, x, y).backward()
        optimizer.step()
    before = {key: value.clone() for key, value in optimizer.state[params[0]].items()}
    assert optimizer.state[params[0]]["m"].shape == params[0].shape
    assert optimizer.state[params[0]]["m"]._base is optimizer.state[params[1]]["m"]._base is not None  # (one buffer)
    saved = copy.deepcopy(optimizer.state_dict())
    optimizer.zero_grad()
    loss(params, x, y).backward()
    optimizer.step()
    assert not torch.equal(optimizer.state[params[0]]["m"], before["m"])
    assert all(torch.equal(saved["state"][0][key], before[key]) for key in before)


@pytest.mark.parametrize("spec", ["SGD(0.1, 0.9)/SGD(1e-3)", "Adam/SGD(1e-5)", "AdamW/SGD(1e-5)", "Adam/Adam/Adam"])
def test_the_multi_tensor_paths_kernels_do_not_grow_with_the_number_of_tensors(spec, monkeypatch):
    """Counted as scripts/bench_kernels.py counts them (every aten operation that is not a view), on the path a
    GPU takes: ResNet-20's 59 tensors and a 200-tensor MLP launch as many; one value is read back to the host, on
    the single-tensor path too (a GPU waits for each)."""
    from scripts import bench_kernels
    monkeypatch.setattr(hypergradient, "on_host", lambda weights: False)
    counts = [bench_kernels.count(model, spec, foreach=True) for model in ("resnet20", "mlp200")]
    assert counts[0]["tensors"] < counts[1]["tensors"]
    assert counts[0]["kernels"] == counts[1]["kernels"]
    assert counts[0]["host_reads"] == counts[1]["host_reads"] == 1
    single = bench_kernels.count("resnet20", spec, foreach=False)
    assert single["kernels"] > 5 * counts[0]["kernels"] and single["host_reads"] == 1
