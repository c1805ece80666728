"""One level of a hyperoptimizer stack, and the hypergradient that links the levels.

A level is an ordinary `torch.optim.Optimizer`. The weights' optimizer (level 0) owns its parameters; the level
above it (``hyper=``) is an optimizer whose parameters are level 0's learned hyperparameters, held per param group
as one raw vector ``group["hyper_raw"]``; and so on up the stack. The top level's hyperparameters are fixed.

The hypergradient. After step t-1 the parameters of level k are ``x_t = x_{t-1} - step_k(h_k)``, where the step is
built from detached gradients and state but the current hyperparameters ``h_k``. Each update therefore keeps its
Jacobian ``∂step_k/∂h_k`` (a row per learned hyperparameter, in ``state["jac"]``), and at step t

    ∂L(w_t)/∂h_0 = -Jac_0ᵀ ∇L(w_t),    ∂L(w_t)/∂h_k = -Jac_kᵀ ∂L(w_t)/∂h_{k-1}

which is exactly what the reference code gets from ``loss.backward(create_graph=True)`` (it detaches every gradient
inside the update, so nothing of second order survives): a plain ``loss.backward()`` and one matrix-vector product
per level.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Iterable

import torch
from torch.func import jacfwd


class DivergenceError(FloatingPointError):
    """A hypergradient or a learned hyperparameter became NaN or infinite; nothing was updated in that step."""

    def __init__(self, level: int, optimizer: str, hyperparameter: str, step: int, value: float):
        self.level, self.optimizer, self.hyperparameter, self.step, self.value = (
            level, optimizer, hyperparameter, step, value)
        super().__init__(
            f"level {level} ({optimizer}): the hypergradient of {hyperparameter!r} is {value} at step {step}. "
            "The training diverged; no weights or hyperparameters were changed in this step. Lower the step size "
            "of the level above (or the initial value of this one), or pass check_finite=False to train on anyway.")


class Parameterisation:
    """How a hyperparameter is stored while it is learned; the reference code's choices (README, "What the reference
    code does")."""

    def __init__(self, to_raw: Callable[[float], float], to_value: Callable, derivative: Callable):
        self.to_raw, self.to_value, self.derivative = to_raw, to_value, derivative


# The identity's derivative is None rather than 1, so the Jacobian is not multiplied by 1 element by element.
IDENTITY = Parameterisation(lambda x: x, lambda r: r, lambda r: None)
# √α is stored so that α = (√α)² stays non-negative (the reference RMSProp).
SQUARE = Parameterisation(math.sqrt, lambda r: r * r, lambda r: 2.0 * r)


def _tanh(r):
    return r.tanh() if isinstance(r, torch.Tensor) else math.tanh(r)


# β ∈ (0, 1) is stored as atanh(2β - 1) and read back as (tanh(x) + 1) / 2, written as the reference writes it.
UNIT_INTERVAL = Parameterisation(
    lambda y: 0.5 * math.log((1.0 + (2.0 * y - 1.0)) / (1.0 - (2.0 * y - 1.0))),
    lambda r: (_tanh(r) + 1.0) / 2.0,
    lambda r: (1.0 - _tanh(r) ** 2) / 2.0)


