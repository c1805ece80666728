"""On a CUDA device, against the CPU: every model, batched and not, every optimizer (in float64), bf16 autocast and
channels_last; and a stack of runs steps without synchronising the device. Skipped without CUDA; the GPU suite
(scripts/device_suite.sh) runs them with `pytest -m cuda`."""

import copy

import pytest
import torch
import torch.nn.functional as F

import hyperopt
from experiments.step import forward_precision
from models import CharRNN, MLP, batch_models, resnet20
from tests.library.closeness import assert_relative_close

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
STEPS = 5
# The same arithmetic in other kernels (cuBLAS, cuDNN) and summation orders, amplified by a few steps of training.
# In float64 on an H200 (torch 2.11) ResNet-20's weights after 5 steps differed from the CPU's by at most 1.7e-9.
# float32 is no oracle for ResNet-20 at batch 8: there the CPU's own float32 run is 3e-4 from its float64 run (the
# GPU's: 3e-4 without cuDNN, 3e-3 with it, TF32 on or off).
FLOAT64 = 1e-8
FLOAT32 = 1e-4
STACKS = ["SGD(0.05, 0.9)/SGD(1e-4)", "Adam/SGD(1e-5)", "AdaGrad/SGD(1e-4)", "RMSProp/SGD(1e-5)",
          "Adam^α/Adam(1e-3)", "SGD(0.05)/SGD(1e-4)/SGD(1e-4)"]
MODELS = {
    "mlp": (lambda: MLP(), lambda g: (torch.rand(16, 784, generator=g), torch.randint(10, (16,), generator=g))),
    "resnet20": (resnet20, lambda g: (torch.rand(8, 3, 32, 32, generator=g), torch.randint(10, (8,), generator=g))),
    "char_rnn": (lambda: CharRNN(20, embedding=8, hidden=16),
                 lambda g: (torch.randint(20, (4, 10), generator=g), torch.randint(20, (4, 10), generator=g))),
}


