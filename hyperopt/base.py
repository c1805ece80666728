"""One level of a hyperoptimizer stack, and the hypergradient that links the levels.

A level is an ordinary `torch.optim.Optimizer`. The weights' optimizer (level 0) owns its parameters; the level
above it (``hyper=``) is an optimizer whose parameters are level 0's learned hyperparameters, held per param group
as one raw vector ``group["hyper_raw"]``; and so on up the stack. The top level's hyperparameters are fixed.

The hypergradient. After step t-1 the parameters of level k are ``x_t = x_{t-1} - step_k(h_k)``, where the step is
built from detached gradients and state but the current hyperparameters ``h_k``. Its Jacobian ``∂step_k/∂h_k``
(a column per learned hyperparameter) is what the next step's hypergradient needs:

    ∂L(w_t)/∂h_0 = -Jac_0ᵀ ∇L(w_t),    ∂L(w_t)/∂h_k = -Jac_kᵀ ∂L(w_t)/∂h_{k-1}

which is exactly what the reference code gets from ``loss.backward(create_graph=True)`` (it detaches every gradient
inside the update, so nothing of second order survives): a plain ``loss.backward()`` and one dot product per
learned hyperparameter and level. The columns are not stored: each optimizer rebuilds them at step t, in closed
form, from the state it keeps anyway (Adam's m and v) and at most one more tensor per parameter (the last gradient),
so a hyperoptimizer holds little more than its torch.optim counterpart.

Many runs as one. A param group with ``runs=N`` holds the parameters of N independent runs stacked on a leading
dimension; each of its hyperparameters, at every level, is then one value per run, each run's hypergradient is the
sum over its own slice only, and a run whose hypergradient becomes NaN or infinite is frozen while the others go on.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Iterable, Sequence

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


# The identity's derivative is None rather than 1, so a column is not multiplied by 1 element by element.
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


def _per_hyperparameter(value) -> bool:
    """A value per hyperparameter of the level below ({name: number}), or in a stack of runs one such per run."""
    return isinstance(value, dict) or isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, dict) for v in value)


def _numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [float(v) for v in value.values()]
    if _per_hyperparameter(value):
        return [number for per_run in value for number in _numbers(per_run)]
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, (list, tuple)):
        return [float(v) if isinstance(v, (int, float)) else v for v in value]
    return [value]


class Hyperoptimizer(torch.optim.Optimizer):
    """Base class of the four optimizers; a subclass supplies the update of one tensor and its Jacobian.

    Subclass contract (``h`` holds the hyperparameters, tensors for the learned ones, shaped to broadcast against
    the tensor: one value, or one per run):
      NAME: the paper's name of the optimizer, as the notation writes it.
      HYPERPARAMETERS: {name: (default, Parameterisation, learnable)}, in the notation's positional order.
      _default_learn(values) -> the names the reference learns for these initial values.
      _step_scalars(h, t) -> {name: value}: quantities of step t (Adam's bias corrections), added to h.
      _update(h, learned, g, state) -> (direction, scale): the update ``x_new = x - scale · direction`` of one
          tensor, ``scale`` a value of ``h`` or 1 (so that the update is one pass over x); it changes ``state`` in place
          (making its buffers at the first step), as torch.optim does, and is written with differentiable
          operations in the learned values of ``h`` (the autograd path differentiates it on copies of the state).
      _keep(h, learned, g, state) -> {name: tensor}: what the Jacobian will need beyond the new state, read before
          the update changes the state; kept in the state as copies (in buffers kept from step to step).
      _jacobian(h, learned, state) -> {learned name: ∂step/∂value}: the last update's Jacobian, from the state
          after it (and what _keep kept), with ``h`` the values that update used.
      Optionally, _tensor_dots and _hypergradient_terms: the hypergradient's terms from dot products that need
          not make the Jacobian's columns (Adam), tested equal to the columns.
    A value of ``h`` is a Python number or a tensor (of one element, or one per run; see _as_numbers and
    _per_tensor): each of these is written for both.
    """

    NAME: str
    HYPERPARAMETERS: dict[str, tuple[float, Parameterisation, bool]]

    def __init__(self, params: Iterable | None = None, *, hyper: Hyperoptimizer | None = None,
                 learn: Iterable[str] | None = None, check_finite: bool = True,
                 hypergradient: str = "closed_form", compile: bool = False, runs: int | None = None, **values):
        unknown = set(values) - set(self.HYPERPARAMETERS)
        if unknown:
            raise TypeError(f"{self.NAME} has no hyperparameter {sorted(unknown)}; "
                            f"it has {list(self.HYPERPARAMETERS)}")
        defaults = {name: float(default) for name, (default, _, _) in self.HYPERPARAMETERS.items()}
        defaults.update({k: v if isinstance(v, (dict, list, tuple, torch.Tensor)) else float(v)
                         for k, v in values.items() if v is not None})
        self._validate_values(defaults)
        per_hyperparameter = sorted(k for k, v in defaults.items() if _per_hyperparameter(v))
        if per_hyperparameter and (params is not None or hyper is not None):
            raise ValueError(
                f"{self.NAME}: a value per hyperparameter of the level below ({', '.join(per_hyperparameter)}="
                "{...}) is for a level above another optimizer, at the top of the stack where values are fixed")
        learn = self._default_learn(defaults) if learn is None else tuple(learn)
        self._validate_learn(learn)
        defaults["learn"] = learn
        defaults["runs"] = runs
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
        self._compiled: dict[str, Callable] = {}
        self._config = defaults
        self._attached = False
        self._owner: Hyperoptimizer | None = None
        self.divergence: dict[str, torch.Tensor] | None = None  # per run, for a stack of runs (see step)
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
        first = group["params"][0]
        runs = group["runs"]
        if runs is not None:
            if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
                raise ValueError(f"{self.NAME}: runs must be a whole number ≥ 1 (the leading dimension every "
                                 f"parameter of the group stacks its runs on), not {runs!r}")
            bad = [tuple(p.shape) for p in group["params"] if p.dim() == 0 or p.shape[0] != runs]
            if bad:
                raise ValueError(f"{self.NAME}: a param group of runs={runs} holds each run's parameters on a "
                                 f"leading dimension of {runs}, but has parameters of shape {bad}")
            if self.hypergradient == "autograd":
                raise ValueError("hypergradient='autograd' checks the closed forms on single runs; use the "
                                 "default closed_form with runs=N")
        self._validate_values(group)
        self._validate_learn(group["learn"])
        if any(p.device != first.device or p.dtype != first.dtype for p in group["params"]):
            raise ValueError("all parameters of a param group must share one device and dtype (their "
                             "hyperparameters are one set of tensors); put the others in a param group of their own")
        if self._owner is not None and any(_numbers(group.get("weight_decay", 0.0))):
            raise ValueError(f"{self.NAME}: weight decay is for the weights' optimizer, not a level above it")
        if self.hyper is not None and not group["learn"]:
            raise ValueError(f"{self.NAME} learns no hyperparameter (learn=()), so the level above it has "
                             "nothing to optimize: drop the level above or say what to learn")
        dtype = torch.promote_types(first.dtype, torch.float32)
        learned = self._learned(group)
        if runs is None:
            per_run = [name for name in self.HYPERPARAMETERS if self._is_per_run(name, group[name])]
            if per_run:
                raise ValueError(f"{self.NAME}: {', '.join(per_run)} has a value per run; say how many runs the "
                                 "group stacks: runs=N")
            # Only what a level above learns is held here, in its parameterisation; at the top of a stack every
            # value stays a plain number in the group, as in torch.optim (so a learning-rate scheduler works there).
            group["hyper_raw"] = torch.tensor([self.HYPERPARAMETERS[name][1].to_raw(group[name]) for name in learned],
                                              dtype=dtype, device=first.device)
        else:
            group["hyper_raw"] = self._per_run_values(group, runs, dtype, first.device)
            if self._owner is None and self.divergence is None:
                # A run is frozen from the step its hypergradient diverged at (0: not diverged).
                self.divergence = {key: torch.zeros(runs, dtype=torch.long, device=first.device)
                                   for key in ("step", "level", "hyperparameter")}
            elif self._owner is None and len(self.divergence["step"]) != runs:
                raise ValueError(f"{self.NAME}: every param group of a stack of runs has the same number of runs "
                                 f"({len(self.divergence['step'])}), not {runs}")
        if self.hyper is not None:
            hyper_group = {"params": [group["hyper_raw"]], "runs": runs,
                           **self.hyper._per_hyperparameter_values(learned, group["hyper_raw"])}
            if self.hyper._attached:
                self.hyper.add_param_group(hyper_group)
            else:
                self.hyper._owner = self
                self.hyper._attach([hyper_group])

    def _is_per_run(self, name: str, value) -> bool:
        # A level above holds a value per hyperparameter of the level below as a tensor too; any other sequence or
        # tensor is a value per run.
        per_hyperparameter = self._owner is not None and _per_hyperparameter(self._config.get(name))
        return isinstance(value, (list, tuple)) or isinstance(value, torch.Tensor) and not per_hyperparameter

    def _per_run_values(self, group: dict, runs: int, dtype, device) -> torch.Tensor:
        """In a group of runs a hyperparameter is a (runs, 1) tensor, or a number where the runs share a fixed value
        (a learnable one at the top of a stack through its parameterisation and back, see _fixed); returns the raw
        learned values, (runs, L)."""
        raw = []
        for name, (_, parameterisation, _) in self.HYPERPARAMETERS.items():
            value = group[name]
            if isinstance(value, torch.Tensor) and not self._is_per_run(name, value):
                continue  # one value per hyperparameter below, the same for every run
            numbers = _numbers(value)
            numbers = numbers * runs if len(numbers) == 1 else numbers
            if len(numbers) != runs:
                raise ValueError(f"{self.NAME}: {name} has {len(numbers)} values for {runs} runs")
            if name in self._learned(group):
                raw.append([parameterisation.to_raw(n) for n in numbers])
                group[name] = torch.tensor(numbers, dtype=dtype, device=device).reshape(runs, 1)
                continue
            if self.hyper is None and name in group["learn"]:
                numbers = [parameterisation.to_value(parameterisation.to_raw(n)) for n in numbers]
            # A fixed value the runs share stays a number, as in a lone run (SGD's momentum 0 stays unused).
            group[name] = numbers[0] if len(set(numbers)) == 1 else torch.tensor(
                numbers, dtype=dtype, device=device).reshape(runs, 1)
        return torch.tensor(raw, dtype=dtype, device=device).reshape(len(raw), runs).T.contiguous()

    def _validate_values(self, values: dict) -> None:
        for name in self.HYPERPARAMETERS:
            value = values[name]
            for number in _numbers(value):
                if not isinstance(number, (int, float)) or not math.isfinite(number):
                    raise ValueError(f"{self.NAME}: {name} must be a finite number, not {value}")
                parameterisation = self.HYPERPARAMETERS[name][1]
                if parameterisation is UNIT_INTERVAL and not 0.0 < number < 1.0:
                    raise ValueError(f"{self.NAME}: {name} must lie strictly between 0 and 1, not {value}")
                if parameterisation is not UNIT_INTERVAL and number < 0.0:
                    raise ValueError(f"{self.NAME}: {name} must not be negative, not {value}")

    def _per_hyperparameter_values(self, below: tuple[str, ...], raw: torch.Tensor) -> dict:
        """This level's values given per hyperparameter of the level below (``lr={"lr": κ_α, "momentum": κ_μ}``:
        a step size for each hyperparameter it learns), as tensors over that level's raw values, in its order: (L,),
        or (runs, L) where each run has its own."""
        resolved = {}
        for name, value in self._config.items():
            if not _per_hyperparameter(value):
                continue
            per_run = [value] if isinstance(value, dict) else list(value)
            for values in per_run:
                if set(values) != set(below):
                    raise ValueError(f"{self.NAME}: {name} is given for {sorted(values)}, but the level below "
                                     f"learns {list(below)}: give one value for each")
            if len(per_run) > 1 and (raw.dim() != 2 or len(per_run) != raw.shape[0]):
                raise ValueError(f"{self.NAME}: {name} has {len(per_run)} values per hyperparameter, one per run, "
                                 f"but the stack trains {raw.shape[0] if raw.dim() == 2 else 1} run(s)")
            numbers = raw.new_tensor([[float(values[hyperparameter]) for hyperparameter in below]
                                      for values in per_run])
            resolved[name] = numbers[0] if isinstance(value, dict) else numbers
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

    def _fixed(self, group: dict) -> dict:
        # A learnable value at the top of a stack goes through its parameterisation and back, as the reference,
        # which stores it that way at every height, uses it (RMSProp's α is (√α)², to the last bit). A group of
        # runs did so once, when it was made.
        learned = self._learned(group)
        fixed = {name: group[name] for name in self.HYPERPARAMETERS if name not in learned}
        if self.hyper is None and group["runs"] is None:
            for name in group["learn"]:
                if isinstance(fixed[name], torch.Tensor):  # one value per hyperparameter below: set, not stored
                    continue
                parameterisation = self.HYPERPARAMETERS[name][1]
                fixed[name] = parameterisation.to_value(parameterisation.to_raw(fixed[name]))
        return fixed

    def _values(self, group: dict, t: int | None = None, raw: torch.Tensor | None = None,
                numbers: bool | None = None) -> dict:
        """The hyperparameters the update of step t uses, and the quantities of step t derived from them: Python
        numbers where _as_numbers says so (unless numbers=False, or raw is given), else tensors for the learned ones
        (one per run in a group of runs) and for the step's quantities (so that a compiled update sees the step
        number only through its inputs)."""
        if raw is None and (self._as_numbers(group) if numbers is None else numbers):
            try:
                return self._evaluate(group, t, group["hyper_raw"].tolist(), True)
            except ArithmeticError:  # see _closed_form_hypergradient
                pass
        return self._evaluate(group, t, group["hyper_raw"].detach() if raw is None else raw, False)

    def _evaluate(self, group: dict, t: int | None, raw, numbers: bool) -> dict:
        values = self._fixed(group)
        for i, name in enumerate(self._learned(group)):
            values[name] = self.HYPERPARAMETERS[name][1].to_value(raw[..., i:i + 1] if group["runs"] else raw[i])
        if t is not None:
            for name, value in self._step_scalars(values, t).items():
                values[name] = value if numbers or isinstance(value, torch.Tensor) else raw.new_tensor(value)
        return values

    def _as_numbers(self, group: dict) -> bool:
        """Whether a group's hyperparameters are read as Python numbers: on the CPU, where reading them back costs
        no synchronisation and their arithmetic (bias corrections, parameterisations, the hypergradient's scalars)
        costs nothing, against a microsecond for each operation on a one-element tensor; not for a stack of runs
        (a value per run). The tensor operations take them as one-element tensors (_per_tensor)."""
        return group["runs"] is None and group["hyper_raw"].is_cpu

    def _chain(self, group: dict) -> list:
        raw = group["hyper_raw"].detach()
        raw = raw.tolist() if self._as_numbers(group) else raw
        return [self.HYPERPARAMETERS[name][1].derivative(raw[..., i:i + 1] if group["runs"] else raw[i])
                for i, name in enumerate(self._learned(group))]

    def _step_scalars(self, h: dict, t: int) -> dict:
        return {}

    def _per_tensor(self, h: dict, group: dict) -> list[dict]:
        """h for each tensor of the group as tensor operations take it: in a stack of runs shaped to broadcast
        against the tensor's rank; on the CPU, for a group of several tensors, its numbers made one-element tensors
        once for all of them (an operation on a small tensor costs about three times as much with a Python number
        as with a one-element tensor, while arithmetic on the numbers themselves costs nothing). A fixed 0 stays a
        number: it switches a term off (SGD without momentum)."""
        params = group["params"]
        if group["runs"] is not None:
            return [self._shaped(h, group["runs"], p.dim()) for p in params]
        # a compiled update takes them as tensors too, or it would be compiled anew for each value
        if (len(params) > 1 or self._compiles()) and self._as_numbers(group):
            names = [name for name, value in h.items() if isinstance(value, float) and value != 0.0]
            if names:
                tensors = torch.tensor([h[name] for name in names], dtype=group["hyper_raw"].dtype).unbind()
                h = {**h, **dict(zip(names, tensors))}
        return [h] * len(params)

    @staticmethod
    def _shaped(values: dict, runs: int | None, rank: int) -> dict:
        """A group of runs holds a value per run as (runs, 1): made (runs, 1, ..., 1) of `rank` dimensions, to
        broadcast against a parameter of that rank (rank 1: against the per-run sums)."""
        if runs is None:
            return values
        shape = (runs,) + (1,) * (rank - 1)
        return {k: v.reshape(shape) if isinstance(v, torch.Tensor) and v.shape == (runs, 1) else v
                for k, v in values.items()}

    def _gradient(self, group: dict, p: torch.Tensor) -> torch.Tensor:
        """A parameter's gradient, with weight decay added as torch.optim.SGD adds it: the update and the
        hypergradient are then those of the loss plus (weight_decay / 2)·|w|²."""
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        decay = group.get("weight_decay", 0.0)
        if isinstance(decay, torch.Tensor):  # one per run
            return g + self._shaped({"decay": decay}, group["runs"], p.dim())["decay"] * p
        return g + decay * p if decay else g

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
        grads = [[[self._gradient(group, p) for p in group["params"]] for group in self.param_groups]]
        for level in levels[:-1]:
            grads.append([[h] for h in level._write_hypergradients(grads[-1])])
        active = None
        if self.check_finite and len(levels) > 1:
            active = self._check_finite(levels, [[g[0] for g in groups] for groups in grads[1:]])
        for level, level_grads in reversed(list(zip(levels, grads))):
            for group, g in zip(level.param_groups, level_grads):
                level._update_group(group, g, active)
        return loss

    def _write_hypergradients(self, upstream: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """∂L/∂h for each group's raw hyperparameters, from ∂L/∂(this level's parameters), into hyper_raw.grad."""
        hypergradients = []
        for group, us in zip(self.param_groups, upstream):
            raw = group["hyper_raw"]
            runs = group["runs"]
            first = self.state[group["params"][0]]
            if "step" not in first:  # first step: there was no update yet, so the loss does not depend on h
                hypergradient = torch.zeros_like(raw)
            elif "jac" in first:  # the autograd path stored the columns, its chain rule in them
                sums = [sum(self._run_dot(column, u, runs) for column, u in zip(columns, us))
                        for columns in zip(*(self.state[p]["jac"] for p in group["params"]))]
                hypergradient = torch.stack(sums, dim=-1).neg_().to(raw.dtype)
            else:
                try:
                    hypergradient = self._closed_form_hypergradient(group, us, self._as_numbers(group))
                except ArithmeticError:
                    hypergradient = self._closed_form_hypergradient(group, us, False)
            raw.grad = hypergradient
            hypergradients.append(hypergradient)
        return hypergradients

    def _closed_form_hypergradient(self, group: dict, us: list[torch.Tensor], numbers: bool) -> torch.Tensor:
        """The group's hypergradient from the dot products of its tensors, its scalars in Python numbers or in
        tensors. Where Python raises on a number (1 / (1 - β^t) at β = 1) a tensor holds inf or NaN, which the
        divergence check then finds: so a caller redoes it in tensors."""
        runs, raw = group["runs"], group["hyper_raw"]
        learned = self._learned(group)
        h = self._values(group, self.state[group["params"][0]]["step"], numbers=numbers)
        sums = self._compiled_or("_group_dots", self._group_dots)(
            self._per_tensor(h, group), learned, [self.state[p] for p in group["params"]], list(us), runs)
        # once per group: the terms' scalars, and each parameterisation's chain rule
        terms = self._hypergradient_terms(self._shaped(h, runs, 1), learned,
                                          sums.tolist() if numbers else sums.unbind(0))
        terms = [total if derivative is None else total * (derivative.reshape(-1) if runs else derivative)
                 for total, derivative in zip(terms, self._chain(group))]
        if numbers:
            return raw.new_tensor([-term for term in terms])
        return torch.stack(terms, dim=-1).to(raw.dtype).neg_()

    def _group_dots(self, hs: list[dict], learned: tuple[str, ...], states: list[dict], us: list[torch.Tensor],
                    runs: int | None) -> torch.Tensor:
        """_tensor_dots summed over the group's tensors, (terms,) or (terms, runs): one function, so that
        compile=True fuses the group."""
        dots = [self._tensor_dots(h, learned, state, u, runs) for h, state, u in zip(hs, states, us)]
        if len(dots) == 1:
            return torch.stack(dots[0])
        return torch.stack([dot for terms in dots for dot in terms]).unflatten(0, (len(dots), -1)).sum(0)

    def _tensor_dots(self, h: dict, learned: tuple[str, ...], state: dict, u: torch.Tensor, runs: int | None):
        """Sums over one tensor (per run) from which _hypergradient_terms makes Σ ∂(last step)/∂value · u once the
        group's tensors are added up: here those sums themselves, one per learned value."""
        columns = self._jacobian(h, learned, state)
        return [self._run_dot(columns[name], u, runs) for name in learned]

    def _hypergradient_terms(self, h: dict, learned: tuple[str, ...], sums: list) -> list:
        """Σ ∂(last step)/∂value · u over the group, per learned value, from the sums of _tensor_dots (h: one
        value, or one per run as (runs,))."""
        return sums

    @staticmethod
    def _run_dot(a: torch.Tensor, b: torch.Tensor, runs: int | None) -> torch.Tensor:
        if runs is None:
            return torch.dot(a.flatten(), b.flatten())
        return torch.bmm(a.reshape(runs, 1, -1), b.reshape(runs, -1, 1)).reshape(runs)

    def _columns(self, group: dict, p: torch.Tensor, h: dict, learned: tuple[str, ...], chain: list):
        """∂(last step of p)/∂raw, a tensor shaped like p per learned hyperparameter."""
        state = self.state[p]
        if "jac" in state:  # the autograd path stored them
            return list(state["jac"])
        closed_form = self._jacobian(self._shaped(h, group["runs"], p.dim()), learned, state)
        return [closed_form[name] if derivative is None
                else closed_form[name] * self._shaped({"d": derivative}, group["runs"], p.dim())["d"]
                for name, derivative in zip(learned, chain)]

    def jacobian(self, group: int = 0) -> list[list[torch.Tensor]]:
        """The last update's Jacobian ∂step/∂raw, per parameter of the group: a tensor like it per learned value."""
        g = self.param_groups[group]
        h = self._values(g, self.state[g["params"][0]]["step"])
        return [self._columns(g, p, h, self._learned(g), self._chain(g)) for p in g["params"]]

    def _check_finite(self, levels: list[Hyperoptimizer], hypergradients: list[list[torch.Tensor]]):
        """Alone, one synchronisation per step and DivergenceError; a stack of runs instead freezes each run whose
        hypergradient is not finite, on the device, and notes where (``divergence``) for the caller to read."""
        if self.divergence is not None:
            return self._freeze_diverged(hypergradients)
        # NaN and ±inf survive a sum (a finite sum that overflows is looked into too).
        flat = [h for groups in hypergradients for h in groups]
        if math.isfinite(float(flat[0].sum() if len(flat) == 1 else torch.cat(flat).sum())):
            return None
        for k, (level, groups) in enumerate(zip(levels, hypergradients)):
            for group, hypergradient in zip(level.param_groups, groups):
                for name, value in zip(level._learned(group), hypergradient.tolist()):
                    if not math.isfinite(value):
                        step = level.state[group["params"][0]].get("step", 0) + 1
                        raise DivergenceError(k, level.NAME, name, step, value)
        return None

    def _freeze_diverged(self, hypergradients: list[list[torch.Tensor]]) -> torch.Tensor:
        step = self.state[self.param_groups[0]["params"][0]].get("step", 0) + 1
        for k, groups in enumerate(hypergradients):
            for hypergradient in groups:
                bad = ~torch.isfinite(hypergradient)  # (runs, learned)
                newly = bad.any(1) & (self.divergence["step"] == 0)
                which = bad.int().argmax(1)
                self.divergence["step"] = torch.where(newly, step, self.divergence["step"])
                self.divergence["level"] = torch.where(newly, k, self.divergence["level"])
                self.divergence["hyperparameter"] = torch.where(newly, which, self.divergence["hyperparameter"])
        return self.divergence["step"] == 0

    def diverged(self) -> list[dict]:
        """The runs of a stack of runs that diverged and were frozen: run, step, level, hyperparameter (reads the
        device once)."""
        if self.divergence is None:
            return []
        found = []
        steps, levels, which = (self.divergence[key].tolist() for key in ("step", "level", "hyperparameter"))
        for run, (step, level, index) in enumerate(zip(steps, levels, which)):
            if step:
                optimizer = self.levels()[level]
                name = optimizer._learned(optimizer.param_groups[0])[index]
                found.append({"run": run, "step": step, "level": level, "optimizer": optimizer.NAME,
                              "hyperparameter": name})
        return found

    def _update_group(self, group: dict, grads: Sequence[torch.Tensor], active: torch.Tensor | None) -> None:
        first = self.state[group["params"][0]]
        t = first.get("step", 0) + 1
        learned = self._learned(group)
        runs = group["runs"]
        params = group["params"]
        if learned and self.hypergradient == "autograd":
            steps = [self._differentiated_update(group, t, learned, g, self.state[p]) for p, g in zip(params, grads)]
        else:
            update = self._compiled_or("_group_update", self._group_update) if "step" in first else self._group_update
            steps = update(self._per_tensor(self._values(group, t), group), learned, list(grads),
                           [self.state[p] for p in params])
        for p, (direction, scale) in zip(params, steps):
            if active is not None:
                direction = torch.where(active.reshape((runs,) + (1,) * (p.dim() - 1)), direction, 0.0)
            if isinstance(scale, torch.Tensor):
                p.addcmul_(direction, scale, value=-1.0)
            else:
                p.add_(direction, alpha=-scale)
        first["step"] = t

    def _differentiated_update(self, group: dict, t: int, learned: tuple[str, ...], g: torch.Tensor,
                               state: dict) -> tuple:
        """The autograd path: the update of one tensor and its Jacobian by forward-mode autograd (kept in the
        state, for the next hypergradient), the update working on copies of the state."""
        def step_of(raw):
            scratch = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
            direction, scale = self._update(self._values(group, t, raw), learned, g, scratch)
            step = direction * scale
            return step, (step, scratch)
        jacobian, (step, new_state) = jacfwd(step_of, has_aux=True)(group["hyper_raw"].detach())
        state.update(new_state, jac=[jacobian[..., i] for i in range(len(learned))])
        return step, 1.0

    def _group_update(self, hs: list[dict], learned: tuple[str, ...], grads: list[torch.Tensor],
                      states: list[dict]) -> list[tuple]:
        """(direction, scale) of every tensor of a group, its state updated in place with what the next
        hypergradient keeps: one function, so that compile=True fuses the group."""
        steps = []
        for h, g, state in zip(hs, grads, states):
            if learned:
                for name, tensor in self._keep(h, learned, g, state).items():
                    if name in state:  # a caller's in-place zero_grad, or the update, must not change it
                        state[name].copy_(tensor)
                    else:
                        state[name] = tensor.clone()
            steps.append(self._update(h, learned, g, state))
        return steps

    def _keep(self, h: dict, learned: tuple[str, ...], g: torch.Tensor, state: dict) -> dict:
        return {}

    def _compiled_or(self, name: str, function: Callable) -> Callable:
        # With compile=True the weights' optimizer fuses its group's update and hypergradient terms, dozens of
        # element-wise operations on each tensor, into a few loops (compiled once per group layout); the first step,
        # which makes the state, runs eagerly.
        if not self._compiles():
            return function
        if name not in self._compiled:
            self._compiled[name] = torch.compile(function)
        return self._compiled[name]

    def _compiles(self) -> bool:
        return self.compile and self._owner is None

    # ----------------------------------------------------------------- reading the stack
    def hyperparameters(self, group: int = 0, run: int | None = None) -> list[dict[str, float]]:
        """Current hyperparameters of every level for one param group (and, in a stack of runs, one run), the
        weights' optimizer first, in natural units (α, not the √α RMSProp stores; β in (0, 1), not its atanh)."""
        result, below = [], ()
        for level in self.levels():  # a level above has one group per group of the level below
            if level._attached:
                g = level.param_groups[group]
                if g["runs"] is not None and run is None:
                    raise ValueError(f"this stack trains {g['runs']} runs: say which (run=0 to {g['runs'] - 1})")
                values = {}
                for name, value in level._values(g).items():
                    if isinstance(value, torch.Tensor) and value.dim() == 2:  # (runs, 1): one per run
                        value = value[run]
                    per_hyperparameter = isinstance(value, torch.Tensor) and not level._is_per_run(name, value)
                    values[name] = dict(zip(below, value.tolist())) if per_hyperparameter else float(value)
                result.append(values)
                below = level._learned(g)
            else:
                result.append({k: v for k, v in level._config.items() if k in level.HYPERPARAMETERS})
        return result

    def __str__(self) -> str:
        from .notation import format_stack
        runs = self.param_groups[0]["runs"] if self._attached else None
        if runs is None:
            return format_stack(self)
        return "[" + "; ".join(format_stack(self, run=run) for run in range(runs)) + "]"

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}({str(self)!r})"

    # ----------------------------------------------------------------- saving and resuming
    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.hyper is not None:
            state["hyper"] = self.hyper.state_dict()
        if self.divergence is not None:
            state["divergence"] = {key: value.clone() for key, value in self.divergence.items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        hyper_state = state_dict.pop("hyper", None)
        divergence = state_dict.pop("divergence", None)
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
        if divergence is not None and self.divergence is not None:
            for key, value in divergence.items():
                self.divergence[key].copy_(value)
        if self.hyper is not None:
            self.hyper.load_state_dict(hyper_state)
