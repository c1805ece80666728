"""The paper's reference code (PyPI gradient-descent-the-ultimate-optimizer==1.0) driven step by step, as its
README does, to compare our optimizers with: the oracle of the equality tests and a contender in the benchmarks.
A test-and-comparison dependency (the `test` extra); the library never imports it."""

import copy

import torch
import torch.nn.functional as F

try:
    from gradient_descent_the_ultimate_optimizer import gdtuo
except ImportError:
    raise ImportError("the paper's reference code is not installed: pip install -e \".[test]\" (or "
                      "gradient-descent-the-ultimate-optimizer==1.0)") from None

import hyperopt
from experiments.step import train_step


def reference_stack(spec: str):
    """The reference's optimizer for a stack in the paper's notation."""
    above = gdtuo.NoOpOptimizer()
    for cls, values, learned in reversed(hyperopt.parse(spec)):
        v = {name: default for name, (default, _, _) in cls.HYPERPARAMETERS.items()} | values
        learn = learned if learned is not None else cls.default_learn(v)
        if cls is hyperopt.SGD:
            above = gdtuo.SGD(alpha=v["lr"], mu=v["momentum"], optimizer=above)
        elif cls is hyperopt.AdaGrad:
            above = gdtuo.AdaGrad(alpha=v["lr"], optimizer=above)
        elif cls is hyperopt.Adam:
            assert v["eps"] == 1e-8
            kind = gdtuo.AdamBaydin if learn == ("lr",) else gdtuo.Adam
            above = kind(alpha=v["lr"], beta1=v["beta1"], beta2=v["beta2"], optimizer=above)
        elif cls is hyperopt.RMSProp:
            kind = gdtuo.RMSPropAlpha if learn == ("lr",) else gdtuo.RMSProp
            above = kind(alpha=v["lr"], gamma=v["gamma"], optimizer=above)
    return above


def natural_values(optimizer) -> list[dict]:
    """Hyperparameters of each level of a reference stack, in natural units, the weights' optimizer first."""
    levels = []
    while not isinstance(optimizer, gdtuo.NoOpOptimizer):
        values = {}
        for name, raw in optimizer.parameters.items():
            raw = raw.detach()
            if name == "alpha":
                is_sqrt = isinstance(optimizer, (gdtuo.RMSProp, gdtuo.RMSPropAlpha))
                values["lr"] = float(raw ** 2 if is_sqrt else raw)
            elif name == "mu":
                values["momentum"] = float(raw)
            else:
                values[name] = float((raw.tanh() + 1.0) / 2.0)
        levels.append(values)
        optimizer = optimizer.optimizer
    return levels


def reference_step(spec: str, model: torch.nn.Module, loss_of=F.nll_loss):
    """(the reference's wrapper of `model`, a function taking one training step on a batch as its README does)."""
    wrapper = gdtuo.ModuleWrapper(model, optimizer=reference_stack(spec))
    wrapper.initialize()

    def step(x, y):
        wrapper.begin()
        loss = loss_of(wrapper.forward(x), y)
        wrapper.zero_grad()
        loss.backward(create_graph=True)
        wrapper.step()
        return loss.detach()
    return wrapper, step


class ReferenceBackend:
    """The reference code as a run's optimizer (backend=reference): its ModuleWrapper around the run's model and its
    stack, driven as its README drives them, behind what the harness asks of an optimizer. The harness's step does
    the forward pass after `begin()` (which this calls at the end of each step), `zero_grad()`, the backward pass
    with create_graph=True (``create_graph``) and `step()`; the data, seeds, batches and records stay the harness's.
    It keeps no state a checkpoint could restore: a run on it starts again from its first step if stopped."""

    create_graph = True

    def __init__(self, spec, model: torch.nn.Module):
        if not isinstance(spec, str):
            raise ValueError("backend=reference takes a stack in the paper's notation (optimizer=\"SGD/Adam(0.1)\"), "
                             "not a builder")
        self.spec = spec
        self.wrapper = gdtuo.ModuleWrapper(model, optimizer=reference_stack(spec))
        self.wrapper.initialize()
        self.wrapper.begin()

    def zero_grad(self) -> None:
        self.wrapper.zero_grad()

    def step(self) -> None:
        self.wrapper.step()
        self.wrapper.begin()  # the next forward pass builds its graph from the updated values

    def hyperparameters(self) -> list[dict]:
        return natural_values(self.wrapper.optimizer)

    def state_dict(self) -> dict:
        return {"backend": "reference"}

    def load_state_dict(self, state: dict) -> None:
        raise RuntimeError("a run on the reference backend cannot resume from a checkpoint (the reference keeps its "
                           "state in autograd graphs); run it again in a new folder")

    def __str__(self) -> str:
        levels = self.hyperparameters()
        return f"{self.spec} on the reference code, ending at " + " / ".join(
            "(" + ", ".join(f"{name}={value:.4g}" for name, value in level.items()) + ")" for level in levels)


def run_reference(spec: str, model: torch.nn.Module, batches):
    """(losses, weights after each step, hyperparameters after each step) of the reference code."""
    model = copy.deepcopy(model)
    wrapper, step = reference_step(spec, model)
    losses, weights, hyperparameters = [], [], []
    for x, y in batches:
        losses.append(step(x, y).item())
        weights.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        hyperparameters.append(natural_values(wrapper.optimizer))
    return losses, weights, hyperparameters


def run_ours(spec: str, model: torch.nn.Module, batches, **options):
    model = copy.deepcopy(model)
    optimizer = hyperopt.stack(spec, model.parameters(), **options)
    losses, weights, hyperparameters = [], [], []
    for x, y in batches:
        losses.append(train_step(model, optimizer, x, y).item())
        weights.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        hyperparameters.append(optimizer.hyperparameters())
    return losses, weights, hyperparameters