class Hyperoptimizer(torch.optim.Optimizer):
    """Base class of the four optimizers; a subclass supplies the update and its closed-form Jacobian.

    Subclass contract:
      NAME: the paper's name of the optimizer, as the notation writes it.
      HYPERPARAMETERS: {name: (default, Parameterisation, learnable)}, in the notation's positional order.
      _default_learn(values) -> the names the reference learns for these initial values.
      _step_scalars(h, t) -> {name: value}: quantities of step t (Adam's bias corrections), added to h.
      _direction(h, g, state) -> (step, new_state, intermediates): the update ``x_new = x - step`` on flat
          tensors, written with differentiable operations in the learned values of ``h`` (the autograd path
          differentiates it); intermediates are whatever the closed-form Jacobian can reuse.
      _jacobian(h, learned, g, state, new_state, step, intermediates) -> {learned name: ∂step/∂value}.
    """

    NAME: str
    HYPERPARAMETERS: dict[str, tuple[float, Parameterisation, bool]]

    def __init__(self, params: Iterable | None = None, *, hyper: Hyperoptimizer | None = None,
                 learn: Iterable[str] | None = None, check_finite: bool = True,
                 hypergradient: str = "closed_form", compile: bool = False, **values: float):
        unknown = set(values) - set(self.HYPERPARAMETERS)
        if unknown:
            raise TypeError(f"{self.NAME} has no hyperparameter {sorted(unknown)}; "
                            f"it has {list(self.HYPERPARAMETERS)}")
        defaults = {name: float(default) for name, (default, _, _) in self.HYPERPARAMETERS.items()}
        defaults.update({k: v if isinstance(v, dict) else float(v) for k, v in values.items() if v is not None})
        self._validate_values(defaults)
        per_hyperparameter = sorted(k for k, v in defaults.items() if isinstance(v, dict))
        if per_hyperparameter and (params is not None or hyper is not None):
            raise ValueError(
                f"{self.NAME}: a value per hyperparameter of the level below ({', '.join(per_hyperparameter)}="
                "{...}) is for a level above another optimizer, at the top of the stack where values are fixed")
        learn = self._default_learn(defaults) if learn is None else tuple(learn)
        self._validate_learn(learn)
        defaults["learn"] = learn
        if hypergradient not in ("closed_form", "autograd"):
            raise ValueError(f"hypergradient must be 'closed_form' or 'autograd', not {hypergradient!r}")
        if hyper is not None and not isinstance(hyper, Hyperoptimizer):
            raise TypeError(f"hyper must be a hyperopt optimizer (SGD, Adam, AdaGrad, RMSProp), not {type(hyper)}")
        if hyper is not None and hyper._attached:
            raise ValueError("this hyper optimizer already has parameters; a level above takes none of its own")
        self.hyper = hyper
        self.check_finite = check_finite
        self.hypergradient = hypergradient
        self.compile = compile
        self._compiled = None
        self._config = defaults
        self._attached = False
        self._owner: Hyperoptimizer | None = None
        # torch wraps step() in hooks that read these; a level not attached yet must still fail with our message.
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = OrderedDict(), OrderedDict()
        if params is not None:
            self._attach(params)

    # ----------------------------------------------------------------- construction and param groups
    def _attach(self, params):
        self._attached = True
        super().__init__(params, dict(self._config))

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_values(group)
        self._validate_learn(group["learn"])
        first = group["params"][0]
        if any(p.device != first.device or p.dtype != first.dtype for p in group["params"]):
            raise ValueError("all parameters of a param group must share one device and dtype (the update works "
                             "on them as one flat vector); put the others in a param group of their own")
        if self._owner is not None and group.get("weight_decay"):
            raise ValueError(f"{self.NAME}: weight decay is for the weights' optimizer, not a level above it")
        if self.hyper is not None and not group["learn"]:
            raise ValueError(f"{self.NAME} learns no hyperparameter (learn=()), so the level above it has "
                             "nothing to optimize: drop the level above or say what to learn")
        # Only what a level above learns is held here, in its parameterisation; at the top of a stack every value
        # stays a plain number in the group, as in torch.optim (so a learning-rate scheduler works there).
        group["hyper_raw"] = torch.tensor(
            [self.HYPERPARAMETERS[name][1].to_raw(group[name]) for name in self._learned(group)],
            dtype=torch.promote_types(first.dtype, torch.float32), device=first.device)
        if self.hyper is not None:
            hyper_group = {"params": [group["hyper_raw"]],
                           **self.hyper._per_hyperparameter_values(self._learned(group), group["hyper_raw"])}
            if self.hyper._attached:
                self.hyper.add_param_group(hyper_group)
            else:
                self.hyper._owner = self
                self.hyper._attach([hyper_group])

    def _validate_values(self, values: dict) -> None:
        for name in self.HYPERPARAMETERS:
            value = values[name]
            numbers = (list(value.values()) if isinstance(value, dict)
                       else value.tolist() if isinstance(value, torch.Tensor) else [value])
            for number in numbers:
                if not isinstance(number, (int, float)) or not math.isfinite(number):
                    raise ValueError(f"{self.NAME}: {name} must be a finite number, not {value}")
                parameterisation = self.HYPERPARAMETERS[name][1]
                if parameterisation is UNIT_INTERVAL and not 0.0 < number < 1.0:
                    raise ValueError(f"{self.NAME}: {name} must lie strictly between 0 and 1, not {value}")
                if parameterisation is not UNIT_INTERVAL and number < 0.0:
                    raise ValueError(f"{self.NAME}: {name} must not be negative, not {value}")

    def _per_hyperparameter_values(self, below: tuple[str, ...], raw: torch.Tensor) -> dict:
        """This level's values given per hyperparameter of the level below (``lr={"lr": κ_α, "momentum": κ_μ}``:
        a step size for each hyperparameter it learns), as tensors over that level's raw vector, in its order."""
        resolved = {}
        for name, value in self._config.items():
            if isinstance(value, dict):
                if set(value) != set(below):
                    raise ValueError(f"{self.NAME}: {name} is given for {sorted(value)}, but the level below "
                                     f"learns {list(below)}: give one value for each")
                resolved[name] = raw.new_tensor([float(value[hyperparameter]) for hyperparameter in below])
        return resolved

    def _validate_learn(self, learn) -> None:
        for name in learn:
            if name not in self.HYPERPARAMETERS or not self.HYPERPARAMETERS[name][2]:
                learnable = [n for n, (_, _, ok) in self.HYPERPARAMETERS.items() if ok]
                raise ValueError(f"{self.NAME} cannot learn {name!r}; it can learn {learnable}")

    @classmethod
    def _default_learn(cls, values: dict) -> tuple[str, ...]:
        return tuple(name for name, (_, _, learnable) in cls.HYPERPARAMETERS.items() if learnable)

    # ----------------------------------------------------------------- the stack
    def levels(self) -> list[Hyperoptimizer]:
        """This optimizer and every level above it, bottom first."""
        chain = [self]
        while chain[-1].hyper is not None:
            chain.append(chain[-1].hyper)
        return chain

    def _learned(self, group: dict) -> tuple[str, ...]:
        return group["learn"] if self.hyper is not None else ()

    def _values(self, group: dict, raw: torch.Tensor) -> dict:
        """Current hyperparameters: tensors (from raw) for the learned ones, floats for the fixed ones."""
        return self._values_of(raw, self._fixed(group), self._learned(group))

    def _fixed(self, group: dict) -> dict:
        # A learnable value at the top of a stack goes through its parameterisation and back, as the reference,
        # which stores it that way at every height, uses it (RMSProp's α is (√α)², to the last bit).
        fixed = {name: group[name] for name in self.HYPERPARAMETERS}
        if self.hyper is None:
            for name in group["learn"]:
                if isinstance(fixed[name], torch.Tensor):  # one value per hyperparameter below: set, not stored
                    continue
                parameterisation = self.HYPERPARAMETERS[name][1]
                fixed[name] = parameterisation.to_value(parameterisation.to_raw(fixed[name]))
        return fixed

    def _values_of(self, raw: torch.Tensor, fixed: dict, learn: tuple[str, ...]) -> dict:
        values = dict(fixed)
        for i, name in enumerate(learn):
            values[name] = self.HYPERPARAMETERS[name][1].to_value(raw[i])
        return values

    def _step_values(self, raw: torch.Tensor, fixed: dict, learn: tuple[str, ...], t: int) -> dict:
        """The hyperparameters and the quantities of step t derived from them (Adam's bias corrections), as
        tensors: a compiled update then sees the step number only through its inputs."""
        values = self._values_of(raw, fixed, learn)
        for name, value in self._step_scalars(values, t).items():
            values[name] = value if isinstance(value, torch.Tensor) else raw.new_tensor(value)
        return values

    def _step_scalars(self, h: dict, t: int) -> dict:
        return {}

    def _group_state(self, group: dict) -> dict:
        # A group is updated as one flat vector; its state lives under its first parameter, where
        # torch's state_dict machinery saves, restores and casts it like any optimizer state.
        return self.state[group["params"][0]]

    @staticmethod
    def _flat_grad(group: dict) -> torch.Tensor:
        """The group's gradient as one vector, with weight decay added as torch.optim.SGD adds it: the update and
        the hypergradient are then those of the loss plus (weight_decay / 2)·|w|²."""
        # torch.cat copies, so the gradient kept in a Jacobian cannot be changed by a later in-place zero_grad.
        gradient = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
                              for p in group["params"]])
        if group.get("weight_decay"):
            gradient.add_(torch.cat([p.reshape(-1) for p in group["params"]]), alpha=group["weight_decay"])
        return gradient

    # ----------------------------------------------------------------- one step of the whole stack
    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """Hypergradients bottom-up, then updates top-down: each level's hyperparameters are updated by the level
        above before they update the level below (the reference code's order)."""
        if not self._attached:
            raise RuntimeError(f"{self.NAME} has no parameters: pass them (params=...) or use it as hyper= of "
                               "another optimizer")
        if self._owner is not None:
            raise RuntimeError(f"this {self.NAME} is a level above another optimizer: call step() on the "
                               "weights' optimizer, which steps the whole stack")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        levels = self.levels()
        flat_grads = [[self._flat_grad(group) for group in self.param_groups]]
        for level in levels[:-1]:
            flat_grads.append(level._write_hypergradients(flat_grads[-1]))
        if self.check_finite and len(levels) > 1:
            self._check_finite(levels, flat_grads[1:])
        for level, grads in reversed(list(zip(levels, flat_grads))):
            for group, g in zip(level.param_groups, grads):
                level._update_group(group, g)
        return loss

    def _write_hypergradients(self, upstream: list[torch.Tensor]) -> list[torch.Tensor]:
        """∂L/∂h for each group's raw hyperparameters, from ∂L/∂(this level's parameters), into hyper_raw.grad."""
        hypergradients = []
        for group, u in zip(self.param_groups, upstream):
            raw = group["hyper_raw"]
            jac = self._group_state(group).get("jac")
            if jac is None:  # first step: there was no update yet, so the loss does not depend on h
                hypergradient = torch.zeros_like(raw)
            else:
                hypergradient = torch.mv(jac, u).neg_().to(raw.dtype)
            raw.grad = hypergradient
            hypergradients.append(hypergradient)
        return hypergradients

    def _check_finite(self, levels: list[Hyperoptimizer], hypergradients: list[list[torch.Tensor]]) -> None:
        # One synchronisation per step: NaN and ±inf survive a sum (a finite sum that overflows is looked into too).
        flat = [h for groups in hypergradients for h in groups]
        if math.isfinite(float(flat[0].sum() if len(flat) == 1 else torch.cat(flat).sum())):
            return
        for k, (level, groups) in enumerate(zip(levels, hypergradients)):
            for group, hypergradient in zip(level.param_groups, groups):
                for name, value in zip(level._learned(group), hypergradient.tolist()):
                    if not math.isfinite(value):
                        step = level._group_state(group).get("step", 0) + 1
                        raise DivergenceError(k, level.NAME, name, step, value)

    def _update_group(self, group: dict, g: torch.Tensor) -> None:
        state = self._group_state(group)
        previous = {k: v for k, v in state.items() if k not in ("jac", "step")}
        raw = group["hyper_raw"].detach()
        fixed = self._fixed(group)
        learned = self._learned(group)
        t = state.get("step", 0) + 1
        if learned and self.hypergradient == "autograd":
            def step_of(raw):
                step, new_state, _ = self._direction(self._step_values(raw, fixed, learned, t), g, previous)
                return step, (step, new_state)
            jacobian, (step, new_state) = jacfwd(step_of, has_aux=True)(raw)
            jac = jacobian.T.contiguous()
        else:
            h = self._step_values(raw, fixed, learned, t)
            chain = [self.HYPERPARAMETERS[name][1].derivative(raw[i]) for i, name in enumerate(learned)]
            update = self._closed_form_update
            if self.compile and self._owner is None and previous:
                update = self._compiled_update()
            step, new_state, jac = update(h, g, previous, learned, chain)
        params = group["params"]
        if len(params) == 1:
            params[0].sub_(step.view_as(params[0]))
        else:
            steps = step.split([p.numel() for p in params])
            torch._foreach_sub_(params, [s.view_as(p) for s, p in zip(steps, params)])
        state.update(new_state)
        state["step"] = t
        if jac is not None:
            state["jac"] = jac

    def _closed_form_update(self, h, g, previous, learned, chain):
        """(step, new state, Jacobian ∂step/∂raw with a row per learned hyperparameter, or None)."""
        step, new_state, intermediates = self._direction(h, g, previous)
        if not learned:
            return step, new_state, None
        closed_form = self._jacobian(h, learned, g, previous, new_state, step, intermediates)
        columns = [closed_form[name] if derivative is None else closed_form[name] * derivative
                   for name, derivative in zip(learned, chain)]
        return step, new_state, columns[0].unsqueeze(0) if len(columns) == 1 else torch.stack(columns)

    def _compiled_update(self):
        # Compiled once per optimizer: on the weights' large flat vectors the update's dozens of element-wise
        # operations fuse into a few loops. The first step (no state yet) always runs eagerly.
        if self._compiled is None:
            self._compiled = torch.compile(self._closed_form_update)
        return self._compiled

    # ----------------------------------------------------------------- reading the stack
    def hyperparameters(self, group: int = 0) -> list[dict[str, float]]:
        """Current hyperparameters of every level for one param group, the weights' optimizer first, in natural
        units (α, not the √α RMSProp stores; β in (0, 1), not its atanh)."""
        result, below = [], ()
        for level in self.levels():  # a level above has one group per group of the level below
            if level._attached:
                g = level.param_groups[group]
                values = level._values(g, g["hyper_raw"].detach())
                result.append({k: dict(zip(below, v.tolist())) if isinstance(v, torch.Tensor) and v.dim() else
                               float(v) for k, v in values.items()})
                below = level._learned(g)
            else:
                result.append({k: v for k, v in level._config.items() if k in level.HYPERPARAMETERS})
        return result

    def __str__(self) -> str:
        from .notation import format_stack
        return format_stack(self)

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}({str(self)!r})"

    # ----------------------------------------------------------------- saving and resuming
    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.hyper is not None:
            state["hyper"] = self.hyper.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        hyper_state = state_dict.pop("hyper", None)
        if (hyper_state is None) != (self.hyper is None):
            raise ValueError("the saved stack and this one differ in height; rebuild the stack the state came from")
        # The level above holds each group's hyper_raw as its parameter: restore values in place, keep the objects.
        raws = [group["hyper_raw"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, raw in zip(self.param_groups, raws):
            if group["hyper_raw"].shape != raw.shape:
                raise ValueError("the saved stack learns other hyperparameters than this one")
            raw.copy_(group["hyper_raw"])
            group["hyper_raw"] = raw
        if self.hyper is not None:
            self.hyper.load_state_dict(hyper_state)