@pytest.fixture(autouse=True)
def float32_as_the_cpu_computes_it():
    """cuDNN may compute float32 convolutions and LSTMs in TF32 by default (a 10-bit mantissa), which the CPU does
    not: the tests that compare float32 compare it with float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def output_of(model, x):
    output = model(x)
    return output[0] if isinstance(output, tuple) else output


def train(model, optimizer, batches, device, precision="fp32", memory_format=torch.contiguous_format):
    losses = []
    dtype = next(model.parameters()).dtype
    for x, y in batches:
        x, y = x.to(device, dtype) if x.is_floating_point() else x.to(device), y.to(device)
        if x.dim() == 4:
            x = x.contiguous(memory_format=memory_format)
        with forward_precision(precision, torch.device(device)):
            output = output_of(model, x)
            loss = F.nll_loss(output.to(torch.promote_types(output.dtype, torch.float32)).flatten(0, -2), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def batches_of(model_name, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [MODELS[model_name][1](generator) for _ in range(STEPS)]


def on_both(model_name, spec, dtype=torch.float32, **options):
    torch.manual_seed(0)
    model = MODELS[model_name][0]()
    results = []
    for device in ("cpu", "cuda"):
        copied = copy.deepcopy(model).to(device, dtype)
        if options.get("memory_format") is not None:
            copied = copied.to(memory_format=options["memory_format"])
        optimizer = hyperopt.stack(spec, copied.parameters())
        losses = train(copied, optimizer, batches_of(model_name), device, **options)
        results.append((losses, copied, optimizer))
    return results


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("spec", STACKS)
def test_every_model_and_optimizer_on_cuda_computes_what_it_computes_on_the_cpu(model_name, spec):
    (cpu_losses, cpu_model, cpu_opt), (gpu_losses, gpu_model, gpu_opt) = on_both(model_name, spec, torch.float64)
    assert_relative_close(gpu_losses, cpu_losses, FLOAT64, "losses")
    for (name, a), b in zip(gpu_model.state_dict().items(), cpu_model.state_dict().values()):
        assert_relative_close(a.cpu(), b, FLOAT64, name)
    for gpu_level, cpu_level in zip(gpu_opt.hyperparameters(), cpu_opt.hyperparameters()):
        assert gpu_level == pytest.approx(cpu_level, rel=FLOAT64)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_batched_models_on_cuda_compute_what_they_compute_on_the_cpu(model_name):
    specs = ["Adam/SGD(1e-5)", "Adam(3e-3)/SGD(1e-5)", "Adam(5e-4)/SGD(1e-4)"]
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(MODELS[model_name][0]())
    data = [batches_of(model_name, seed) for seed in range(3)]
    stacked = [(torch.stack([run[step][0] for run in data]), torch.stack([run[step][1] for run in data]))
               for step in range(STEPS)]
    results = []
    for device in ("cpu", "cuda"):
        network = batch_models([copy.deepcopy(model) for model in models]).to(device, torch.float64)
        optimizer = hyperopt.stack(specs, network.parameters())
        losses = []
        for x, y in stacked:
            x, y = x.to(device, torch.float64) if x.is_floating_point() else x.to(device), y.to(device)
            per_run = torch.stack([F.nll_loss(o.flatten(0, -2), t.flatten()) for o, t in zip(output_of(network, x), y)])
            optimizer.zero_grad()
            per_run.sum().backward()
            optimizer.step()
            losses.append(per_run.detach().cpu())
        results.append((torch.stack(losses), network))
    assert_relative_close(results[1][0], results[0][0], FLOAT64, "losses")
    for run in range(3):
        for name, weight in results[0][1].run_state_dict(run).items():
            assert_relative_close(results[1][1].run_state_dict(run)[name].cpu(), weight, FLOAT64, f"{run} {name}")


@pytest.mark.parametrize("model_name", list(MODELS))
def test_bf16_autocast_on_cuda_trains_as_on_the_cpu(model_name):
    (cpu_losses, _, _), (gpu_losses, _, _) = on_both(model_name, "Adam/SGD(1e-5)", precision="bf16")
    # bf16 keeps 8 bits of mantissa: the two devices' autocast kernels agree to about 1e-2
    assert gpu_losses == pytest.approx(cpu_losses, rel=3e-2)


def test_channels_last_resnet_on_cuda_computes_what_it_computes_on_the_cpu():
    (cpu_losses, _, _), (gpu_losses, _, _) = on_both("resnet20", "SGD(0.05, 0.9)/SGD(1e-4)",
                                                     memory_format=torch.channels_last)
    assert_relative_close(gpu_losses, cpu_losses, FLOAT32, "losses")


@pytest.mark.parametrize("spec, runs, compile", [("Adam/SGD(1e-5)/SGD(1e-4)", 4, False),
                                                  ("Adam^α/SGD(1e-5)/SGD(1e-4)", 4, False),
                                                  ("Adam/SGD(1e-5)", None, True)])
def test_a_step_that_reads_nothing_back_never_synchronises_the_device(spec, runs, compile):
    """A stack of runs' eager step and the compiled step (compile=True) read nothing back, nor wait for the
    device otherwise, while OneCycleLR cycles the step size and Adam's β1 (a fixed β1 too, with Adam^α) every
    step: a tensor made of numbers (torch.tensor) would wait for every kernel queued before it."""
    torch.manual_seed(0)
    network = (MLP() if runs is None else batch_models([MLP() for _ in range(runs)])).cuda()
    optimizer = hyperopt.stack(spec if runs is None else [spec] * runs, network.parameters(), compile=compile)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=10)
    x, y = torch.rand(runs or 1, 16, 784, device="cuda"), torch.randint(10, (runs or 1, 16), device="cuda")
    for step in range(6):
        loss = F.nll_loss(network(x if runs else x[0]).reshape(-1, 10), y.flatten()) * (runs or 1)
        optimizer.zero_grad()
        loss.backward()
        if step >= (3 if compile else 1):  # the first step makes the state; compile=True compiles the third
            torch.cuda.set_sync_debug_mode("error")
        try:
            optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        schedule.step()
    assert optimizer.diverged() == []


def _stepped(spec, runs, steps=2):
    """A CUDA MLP (or network of runs) with its stack, `steps` steps in, and a function computing the gradient of
    a batch into the same .grad tensors (zero_grad(set_to_none=False)), as a captured step needs."""
    torch.manual_seed(0)
    model = (MLP() if runs is None else batch_models([MLP() for _ in range(runs)])).cuda()
    optimizer = hyperopt.stack(spec if runs is None else [spec] * runs, model.parameters())
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.rand((runs or 1) * 16, 784, generator=generator).cuda(),
                torch.randint(10, ((runs or 1) * 16,), generator=generator).cuda()) for _ in range(8)]

    def gradient(x, y):
        optimizer.zero_grad(set_to_none=False)
        x = x if runs is None else x.unflatten(0, (runs, -1))
        F.nll_loss(model(x).reshape(-1, 10), y).backward()
    for x, y in batches[:steps]:
        gradient(x, y)
        optimizer.step()
    return model, optimizer, gradient, batches[steps:]


@pytest.mark.parametrize("spec, runs", [("Adam/SGD(1e-5)", None), ("SGD(0.05, 0.9)/SGD(1e-4)/SGD(1e-4)", 4)])
def test_the_whole_step_is_captured_as_a_cuda_graph(spec, runs):
    """torch.compile(opt.step, mode="reduce-overhead") captures the whole step (hypergradients and updates of
    every level) in a CUDA graph and replays it: the numbers of the eager step, step for step."""
    eager_model, eager, eager_gradient, batches = _stepped(spec, runs)
    model, optimizer, gradient, _ = _stepped(spec, runs)
    step = torch.compile(optimizer.step, mode="reduce-overhead")
    for number, (x, y) in enumerate(batches, 3):
        eager_gradient(x, y)
        eager.step()
        gradient(x, y)
        step()
        for a, b in zip(model.parameters(), eager_model.parameters()):
            assert_relative_close(a, b, FLOAT32, f"weights at step {number}")
    assert optimizer.hyperparameters(run=0)[0]["lr"] == pytest.approx(eager.hyperparameters(run=0)[0]["lr"],
                                                                       rel=FLOAT32)
    assert optimizer.diverged() == []


def test_a_stack_of_runs_step_is_captured_by_torch_cuda_graph():
    """The eager step of a stack of runs reads nothing back, so torch.cuda.graph captures it as it is."""
    eager_model, eager, eager_gradient, batches = _stepped("Adam/SGD(1e-5)/SGD(1e-4)", 4)
    model, optimizer, gradient, _ = _stepped("Adam/SGD(1e-5)/SGD(1e-4)", 4)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as capture needs
        gradient(*batches[0])
        optimizer.step()
        eager_gradient(*batches[0])
        eager.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    gradient(*batches[1])
    with torch.cuda.graph(graph):
        optimizer.step()
    eager_gradient(*batches[1])
    for x, y in batches[1:]:
        if x is not batches[1][0]:
            gradient(x, y)
            eager_gradient(x, y)
        graph.replay()
        eager.step()
    for a, b in zip(model.parameters(), eager_model.parameters()):
        assert_relative_close(a, b, FLOAT32, "weights")
