"""The `optimizer=` of a run: a hyperoptimizer stack in the paper's notation; one of the learning-rate-free
optimizers a researcher would otherwise reach for, from its own PyPI package, written the same way:
``Prodigy``, ``DAdaptSGD``, ``DAdaptAdam`` (their lr is a multiplier of the step they estimate, 1 by default),
``DoG`` (its lr a multiplier, 1 by default), ``ScheduleFreeSGD(0.1)``, ``ScheduleFreeAdamW(0.0025)`` (lr is a
step size), ``MechanicAdam(1e-3)`` (Mechanic's learned scale over Adam's step of that size) and ``MomoAdam(0.01)``
(MoMo-Adam: Adam's step, bounded by the Polyak-type step its model of the loss allows); or a builder of the grid
experiments (Figures 2 and 3, the RNN), given as ``{_target_: experiments.optimizers.NAME, ...values}``."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import NamedTuple

import torch

import hyperopt

class Source(NamedTuple):
    """Where a baseline comes from: its PyPI package's class, or its wrapper of a torch.optim class."""

    package: str
    attribute: str
    lr: float  # its default
    wraps: type[torch.optim.Optimizer] | None = None  # the optimizer a wrapper (Mechanic's mechanize) is given
    needs_loss: bool = False  # its step takes the loss (MoMo's: step(loss=...))
    distribution: str | None = None  # its name on PyPI, where it is not the package's
    attributes: tuple[str, ...] = ()  # what it keeps outside its state dict, which a checkpoint must hold too


BASELINES = {  # notation name: its source
    "Prodigy": Source("prodigyopt", "Prodigy", 1.0),
    "DAdaptSGD": Source("dadaptation", "DAdaptSGD", 1.0),
    "DAdaptAdam": Source("dadaptation", "DAdaptAdam", 1.0),
    "ScheduleFreeSGD": Source("schedulefree", "SGDScheduleFree", 1.0),
    "ScheduleFreeAdamW": Source("schedulefree", "AdamWScheduleFree", 0.0025),
    "DoG": Source("dog", "DoG", 1.0),
    "MechanicAdam": Source("mechanic_pytorch", "mechanize", 1e-3, wraps=torch.optim.Adam),
    "MomoAdam": Source("momo", "MomoAdam", 1e-2, needs_loss=True, distribution="momo-opt",
                       attributes=("_number_steps", "loss_avg", "lb", "_initial_lb")),
}
_BASELINE = re.compile(r"^\s*(?P<name>[A-Za-z]+)\s*(?:\(\s*(?:lr\s*=\s*)?(?P<lr>[^()]*?)\s*\))?\s*$")


class Baseline:
    """A learning-rate-free optimizer with what the harness asks of every optimizer: `hyperparameters()`, a
    notation, and `train()` / `eval()` (Schedule-Free evaluates at averaged weights)."""

    def __init__(self, name: str, optimizer: torch.optim.Optimizer):
        self.name, self.optimizer = name, optimizer
        self.needs_loss = BASELINES[name].needs_loss  # (the training step hands it the loss: experiments/step.py)
        self.train()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None, loss: torch.Tensor | None = None):
        return self.optimizer.step(closure) if loss is None else self.optimizer.step(loss=loss)

    def train(self) -> None:
        if hasattr(self.optimizer, "train"):
            self.optimizer.train()

    def eval(self) -> None:
        if hasattr(self.optimizer, "eval"):
            self.optimizer.eval()

    def state_dict(self) -> dict:
        """torch.optim's state dict, and what the optimizer keeps besides it: its attributes, and state it keys by
        the parameters themselves (Mechanic's), keyed by their place instead, so that it loads into a copy."""
        places = {id(p): i for i, p in enumerate(self._params())}
        state = self.optimizer.state_dict()
        state["state"] = _rekeyed(state["state"], lambda k: ("parameter", places[id(k)])
                                  if isinstance(k, torch.Tensor) else k)
        attributes = {name: getattr(self.optimizer, name) for name in BASELINES[self.name].attributes}
        return {"optimizer": state, "attributes": attributes}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        params = self._params()
        for key in [key for key in self.optimizer.state if isinstance(key, str)]:  # (torch.optim leaves these)
            self.optimizer.state[key] = _rekeyed(
                self.optimizer.state[key],
                lambda k: params[k[1]] if isinstance(k, tuple) and k[:1] == ("parameter",) else k,
                lambda v: v.to(params[0].device) if isinstance(v, torch.Tensor) else v)
        for name, value in state["attributes"].items():
            setattr(self.optimizer, name, value)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def hyperparameters(self) -> list[dict[str, float]]:
        group = self.optimizer.param_groups[0]
        values = {"lr": float(group["lr"])}
        if "d" in group:  # Prodigy and D-Adaptation: the step size they estimated, which lr multiplies
            values["d"] = float(group["d"])
        return [values]

    def __str__(self) -> str:
        return f"{self.name}({self.optimizer.param_groups[0]['lr']!r})"


def _rekeyed(value, key, leaf=lambda v: v):
    """`value` with every dict key k, at any depth, made key(k), and every other value leaf(value)."""
    if not isinstance(value, dict):
        return leaf(value)
    return {key(k): _rekeyed(v, key, leaf) for k, v in value.items()}


def resolve(spec):
    """What a config's `optimizer` stands for: a stack in the paper's notation or a learning-rate-free optimizer (a
    string), or a builder: a mapping whose `_target_` is the dotted name of a function taking the mapping's other
    values (figure2_sgd, rnn_adam, sensitivity_tower below) and giving either, a stack as its levels
    (hyperopt.parse's form), so that a grid's numbers reach the optimizer as numbers."""
    if isinstance(spec, Mapping):
        values = dict(spec)
        return _function(values.pop("_target_", None))(**values)
    return spec


def stack_levels(spec):
    """The levels of the hyperoptimizer stack `spec` resolves to, or None for a learning-rate-free optimizer."""
    spec = resolve(spec)
    if not isinstance(spec, str):
        return spec
    match = _BASELINE.match(spec)
    if match and any(match["name"].lower() == known.lower() for known in BASELINES):
        return None
    return hyperopt.parse(spec)


def build_optimizer(spec, params, compile: bool = False):
    """The optimizer `spec` names (see `resolve`) on these parameters."""
    spec = resolve(spec)
    if not isinstance(spec, str):
        return hyperopt.stack(spec, params, compile=compile)
    match = _BASELINE.match(spec)
    name = next((known for known in BASELINES if match and match["name"].lower() == known.lower()), None)
    if name is None:
        try:
            return hyperopt.stack(spec, params, compile=compile)
        except ValueError as error:
            raise ValueError(f"{error}\nBesides stacks, optimizer= takes the learning-rate-free optimizers "
                             f"{', '.join(BASELINES)}, written Name or Name(lr).") from None
    try:
        lr = float(match["lr"]) if match["lr"] else None
    except ValueError:
        raise ValueError(f"bad optimizer {spec!r}: write {name} or {name}(lr), lr a number") from None
    return baseline(name, params, lr)


def baseline(name: str, params, lr: float | None = None) -> Baseline:
    """A learning-rate-free optimizer from its own package; lr None is the package's default."""
    if name not in BASELINES:
        raise ValueError(f"unknown learning-rate-free optimizer {name!r}; known: {', '.join(BASELINES)}")
    source = BASELINES[name]
    try:
        module = importlib.import_module(source.package)
    except ImportError:
        distribution = source.distribution or source.package.replace("_", "-")
        raise ImportError(f"{name} comes from the PyPI package {distribution}: pip install {distribution}") from None
    make = getattr(module, source.attribute)
    if source.wraps is not None:
        make = make(source.wraps)
    return Baseline(name, make(params, lr=source.lr if lr is None else lr))


def _function(target):
    module, _, name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"optimizer._target_={target!r} is not a function that can be imported; write the "
                         "dotted name of a builder, e.g. experiments.optimizers.figure2_sgd") from None


def set_mode(optimizer, mode: str) -> None:
    """Put an optimizer that distinguishes training from evaluation (Schedule-Free) into `mode`."""
    if isinstance(optimizer, Baseline):
        getattr(optimizer, mode)()


def figure2_sgd(alpha: float, momentum: float, weight_decay: float, hyper: bool,
                kappa_alpha: float | str = "auto", kappa_momentum: float | str = "auto"):
    """One cell of Figure 2: SGD(α, μ) with weight decay; when `hyper`, α and μ are learned by an SGD with a step
    size for each (``auto``: κ_α = α²·1e-3 and κ_μ = 1e-6/(1-μ), the one published choice)."""
    levels = [(hyperopt.SGD, {"lr": alpha, "momentum": momentum, "weight_decay": weight_decay}, None)]
    if hyper:
        kappa_alpha = alpha ** 2 * 1e-3 if kappa_alpha == "auto" else float(kappa_alpha)
        kappa_momentum = 1e-6 / (1.0 - momentum) if kappa_momentum == "auto" else float(kappa_momentum)
        levels.append((hyperopt.SGD, {"lr": {"lr": kappa_alpha, "momentum": kappa_momentum}}, None))
    return levels


def rnn_adam(alpha: float, hyper: bool, kappa: float):
    """The two arms of the RNN experiment: Adam^α(α), its α learned by Adam(κ) when `hyper`, else fixed."""
    return [(hyperopt.Adam, {"lr": alpha}, ("lr",))] + ([(hyperopt.Adam, {"lr": kappa}, None)] if hyper else [])


def sensitivity_tower(method: str, alpha: float, height: int, upper: float | str = "same"):
    """One point of Figure 3 (left): SGD(α) with `height` SGD levels above it, each starting at `upper` (α itself
    when "same", the protocol of the paper's 2019 version); or a learning-rate-free optimizer whose lr is α."""
    if method != "SGD":
        if height != 0:
            raise ValueError(f"sensitivity.height applies to SGD stacks only, not to {method}")
        return f"{method}({float(alpha)!r})"
    top = alpha if upper == "same" else float(upper)
    return [(hyperopt.SGD, {"lr": alpha}, None)] + [(hyperopt.SGD, {"lr": top}, None)] * height
