"""One level of a hyperoptimizer stack: a `torch.optim.Optimizer` whose hyperparameters a level above may learn.

The weights' optimizer (level 0) owns its parameters; the level above it (``hyper=``) is an optimizer whose
parameters are level 0's learned hyperparameters, held per param group as one raw tensor ``group["hyper_raw"]``
of shape (runs, learned): a lone run is a stack of one run. And so on up the stack; the top level's
hyperparameters are fixed. `step()` steps the whole stack (hyperopt/hypergradient.py).

A schedule (any torch.optim.lr_scheduler, or a hand-set ``group["lr"] = ...``) works at any level. On a fixed value
it is what torch.optim does. On a learned value it scales what the level above learns: the step uses
``group[name] × learned / group["initial"][name]``, the learned value times the factor by which the schedule has
moved the group's value from the one it was made with, and the hypergradient reaches the learned value through
that factor. So ``group[name]`` and ``get_last_lr()`` are the schedule's values, which a plain optimizer would use;
``hyperparameters()`` and the run records give the values used.

Many runs as one. A param group with ``runs=N`` holds the parameters of N independent runs stacked on a leading
dimension; each of its hyperparameters, at every level, is then one value per run, each run's hypergradient is the
sum over its own slice only, and a run whose hypergradient becomes NaN or infinite is frozen while the others go on.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
import types
from collections import OrderedDict
from typing import Any, Callable, Iterable, NamedTuple, Sequence, Union

import torch

from . import hypergradient, polyak
from .checks import check_learn, check_values, numbers, per_hyperparameter
from .divergence import UNIT_RANGE, Divergence
from .gradients import BackwardGradients, made_gradients, take_scale_off
from .multi_tensor import FlatState
from .parameterisations import IDENTITY, LOG, SQUARE, Parameterisation, to_value_columns
from .scalars import on_device
from .shards import groups_sharded, is_dtensor, made_by_zero


GIVEN_BY_HAND = "a process group given by hand, which a copy does not carry"

# What a constructor takes: the parameters (tensors, or param group dicts), and a hyperparameter's value: a number;
# one per run (a sequence or a tensor, with runs=N); or, at the top of a stack, one per hyperparameter the level
# below learns ({"lr": κ_α, "momentum": κ_μ})
Params = Union[Iterable[torch.Tensor], Iterable[dict], None]
Value = Union[float, Sequence[float], torch.Tensor, dict]

# torch.optim's arguments that have no meaning here, and why
NOT_HERE = {
    "fused": "has no meaning here: the step is its own code, not torch's fused kernel; compile=True fuses it",
    "amsgrad": "is not supported: AMSGrad's running maximum has no hypergradient in the paper's method; use Adam",
    "capturable": "is not needed: every value the step uses is a tensor on the device already, and the whole step "
                  "compiles (compile=True)",
    "differentiable": "has no meaning here: the hypergradient is computed in closed form, not through autograd",
}


def _same(a, b) -> bool:
    # a value as a group holds it: a number, or a tensor (one per run), which is the same only as itself
    return a is b or not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a == b


def _own_copy(function: Callable) -> Callable:
    """`function` with a code object of its own. Dynamo keeps what it compiles per code object, at most 8 graphs
    (torch._dynamo.config.recompile_limit), and checks their guards one by one at each call: every compile=True stack
    compiles a graph of its own, so the ninth in a process would run eagerly (dynamo only logs it), and every stack
    would check the others' guards."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)


def _number_or_values(value):
    """A hyperparameter's value as the optimizer holds it: a number (a one-element tensor too, as torch.optim takes
    a tensor step size), or as given (one per run, one per hyperparameter below)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return value if isinstance(value, (dict, list, tuple, torch.Tensor)) else float(value)


class HeldSettings(NamedTuple):
    """A group's settings as the compiled step is handed them (Hyperoptimizer._as_tensors): the settings they were
    made from, the device, a tensor for each non-zero number, the values those hold, and each tensor's setting by
    the tensor's id (put back after the step)."""
    given: tuple
    device: torch.device
    tensors: dict[str, torch.Tensor]
    values: tuple[float, ...]
    numbers: dict[int, float]


class Learning(NamedTuple):
    """What the level above learns of a param group, worked out once (Hyperoptimizer.learning): the names; how each
    is stored (hyperopt/parameterisations.py); whether every one is stored as itself; and the bound each must stay
    below (1 for a value in [0, 1), else ∞)."""
    names: tuple[str, ...]
    kinds: tuple[Parameterisation, ...]
    as_themselves: bool
    upper: tuple[float, ...]


class Hyperoptimizer(torch.optim.Optimizer):
    """Base class of the five optimizers. A subclass (one module each: sgd.py, adam.py, adamw.py, adagrad.py,
    rmsprop.py) supplies, with ``h`` the hyperparameters shaped to broadcast against the tensor at hand:
      NAME: the paper's name of the optimizer, as the notation writes it.
      __init__(self, params=None, <each hyperparameter>=<its default>, *, **options): the constructor, its
          hyperparameters in the notation's positional order, documented (Args:); it passes them on to this one.
      LEARNED_AS: {name: the Parameterisation a level above learns it as, or None for one never learned}, the
          constructor's hyperparameters. HYPERPARAMETERS, {name: (default, Parameterisation, learnable)}, is made
          from the two: the defaults are written once, in the constructor's signature.
      default_learn(values) -> the names the reference learns for these initial values.
      step_scalars(h, t) -> {name: value}: quantities of step t (Adam's bias corrections), added to h.
      update(h, learned, g, state) -> (direction, scale): the update ``x_new = x - scale · direction`` of one
          tensor, ``scale`` a value of ``h`` or 1 (so that the update is one pass over x); it changes ``state`` in place
          (making its buffers at the first step), as torch.optim does.
      keep(h, learned, g, state) -> {name: tensor}: what the next hypergradient needs beyond the new state, read
          before the update changes the state; kept in the state as copies (in buffers kept from step to step).
      hypergradient_dots(h, learned, state, u, dot) -> sums over one tensor (per run) from which
          hypergradient_terms(h, learned, sums) makes Σ ∂(last step)/∂value · u per learned value, once the
          group's sums are added up (numbers where `dot` gives numbers: a level above a lone run on the host).
          Tests check them against autograd of `update` itself.
      from_older(state): a parameter's state as an earlier version of the optimizer saved it, brought up to date
          in place when it is loaded (optional).
    """

    # GradScaler hands itself to step() rather than unscaling the gradients itself: the hypergradient needs them
    # as backward made them, and the scale
    _step_supports_amp_scaling = True

    NAME: str
    LEARNED_AS: dict[str, Parameterisation | None]
    HYPERPARAMETERS: dict[str, tuple[float, Parameterisation, bool]]
    HAS_BETAS = False
    # options, never learned, each of its default's type: how the step size is learned and the share of the loss
    # Polyak's bound holds a step to (every optimizer's), of the update rule (SGD's nesterov)
    OPTIONS: dict[str, bool | float] = {"log_lr": False, "polyak": 0.0, "polyak_start": False}
    EPSILON: float | None = None  # a fixed ε the update adds in the parameters' dtype (Adam's is its eps)
    DECOUPLED_DECAY = False  # its weight_decay shrinks the weights (x ← x(1 - αλ)) rather than adding λx to g
    update: Callable
    keep: Callable
    hypergradient_dots: Callable
    hypergradient_terms: Callable

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "LEARNED_AS" not in cls.__dict__:  # (a wrapper's subclass, as Lightning makes: the optimizer's table)
            return
        signature = inspect.signature(cls.__init__).parameters
        cls.HYPERPARAMETERS = {name: (signature[name].default, stored or IDENTITY, stored is not None)
                               for name, stored in cls.LEARNED_AS.items()}
        # Adam's β1 and β2, which torch.optim spells betas=(β1, β2) and its schedulers cycle (OneCycleLR)
        cls.HAS_BETAS = "beta1" in cls.HYPERPARAMETERS and "beta2" in cls.HYPERPARAMETERS

    def __init__(self, params: Iterable | None = None, lr: Value | None = None, *, hyper: Hyperoptimizer | None = None,
                 learn: Iterable[str] | None = None, check_finite: bool = True, keep_in_range: bool = False,
                 compile: bool = False, foreach: bool | None = None, maximize: bool = False, runs: int | None = None,
                 process_group: torch.distributed.ProcessGroup | None = None, log_lr: bool = False,
                 polyak: float = 0.0, polyak_start: bool = False, **values: Any):
        """What every optimizer takes beside its hyperparameters (its own constructor documents those).

        Args:
            params: the tensors to optimize, or param groups (dicts with "params" and any hyperparameter, as in
                torch.optim); None for a level above another optimizer (``hyper=``), which gets its parameters
                from the level below.
            lr: the step size α, which may be given second, as torch.optim's optimizers take it.
            hyper: the optimizer that learns this one's hyperparameters (a level above); its own hyper= the
                next, and so on. Without it, nothing is learned. ``hyperopt.stack`` builds a stack from the
                paper's notation.
            learn: the hyperparameters the level above learns (default: what the paper's reference code learns
                for these values, e.g. SGD's momentum only when it starts non-zero).
            check_finite: stop at the first step whose hypergradient is not finite (DivergenceError, nothing
                changed), or with runs=N, freeze that run while the others go on.
            keep_in_range: hold a learned step size at 0 and a learned momentum or β below 1 when the level
                above would take it out of range (without it, an OutOfRangeWarning says so once).
            compile: take the whole step under torch.compile from the third step on (one graph for the run;
                schedules may change any value).
            foreach: the multi-tensor path (True, the default where it is None: each param group's tensors as
                one, a constant number of kernels per step) or the single-tensor path (False: one tensor at a
                time, the readable specification). Both compute the same numbers.
            maximize: maximize the objective, as torch.optim's maximize=True (the weights' optimizer only).
            runs: N independent runs in one param group, each parameter holding them on a leading dimension of
                N (models.batch_models); each hyperparameter is then one value per run.
            process_group: the process group the weights are sharded over, where the parameters do not say it
                (FSDP1, ZeroRedundancyOptimizer); FSDP2's DTensors say it themselves.
            log_lr: the level above learns this optimizer's step size as log α (not in the paper): its step then
                changes α by a factor (about e^±κ a step with Adam above) rather than by an amount, and α stays
                above 0. The hypergradient is α·∂L/∂α. Notation: ``Adam(1e-3, log_lr=1)/Adam(0.01)``.
            polyak: hold the learned step size under Polyak's bound (not in the paper; hyperopt/polyak.py): a
                step whose first-order decrease g·S would exceed this share of the loss (True: all of it; 0: no
                bound) is shortened to reach it, and the learned step size with it; the safeguard against a step
                size too large. For the weights' optimizer, with a level above that learns lr; step() then takes
                the loss (``opt.step(loss=loss)``). Notation: ``Adam(1, log_lr=1, polyak=1)/Adam(0.01)``.
            polyak_start: the first step is set at the bound, longer or shorter (with polyak): the step size given
                is then only where the first step's direction is taken from, and the level above goes on from
                the step size the bound gives. Notation: ``Adam^α(1e-3, log_lr=1, polyak=0.3, polyak_start=1)``.
            **values: the hyperparameters, by name, as the subclass's constructor passes them on.

        Example:
            ```python
            opt = hyperopt.SGD(model.parameters(), 0.1, momentum=0.9, keep_in_range=True,
                               hyper=hyperopt.SGD(lr={"lr": 1e-3, "momentum": 1e-4}))   # a κ for α and one for μ
            assert str(opt) == "SGD(0.1, 0.9)/SGD({α: 0.001, μ: 0.0001})"
            ```
        """
        if lr is not None:  # (second, as torch.optim's optimizers take it: SGD(params, 0.1))
            values["lr"] = lr
        values.update(log_lr=log_lr, polyak=polyak, polyak_start=polyak_start)
        values = self._betas_as_two(values)
        for name in sorted(set(values) & set(NOT_HERE)):
            raise TypeError(f"{self.NAME}: {name}= {NOT_HERE[name]}")
        options = {**self.OPTIONS, **{name: self.option(name, values.pop(name)) for name in list(values)
                                      if name in self.OPTIONS}}
        unknown = set(values) - set(self.HYPERPARAMETERS)
        if unknown:
            raise TypeError(self._no_such_hyperparameter(unknown))
        defaults = {name: float(default) for name, (default, _, _) in self.HYPERPARAMETERS.items()}
        defaults.update({k: _number_or_values(v) for k, v in values.items() if v is not None})
        check_values(self.NAME, self.HYPERPARAMETERS, defaults,
                     learned=() if hyper is None else self.default_learn(defaults) if learn is None else tuple(learn))
        if hyper is not None:
            self._refuse_values_per_hyperparameter(defaults)
        self._learn_given = learn is not None  # else each param group learns what its own values call for
        learn = self.default_learn(defaults) if learn is None else tuple(learn)
        check_learn(self.NAME, self.HYPERPARAMETERS, learn)
        defaults["learn"] = learn
        defaults["runs"] = runs
        defaults.update(options)
        if self.HAS_BETAS:
            defaults["betas"] = (defaults["beta1"], defaults["beta2"])
        if hyper is not None and not isinstance(hyper, Hyperoptimizer):
            raise TypeError(f"hyper must be a hyperopt optimizer (SGD, Adam, AdaGrad, RMSProp), not {type(hyper)}")
        if hyper is not None and hyper.maximize:
            raise ValueError("maximize= is for the weights' optimizer, whose objective it is; a level above "
                             "lowers that objective's hypergradient whichever way the weights go")
        if hyper is not None and hyper.attached:
            raise ValueError("this hyper optimizer already has parameters; a level above takes none of its own")
        self.hyper = hyper
        self._levels: tuple[Hyperoptimizer, ...] | None = None  # this level and those above it (levels)
        self.check_finite = check_finite
        self.keep_in_range = keep_in_range
        self.compile = compile
        self._compiled: dict[str, Callable] = {}
        self._eager_steps = 0  # taken before the step is compiled (step_stack)
        self._settings_held: dict[tuple[int, int], HeldSettings] = {}  # the compiled step's settings (_as_tensors)
        self.foreach = foreach
        self.maximize = bool(maximize)  # the weights' objective is maximized: every level steps along -gradient
        self._flat: dict[int, FlatState] = {}  # each param group's tensors as one, on the multi-tensor path
        self._used: dict[int, tuple] = {}  # the values each group's last update used (values_used)
        self._learning: dict[tuple, Learning] = {}  # by the learn= and log_lr of a group (learning)
        # Several processes (hyperopt/shards.py): the group the weights' shards are spread over, as given for what
        # the parameters cannot tell, and as found; which param groups hold shards.
        self.process_group = process_group
        self.shard_group = None
        self.sharded: list[bool] = []
        self.dtensors = False  # whether any parameter is a DTensor, whose shard on this process the step takes
        self.defaults = defaults  # (torch.optim.Optimizer sets it again when the level gets its parameters)
        self.attached = False
        self._owner: Hyperoptimizer | None = None
        self.divergence: Divergence | None = None  # the weights' optimizer's: where each run diverged
        self.backward: BackwardGradients | None = None  # the weights' optimizer's, under a level above
        # torch wraps step() in hooks that read these; a level not attached yet must still fail with our message.
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = OrderedDict(), OrderedDict()
        if params is not None:
            self._attach(params)

    def _betas_as_two(self, values: dict) -> dict:
        """torch.optim's betas=(β1, β2) as the paper's beta1= and beta2= (which, given too, must be left at their
        defaults: a constructor passes its defaults on)."""
        if "betas" not in values or values["betas"] is None:
            return {k: v for k, v in values.items() if k != "betas"}
        if not self.HAS_BETAS:
            raise TypeError(self._no_such_hyperparameter({"betas"}))
        if any(values.get(name, default) is not default
               for name, (default, _, _) in self.HYPERPARAMETERS.items() if name in ("beta1", "beta2")):
            raise TypeError(f"{self.NAME}: give betas=(β1, β2) or beta1= and beta2=, not both")
        betas = values["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{self.NAME}: betas= is a pair (β1, β2), as torch.optim.Adam takes it, not {betas!r}")
        values = {k: v for k, v in values.items() if k != "betas"}
        values["beta1"], values["beta2"] = betas
        return values

    @staticmethod
    def _betas_written(group: dict) -> dict:
        """{"beta1": β1, "beta2": β2} where group["betas"] was written since the group's last update (or since it
        was made), as torch.optim's schedulers write it (OneCycleLR cycles β1 there); else {}."""
        last = group["last_step"]
        written = group["betas"]
        if _same(written[0], last["beta1"]) and _same(written[1], last["beta2"]):
            return {}
        return {"beta1": written[0], "beta2": written[1]}

    def _take_betas(self, group: dict) -> None:
        """Make group["betas"] and group["beta1"], group["beta2"] agree, at the start of a step: whichever was
        written since the group's last update wins, betas= as torch.optim's schedulers write it, beta1= and beta2=
        as the notation spells them."""
        written = self._betas_written(group)
        if written:
            group.update(written)
        elif not (_same(group["beta1"], group["last_step"]["beta1"])
                  and _same(group["beta2"], group["last_step"]["beta2"])):
            group["betas"] = (group["beta1"], group["beta2"])

    @classmethod
    def default_learn(cls, values: dict) -> tuple[str, ...]:
        """What the reference code learns for these initial values: every learnable hyperparameter."""
        return tuple(name for name, (_, _, learnable) in cls.HYPERPARAMETERS.items() if learnable)

    @staticmethod
    def step_scalars(h: dict, t: torch.Tensor) -> dict:
        return {}

    @staticmethod
    def from_older(state: dict) -> None:
        """Nothing to bring up to date: the state is saved as it has always been."""

    def check_options(self, group: dict) -> None:
        """Raise ValueError where the group's options do not fit its values."""

    @classmethod
    def option(cls, name: str, value: Any) -> bool | float:
        """An option's value as its default's type (a switch's 1 is True, Polyak's share True is 1.0)."""
        return type(cls.OPTIONS[name])(value)

    # ----------------------------------------------------------------- construction and param groups
    def _attach(self, params):
        if self._owner is None:
            self._refuse_values_per_hyperparameter(self.defaults)
        self.attached = True
        super().__init__(params, dict(self.defaults))

    def _refuse_values_per_hyperparameter(self, values: dict) -> None:
        given = sorted(name for name, value in values.items() if per_hyperparameter(value))
        if given:
            raise ValueError(f"{self.NAME}: a value per hyperparameter of the level below ({', '.join(given)}"
                             "={...}) is for a level above another optimizer, at the top of the stack where values "
                             "are fixed")

    def _no_such_hyperparameter(self, names) -> str:
        hint = ""
        if "weight_decay" in names:
            hint = (f" ({self.NAME} takes no weight decay, as in the reference code: AdamW(lr, beta1, beta2, eps, "
                    "weight_decay) decouples it, SGD(lr, momentum, weight_decay) adds it to the gradient, or add "
                    "(λ/2)·|w|² to the loss)")
        return f"{self.NAME} has no hyperparameter {sorted(names)}; it has {list(self.HYPERPARAMETERS)}{hint}"

    # Keys a param group may hold beyond the hyperparameters: torch.optim's own, and a scheduler's.
    GROUP_KEYS = {"params", "param_names", "name", "learn", "runs", "initial", "without_grad", "last_step",
                  "initial_lr", "betas", "capturable"}

    def add_param_group(self, param_group: dict) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"a param group is a dict, not {type(param_group).__name__}")
        arguments = sorted(set(param_group) & {"hyper", "check_finite", "keep_in_range", "compile", "foreach",
                                                "maximize", "process_group"})
        if arguments:  # ZeroRedundancyOptimizer puts the optimizer's keyword arguments into each param group
            raise ValueError(
                f"a param group holds {arguments}, a keyword argument of the optimizer (as ZeroRedundancyOptimizer("
                "params, optimizer_class, **kwargs) passes them); ZeRO gives each process tensors of its own, whose "
                "hypergradient sums the processes must complete: build the stack with ZeroRedundancyOptimizer("
                "params, functools.partial(hyperopt.stack, 'SGD(0.1)/SGD(1e-3)', process_group=GROUP)), GROUP "
                "being ZeRO's process group")
        unknown = set(param_group) - set(self.HYPERPARAMETERS) - set(self.OPTIONS) - self.GROUP_KEYS
        if unknown:
            raise ValueError(f"a param group holds a key {self.NAME} would not use: "
                             + self._no_such_hyperparameter(unknown))
        param_group = self._betas_as_two(dict(param_group)) if "betas" in param_group else param_group
        param_group = {**param_group, **{k: _number_or_values(v) for k, v in param_group.items()
                                          if k in self.HYPERPARAMETERS}}
        if "learn" not in param_group and not self._learn_given:
            param_group["learn"] = self.default_learn({**self.defaults, **param_group})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if not group["params"]:
            self.param_groups.pop()
            raise ValueError(f"{self.NAME}: a param group without parameters (ZeroRedundancyOptimizer gives a "
                             "process none of a group's tensors where the group has fewer tensors than there are "
                             "processes: merge it with another group)")
        first = group["params"][0]
        runs = group["runs"]
        self.dtensors = self.dtensors or any(map(is_dtensor, group["params"]))
        complex_ = [tuple(p.shape) for p in group["params"] if p.is_complex()]
        if complex_:
            raise ValueError(f"{self.NAME}: complex parameters (of shape {complex_}) are not supported; optimize "
                             "torch.view_as_real of them, whose real and imaginary parts are two real parameters")
        if runs is not None:
            if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
                raise ValueError(f"{self.NAME}: runs must be a whole number ≥ 1 (the leading dimension every "
                                 f"parameter of the group stacks its runs on), not {runs!r}")
            bad = [tuple(p.shape) for p in group["params"] if p.dim() == 0 or p.shape[0] != runs]
            if bad:
                raise ValueError(f"{self.NAME}: a param group of runs={runs} holds each run's parameters on a "
                                 f"leading dimension of {runs}, but has parameters of shape {bad}")
        check_values(self.NAME, self.HYPERPARAMETERS, group, self.learned(group))
        check_learn(self.NAME, self.HYPERPARAMETERS, group["learn"])
        group["learn"] = tuple(group["learn"])
        for name in self.OPTIONS:
            group[name] = self.option(name, group[name])
        self.check_options(group)
        epsilons = numbers(group["eps"]) if "eps" in group else [self.EPSILON] if self.EPSILON else []
        smallest = torch.finfo(first.dtype).tiny * torch.finfo(first.dtype).eps if first.is_floating_point() else 0
        if any(0.0 < eps < smallest / 2 for eps in epsilons):
            raise ValueError(f"{self.NAME}: its ε ({', '.join(map(str, epsilons))}) is 0 in {first.dtype}, whose "
                             f"smallest positive number is {smallest:.2g}: keep the parameters in float32 (autocast "
                             "still computes in lower precision), or give a larger eps")
        if group["log_lr"] and "lr" not in self.learned(group):
            raise ValueError(f"{self.NAME}: log_lr=True has the level above learn the step size as log α, but no "
                             "level above learns it here: give this optimizer a hyper= that learns lr, or drop "
                             "log_lr")
        for name in self.learned(group) if self.hyper is not None else ():
            stored_as = self.stored_as(group, name)
            if stored_as is SQUARE and 0.0 in numbers(group[name]):
                raise ValueError(f"{self.NAME}: a learned {name} is stored as its square root (as the reference "
                                 f"stores it), whose hypergradient is 0 at {name}=0: it would stay 0; start it "
                                 "above 0")
            if stored_as is LOG and min(numbers(group[name])) <= 0.0:
                raise ValueError(f"{self.NAME}: with log_lr=True the step size is learned as its logarithm, so it "
                                 f"must start above 0, not at {min(numbers(group[name]))}")
        if any(g["polyak"] or g["polyak_start"] for g in self.param_groups):
            self._check_polyak(group)
        if any(p.device != first.device or p.dtype != first.dtype for p in group["params"]):
            raise ValueError("all parameters of a param group must share one device and dtype (their "
                             "hyperparameters are one set of tensors); put the others in a param group of their own")
        if "weight_decay" in self.learned(group) and "lr" not in self.learned(group):
            raise ValueError(f"{self.NAME} learns its weight decay together with its step size: "
                             "learn=('lr', 'weight_decay')")
        if self._owner is not None and not self.DECOUPLED_DECAY and any(numbers(group.get("weight_decay", 0.0))):
            raise ValueError(f"{self.NAME}: weight decay is for the weights' optimizer, not a level above it")
        if self.hyper is not None and not group["learn"]:
            raise ValueError(f"{self.NAME} learns no hyperparameter (learn=()), so the level above it has "
                             "nothing to optimize: drop the level above or say what to learn")
        if runs is None:
            per_run = [name for name in self.HYPERPARAMETERS if self._is_per_run(name, group[name])]
            if per_run:
                raise ValueError(f"{self.NAME}: {', '.join(per_run)} has a value per run; say how many runs the "
                                 "group stacks: runs=N")
        count = 1 if runs is None else runs
        group["hyper_raw"] = self._raw_values(group, count, torch.promote_types(first.dtype, torch.float32),
                                              first.device)
        group.setdefault("without_grad", [])  # the parameters the last step left alone, having no gradient
        # torch.compile marks the groups of an optimizer it traces capturable (every value on the device, as ours
        # are); holding the mark from the start spares a recompilation
        group["capturable"] = True
        if self.HAS_BETAS:
            group["betas"] = (group["beta1"], group["beta2"])
        # the settings the group's last update used (until its first, those it was made with)
        group.setdefault("last_step", {name: group[name] for name in self.HYPERPARAMETERS})
        # what a schedule's factor is taken against (see the module's docstring)
        group.setdefault("initial", {name: group[name].clone() if isinstance(group[name], torch.Tensor) else group[name]
                                     for name in self.learned(group)})
        if self._owner is None:
            if self.divergence is None:
                self.divergence = Divergence(count, first.device)
            elif len(self.divergence.tensors["step"]) != count:
                raise ValueError(f"{self.NAME}: every param group of a stack of runs has the same number of runs "
                                 f"({len(self.divergence.tensors['step'])}), not {count}")
        if self.hyper is not None and self._owner is None:
            self._note_shards(group)
            self.backward = self.backward or BackwardGradients()
            self.backward.watch(group["params"])
            # Polyak's bound needs the gradient as backward made it from the first step on, before any clipping
            # has been seen to change it: a copy is kept from the start
            self.backward.copying = self.backward.copying or bool(group["polyak"])
        if self.hyper is not None:
            # the level above sees this group's runs on the leading dimension of hyper_raw, one run for a lone one
            hyper_group = {"params": [group["hyper_raw"]], "runs": count,
                           **self.hyper._per_hyperparameter_values(self.learned(group), group["hyper_raw"])}
            if self.hyper.attached:
                self.hyper.add_param_group(hyper_group)
            else:
                self.hyper._owner = self
                self.hyper._attach([hyper_group])

    def _check_polyak(self, group: dict) -> None:
        """Refuse polyak= where the bound could not mean what hyperopt/polyak.py says."""
        why = None
        if not 0.0 <= group["polyak"] <= 1.0:
            why = "is not a share of the loss a step may promise to take off: give one from 0 (no bound) to 1"
        elif group["polyak_start"] and not group["polyak"]:
            why = "is no bound for polyak_start=True to set the first step at: give polyak=1 (or a share)"
        elif group["polyak_start"] and min(numbers(group["lr"])) <= 0.0:
            why = ("with polyak_start=True scales the step size given to the bound, which a step size of "
                   f"{min(numbers(group['lr']))} cannot be: start it above 0")
        elif self._owner is not None:
            why = "is for the weights' optimizer, whose step the loss bounds, not a level above it"
        elif self.hyper is None or "lr" not in self.learned(group):
            why = "scales the learned step size: it needs a level above that learns lr (hyper=)"
        elif self.maximize:
            why = "bounds a loss's decrease by the loss, which maximize=True does not lower"
        elif self.compile:
            why = "reads the loss back to the host to check it, which a compiled step does not: drop compile=True"
        elif any((g["polyak"], g["polyak_start"]) != (group["polyak"], group["polyak_start"])
                 for g in self.param_groups):
            why = ("bounds the step of all the weights together: give it (and polyak_start) to the optimizer, not "
                   "to some param groups")
        if why is not None:
            raise ValueError(f"{self.NAME}: polyak={group['polyak']:g} {why}")

    def _note_shards(self, group: dict) -> None:
        """Whether the group's weights are shards whose sums the other processes complete, and over which group."""
        if self.process_group is None and made_by_zero():
            raise ValueError(f"{self.NAME}: a stack made by ZeroRedundancyOptimizer holds this process's partition "
                             "of the weights, whose hypergradient the other processes complete: pass "
                             "process_group= (ZeRO's: functools.partial(hyperopt.stack, SPEC, process_group=GROUP))")
        over = groups_sharded(group["params"], self.process_group)
        if over is not None and self.shard_group is not None and over is not self.shard_group:
            raise ValueError(f"{self.NAME}: its param groups are sharded over different process groups; a stack "
                             "sums its hypergradient over one: shard every parameter over the same processes")
        self.shard_group = self.shard_group if over is None else over
        self.sharded.append(over is not None)

    def _is_per_run(self, name: str, value) -> bool:
        # A level above holds a value per hyperparameter of the level below as a tensor too; any other sequence or
        # tensor is a value per run.
        given_per_hyperparameter = self._owner is not None and per_hyperparameter(self.defaults.get(name))
        return isinstance(value, (list, tuple)) or isinstance(value, torch.Tensor) and not given_per_hyperparameter

    def _raw_values(self, group: dict, count: int, dtype, device) -> torch.Tensor:
        """The raw learned values of each run, (runs, learned). In a group of runs each hyperparameter becomes a
        (runs, 1) tensor, or a number where the runs share a fixed value (a learnable one at the top of a stack
        through its parameterisation and back, see _fixed); a lone run's group keeps its numbers, as torch.optim's
        (so that a learning-rate scheduler works at the top of a stack)."""
        learned = self.learned(group)
        if group["runs"] is None:
            raw = [[self.stored_as(group, name).to_raw(group[name]) for name in learned]]
            return torch.tensor(raw, dtype=dtype, device=device).reshape(1, len(learned))
        raw = []
        for name in self.HYPERPARAMETERS:
            value, parameterisation = group[name], self.stored_as(group, name)
            if isinstance(value, torch.Tensor) and not self._is_per_run(name, value):
                continue  # one value per hyperparameter below, the same for every run
            given = numbers(value)
            given = given * count if len(given) == 1 else given
            if len(given) != count:
                raise ValueError(f"{self.NAME}: {name} has {len(given)} values for {count} runs")
            if name in learned:
                raw.append([parameterisation.to_raw(n) for n in given])
                # what a schedule sets (the value it scales): a number for one run, as in a lone run's group
                group[name] = given[0] if count == 1 else torch.tensor(given, dtype=dtype, device=device).reshape(
                    count, 1)
                continue
            if self.hyper is None and name in group["learn"]:
                given = [parameterisation.to_value(parameterisation.to_raw(n)) for n in given]
            # A fixed value the runs share stays a number, as in a lone run (SGD's momentum 0 stays unused).
            group[name] = given[0] if len(set(given)) == 1 else torch.tensor(
                given, dtype=dtype, device=device).reshape(count, 1)
        return torch.tensor(raw, dtype=dtype, device=device).reshape(len(raw), count).T.contiguous()

    def _per_hyperparameter_values(self, below: tuple[str, ...], raw: torch.Tensor) -> dict:
        """This level's values given per hyperparameter of the level below (``lr={"lr": κ_α, "momentum": κ_μ}``:
        a step size for each hyperparameter it learns), as tensors over that level's raw values, in its order: (L,),
        or (runs, L) where each run has its own."""
        resolved = {}
        for name, value in self.defaults.items():
            if not per_hyperparameter(value):
                continue
            per_run = [value] if isinstance(value, dict) else list(value)
            for values in per_run:
                if set(values) != set(below):
                    raise ValueError(f"{self.NAME}: {name} is given for {sorted(values)}, but the level below "
                                     f"learns {list(below)}: give one value for each")
            if len(per_run) > 1 and len(per_run) != raw.shape[0]:
                raise ValueError(f"{self.NAME}: {name} has {len(per_run)} values per hyperparameter, one per run, "
                                 f"but the stack trains {raw.shape[0]} run(s)")
            given = raw.new_tensor([[float(values[hyperparameter]) for hyperparameter in below]
                                    for values in per_run])
            resolved[name] = given[0] if isinstance(value, dict) else given
        return resolved

    # ----------------------------------------------------------------- the values a step uses
    def levels(self) -> list[Hyperoptimizer]:
        """This optimizer and every level above it.

        Returns:
            The levels, bottom (this one) first.

        Example:
            ```python
            opt = hyperopt.stack("Adam/SGD(1e-5)/SGD(1e-6)", model.parameters())
            assert [level.NAME for level in opt.levels()] == ["Adam", "SGD", "SGD"]
            ```
        """
        levels = self._levels
        if levels is None:  # (the stack above a level is fixed when it is made)
            chain = [self]
            while chain[-1].hyper is not None:
                chain.append(chain[-1].hyper)
            levels = tuple(chain)
            if not torch.compiler.is_compiling():  # (torch 2.11's compiler cannot set an optimizer's attributes)
                self._levels = levels
        return list(levels)

    def stored_as(self, group: dict, name: str) -> Parameterisation:
        """How the level above holds the group's learned `name` (hyperopt/parameterisations.py)."""
        return LOG if name == "lr" and group["log_lr"] else self.HYPERPARAMETERS[name][1]

    def learned(self, group: dict) -> tuple[str, ...]:
        """The hyperparameters of this group that the level above learns (none at the top of the stack)."""
        return group["learn"] if self.hyper is not None else ()

    def learning(self, group: dict) -> Learning:
        """What the level above learns of the group, worked out once for each learn= and log_lr of the level's
        groups."""
        key = group["learn"], group["log_lr"]
        learning = self._learning.get(key)
        if learning is None:
            names = self.learned(group)
            kinds = tuple(self.stored_as(group, name) for name in names)
            learning = self._learning[key] = Learning(names, kinds, all(kind is IDENTITY for kind in kinds), tuple(
                1.0 if name in UNIT_RANGE else math.inf for name in names))
        return learning

    def _fixed(self, group: dict, settings: dict, learned: tuple[str, ...]) -> dict:
        # A learnable value at the top of a stack goes through its parameterisation and back, as the reference,
        # which stores it that way at every height, uses it (RMSProp's α is (√α)², to the last bit). A group of
        # runs did so once, when it was made.
        fixed = dict(zip(self.HYPERPARAMETERS, map(settings.__getitem__, self.HYPERPARAMETERS)))
        for name in learned:
            del fixed[name]
        if self.hyper is None and group["runs"] is None:
            for name in group["learn"]:
                parameterisation = self.stored_as(group, name)
                # (one value per hyperparameter below, a tensor, is set, not stored)
                if parameterisation is not IDENTITY and not isinstance(fixed[name], torch.Tensor):
                    fixed[name] = parameterisation.to_value(parameterisation.to_raw(fixed[name]))
        return fixed

    def values(self, group: dict, t: torch.Tensor | None = None, raw: torch.Tensor | None = None,
               host: bool = False, last: bool = False) -> dict:
        """The hyperparameters a group's update uses: each learned one a (runs, 1) tensor, each fixed one as the
        group holds it; with the step t, also the quantities of that step (Adam's bias corrections).
        ``raw`` stands in for the group's raw values (the tests differentiate the update through it). With
        ``host`` (a lone run on the CPU: hypergradient.on_host), all of them Python numbers (t one too). With
        ``last``, the group's settings as its last update found them (what a schedule had set then), for the
        hypergradient, which differentiates that update."""
        return self._values(group, t, raw, host, last)[0]

    def _values(self, group: dict, t, raw, host: bool, last: bool) -> tuple[dict, dict]:
        """`values`, and the schedule's moves it took (`scheduled`), which the hypergradient differentiates."""
        settings = self.settings(group, last)
        learning = self.learning(group)
        values = self._fixed(group, settings, learning.names)
        moved = self._add_learned(group, settings, learning, values, raw, host) if learning.names else {}
        values.update(zip(self.OPTIONS, map(group.__getitem__, self.OPTIONS)))  # (numbers: operands keep them)
        if t is not None:
            values.update(self.step_scalars(values, t))
        return values, moved

    def _add_learned(self, group: dict, settings: dict, learning: Learning, values: dict, raw, host: bool) -> dict:
        """values[name] = each learned value, in natural units, times its schedule's factor; returns the
        schedule's moves (`scheduled`)."""
        if host:
            learned_values = group["hyper_raw"].tolist()[0]
            if not learning.as_themselves:
                learned_values = [kind.to_value(x) for kind, x in zip(learning.kinds, learned_values)]
        else:
            learned_values = to_value_columns(learning.kinds, group["hyper_raw"].detach() if raw is None else raw)
        scheduled = self.scheduled(group, settings)
        for name, value in zip(learning.names, learned_values):
            if name in scheduled:
                now, initial = scheduled[name]
                # exactly the schedule's value while the learned one has not moved (now × 1.0)
                value = now * (value / initial) if not isinstance(now, torch.Tensor) else torch.where(
                    now == initial, value, now * (value / initial))
            values[name] = value
        return scheduled

    def values_for_update(self, group: dict, t, host: bool) -> dict:
        """`values` for the group's update at step t, kept, with the schedule's moves, for its next hypergradient
        (`values_used`), where a level above takes one."""
        values, moved = self._values(group, t, None, host, False)
        if self.hyper is not None and (host or self._keeps_values(group)):
            self._used[id(group)] = (group, group["hyper_raw"]._version, host, values, moved)
        return values

    @staticmethod
    def _keeps_values(group: dict) -> bool:
        """Whether an update keeps the values it used for the next hypergradient, and a hypergradient takes those
        kept: in an eager step, not in one compiled (no version counter tells a change there) nor in one a CUDA
        graph captures (each replay would read the values kept by the step before the capture). (The host path is
        neither: its callers ask this only off it.)"""
        return not (torch.compiler.is_compiling()
                    or group["hyper_raw"].is_cuda and torch.cuda.is_current_stream_capturing())

    def values_used(self, group: dict, t, host: bool) -> tuple[dict, dict]:
        """The values the group's last update (step t) used, and the schedule's moves it took (`scheduled`), for
        the hypergradient that differentiates it: as that update kept them, where nothing has changed its learned
        values since (a load, keep_in_range's clamp), else made again from the settings it used."""
        kept = self._used.get(id(group)) if host or self._keeps_values(group) else None
        if kept is not None and kept[0] is group and kept[1] == group["hyper_raw"]._version and kept[2] == host:
            return kept[3], kept[4]
        return self._values(group, t, None, host, True)

    @staticmethod
    def settings(group: dict, last: bool = False) -> dict:
        """Where a group's settings (each hyperparameter as a schedule or the caller set it) are read: the group
        itself, or with ``last`` what they were when its last update was taken (a schedule has moved them since)."""
        return group.get("last_step", group) if last else group

    def scheduled(self, group: dict, settings: dict) -> dict:
        """{name: (the group's setting, its value when the group was made)} for each learned hyperparameter a
        schedule may have moved: one whose number has changed, or one held as a tensor (a value per run), which is
        not read back to the host to find out."""
        moved = {}
        for name, initial in group["initial"].items() if self.hyper is not None else ():
            now = settings[name]
            if now is initial:  # (a number no schedule has set: the one the group was made with)
                continue
            if isinstance(now, torch.Tensor) or isinstance(initial, torch.Tensor):
                moved[name] = (now, initial)
            elif now != initial:
                if initial == 0.0:
                    raise ValueError(f"{self.NAME}: {name} was set to {now} (by a schedule?), but the group was "
                                     f"made with {name}=0, which a schedule's factor cannot scale: make it with "
                                     f"the value the schedule starts from")
                moved[name] = (now, initial)
        return moved

    @staticmethod
    def schedule_slopes(moved: dict) -> dict:
        """∂(value used)/∂(learned value) of each hyperparameter a schedule had moved (`scheduled`) in an update:
        the schedule's factor then."""
        slopes = {}
        for name, (now, initial) in moved.items():
            slopes[name] = now / initial if not isinstance(now, torch.Tensor) else torch.where(
                now == initial, 1.0, now / initial)
        return slopes

    def uses_foreach(self) -> bool:
        """Whether the step takes the multi-tensor path (hyperopt/multi_tensor.py): as foreach= says; by default
        (None) yes, since it is the faster everywhere it has been measured: a constant number of kernels per step
        whatever the number of tensors (scripts/bench_kernels.py), and on a CPU a faster step alone on ResNet-20
        and the MNIST MLP (scripts/bench_step.py, results/bench_step_*.json)."""
        return self.foreach is None or bool(self.foreach)

    def flat_state(self, index: int) -> FlatState:
        """Param group `index`'s tensors as one, on the multi-tensor path."""
        flat = self._flat.get(index)
        return flat if flat is not None else self._flat.setdefault(index, FlatState())

    def step_stack(self) -> Callable:
        """The step of the whole stack (hypergradient.step_stack); with compile=True, the same under torch.compile,
        compiled once and kept. The first two steps are taken eagerly: they make the state (the first its buffers,
        the second what the next hypergradient keeps), after which the compiled step's structure does not change."""
        if not self.compile:
            return hypergradient.step_stack
        if self._eager_steps < 2:
            self._eager_steps += 1
            return hypergradient.step_stack
        if "step" not in self._compiled:
            self._compiled["step"] = torch.compile(_own_copy(hypergradient.step_stack))
        return self._compiled_step

    def _compiled_step(self, weights: Hyperoptimizer, made: list, loss: None = None) -> None:
        """The compiled step, handed every setting that a schedule or the caller may change as a tensor: a number
        would be a constant of the compiled graph, compiled again each time it moved. (A setting of 0 stays a
        number: it switches a term off, SGD's momentum, and the graph's structure with it.)"""
        kept = []
        for level in self.levels():
            level._used.clear()  # (the compiled step keeps no values for the next)
            for index, group in enumerate(level.param_groups):
                now = dict(zip(level.HYPERPARAMETERS, map(group.__getitem__, level.HYPERPARAMETERS)))
                numbers = {}  # the setting each tensor stands for, by the tensor's id
                for last, settings in enumerate((group, group["last_step"])):
                    held = level._as_tensors(group, settings, (index, last))
                    numbers.update(held.numbers)
                    settings.update(held.tensors)
                kept.append((group, now, numbers))
        for index, group in enumerate(self.param_groups):
            flat = self._flat.get(index)
            if flat is not None:  # (state.get: a parameter never stepped gets no state, as in torch.optim)
                states = list(map(self.state.get, group["params"]))
                flat.held_before = None not in states and flat.holds(group["params"], states)
        try:
            self._compiled["step"](weights, made)
        finally:
            for flat in self._flat.values():
                flat.held_before = False
            for group, now, numbers in kept:
                group.update(now)
                group["last_step"] = {name: numbers.get(id(value), value)
                                      for name, value in group["last_step"].items()}

    def _as_tensors(self, group: dict, settings: dict, key: tuple[int, int]) -> HeldSettings:
        """A 0-dim float64 tensor for each setting that is a non-zero number, at the top of a stack through its
        parameterisation and back (as _fixed takes it). The tensors are kept from step to step (`key`: the group's
        index, and whether these are its settings now or at its last update), each refilled where its number has
        changed: made anew each step, they would be copies from the host, each of which waits on a GPU for every
        kernel queued before it. Where every setting is the object it was, nothing is worked out again."""
        given = tuple(map(settings.__getitem__, self.HYPERPARAMETERS))
        device = group["hyper_raw"].device
        held = self._settings_held.get(key)
        if held is not None and held.device == device and all(map(operator.is_, given, held.given)):
            return held
        fixed = self._fixed(group, settings, self.learned(group))
        names = tuple(name for name, value in zip(self.HYPERPARAMETERS, given)
                      if isinstance(value, float) and value != 0.0)
        values = tuple(fixed.get(name, settings[name]) for name in names)
        if held is None or held.device != device or tuple(held.tensors) != names:
            tensors = dict(zip(names, on_device(values, torch.float64, device).unbind()))
        else:
            tensors = held.tensors
            for tensor, before, value in zip(tensors.values(), held.values, values):
                if value != before:
                    tensor.fill_(value)
        held = self._settings_held[key] = HeldSettings(given, device, tensors, values, {
            id(tensor): settings[name] for name, tensor in tensors.items()})
        return held

    # ----------------------------------------------------------------- one step of the whole stack
    @torch.no_grad()
    def step(self, closure: Callable | None = None, grad_scaler: torch.amp.GradScaler | None = None,
             loss: torch.Tensor | float | None = None) -> Any:
        """Take one step of the whole stack: hypergradients bottom-up, then updates top-down
        (``hyperopt/hypergradient.py``). Call it on the weights' optimizer, after ``loss.backward()``.

        Args:
            closure: re-evaluates the model and returns the loss, as for ``torch.optim`` (called once).
            grad_scaler: GradScaler.step's own (``scaler.step(opt)`` hands itself over): its scale is taken off
                the gradients exactly, and a step it would skip is skipped, as it skips torch.optim's.
            loss: the loss whose gradients these are (unscaled; one per run), which polyak=True bounds the step
                by; ignored without it. A closure's loss stands in for it.

        Returns:
            The closure's loss, or None without one.

        Raises:
            DivergenceError: a hypergradient, or at the first step a gradient, is NaN or infinite (a lone run in
                eager mode, with check_finite=True); nothing was changed.

        Example:
            ```python
            opt = hyperopt.stack("SGD(0.1)/SGD(1e-3)", model.parameters())
            x, y = batches[0]
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            ```
        """
        if not self.attached:
            raise RuntimeError(f"{self.NAME} has no parameters: pass them (params=...) or use it as hyper= of "
                               "another optimizer")
        if self._owner is not None:
            raise RuntimeError(f"this {self.NAME} is a level above another optimizer: call step() on the "
                               "weights' optimizer, which steps the whole stack")
        if self.process_group is GIVEN_BY_HAND:
            raise RuntimeError(f"this {self.NAME} is a copy of a stack whose weights were sharded over the "
                               "process_group= it was given, which a copy cannot carry: build the stack anew with "
                               "it, and load_state_dict the copy's state")
        if hasattr(self, "found_inf"):
            raise RuntimeError("this torch's GradScaler no longer hands itself to step(), so the hypergradient "
                               "cannot take its scale off: use torch<=2.14's GradScaler, or bf16 autocast (which "
                               "needs no scaler)")
        levels = self.levels()
        if not torch.compiler.is_compiling():  # (torch 2.11's compiler cannot set an optimizer's attributes)
            for level in levels[1:]:  # it steps too: a scheduler of a level above checks (torch reads this flag)
                level._opt_called = True
        returned = None
        if closure is not None:
            with torch.enable_grad():
                returned = loss = closure()
        for level in levels:
            if level.HAS_BETAS:
                for group in level.param_groups:
                    level._take_betas(group)
        bound = polyak.mean_loss(self, polyak.check_loss(self, loss)) if self.needs_loss else None
        if grad_scaler is None:
            made, skip = made_gradients(self), False
        else:
            made, skip = take_scale_off(self, grad_scaler)
        if not skip:
            self.step_stack()(self, made, bound)
        if self.backward is not None:
            self.backward.forget()  # (what backward made is of this step's gradients only)
        return returned

    @property
    def needs_loss(self) -> bool:
        """Whether step() takes the loss (polyak=True), as a training loop that hands it over asks."""
        return bool(self.param_groups and self.param_groups[0]["polyak"])

    def diverged(self) -> list[dict]:
        """The runs that diverged and were frozen (a stack of runs, or a compiled step; a lone run in eager mode
        raises DivergenceError instead). Reads the device once.

        Returns:
            One dict per frozen run: run, step, level, optimizer, hyperparameter (None where a gradient of the
            weights was not finite).

        Example:
            ```python
            opt = hyperopt.stack("SGD(0.1)/SGD(1e-3)", model.parameters())
            assert opt.diverged() == []
            ```
        """
        found = []
        for run, step, level, index in self.divergence.events():
            optimizer = self.levels()[level]
            found.append({"run": run, "step": step, "level": level, "optimizer": optimizer.NAME,
                          "hyperparameter": None if index == Divergence.GRADIENT else
                          optimizer.learned(optimizer.param_groups[0])[index]})
        return found

    def out_of_range(self) -> list[dict]:
        """The first learned value of each run that left the range its optimizer needs (a step size below 0, a
        momentum or β outside [0, 1)). Reads the device once.

        Returns:
            One dict per run that left its range: run, step, level, optimizer, hyperparameter, value.

        Example:
            ```python
            opt = hyperopt.stack("SGD(0.1)/SGD(1e-3)", model.parameters())
            assert opt.out_of_range() == []
            ```
        """
        found = []
        for run, step, level, index, value in self.divergence.left_range():
            optimizer = self.levels()[level]
            found.append({"run": run, "step": step, "level": level, "optimizer": optimizer.NAME,
                          "hyperparameter": optimizer.learned(optimizer.param_groups[0])[index], "value": value})
        return found

    # ----------------------------------------------------------------- reading the stack
    def hyperparameters(self, group: int = 0, run: int | None = None) -> list[dict[str, float]]:
        """The hyperparameters every level uses now, in natural units (α, not the √α RMSProp stores; β in
        (0, 1), not its atanh). Under a schedule, the values used (the learned value times the schedule's factor).

        Args:
            group: which param group.
            run: which run, in a stack of runs (``runs=N``).

        Returns:
            One dict per level, the weights' optimizer first: {name: value}.

        Example:
            ```python
            opt = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())
            weights, above = opt.hyperparameters()
            assert abs(weights["lr"] - 1e-3) < 1e-9 and abs(above["lr"] - 1e-5) < 1e-9   # held in float32
            ```
        """
        result, below = [], ()
        for level in self.levels():  # a level above has one group per group of the level below
            if not level.attached:
                result.append({k: v for k, v in level.defaults.items() if k in level.HYPERPARAMETERS})
                continue
            g = level.param_groups[group]
            count = g["hyper_raw"].shape[0]
            if count > 1 and run is None:
                raise ValueError(f"this stack trains {count} runs: say which (run=0 to {count - 1})")
            values = {}
            # (betas= that a schedule wrote since the last step, which the next takes; read, not taken: reading
            # changes nothing)
            for name, value in level.values({**g, **level._betas_written(g)} if level.HAS_BETAS else g).items():
                if name in level.OPTIONS:  # an option, not a value
                    continue
                if isinstance(value, torch.Tensor) and value.dim() == 2:  # (runs, 1) or (runs, L): one per run
                    value = value[run or 0]
                given_per_hyperparameter = isinstance(value, torch.Tensor) and not level._is_per_run(name, value)
                values[name] = dict(zip(below, value.tolist())) if given_per_hyperparameter else float(value)
            result.append(values)
            below = level.learned(g)
        return result

    def __str__(self) -> str:
        from .notation import format_stack
        runs = self.param_groups[0]["runs"] if self.attached else None
        if runs is None:
            return format_stack(self)
        return "[" + "; ".join(format_stack(self, run=run) for run in range(runs)) + "]"

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}({str(self)!r})"

    # ----------------------------------------------------------------- saving and resuming
    def __getstate__(self) -> dict:
        # torch.optim pickles only defaults, state and param_groups; a level also needs the stack around it (copy,
        # deepcopy, pickle, torch.save of the optimizer). Compiled functions are made again where needed, and
        # the hooks on the copy's own parameters, and what a step keeps for the next (the flat buffers' views, the
        # values used).
        # A process group does not pickle: the copy finds its shards again from its DTensor parameters, and refuses
        # to step where they were given by hand (process_group=).
        return {**self.__dict__, "_compiled": {}, "_eager_steps": 0, "_settings_held": {}, "_flat": {}, "_used": {},
                "_learning": {}, "_levels": None, "backward": self.backward is not None and self.backward.copying,
                "process_group": None if self.process_group is None else GIVEN_BY_HAND, "shard_group": None,
                "sharded": []}

    def __setstate__(self, state: dict) -> None:
        if "backward" not in state:  # torch.optim's load_state_dict sets the state and groups alone
            return super().__setstate__(state)
        copying = state.pop("backward")
        super().__setstate__(state)
        self.backward = None
        if self.hyper is not None and self._owner is None and self.attached:
            self.backward = BackwardGradients()
            self.backward.copying = copying
            for group in self.param_groups:
                if self.process_group is not GIVEN_BY_HAND:
                    self._note_shards(group)
                self.backward.watch(group["params"])

    def state_dict(self) -> dict:
        """Every level's state, as ``torch.optim``'s state dict holds one optimizer's: what a checkpoint saves.

        Returns:
            torch.optim's state dict of this level, with the optimizer's name, the level above's state dict
            under "hyper", and what the divergence check and the gradients' hooks keep.

        Example:
            ```python
            opt = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())
            again = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())
            again.load_state_dict(opt.state_dict())      # continues bitwise
            ```
        """
        state = super().state_dict()
        state["optimizer"] = self.NAME
        if self.hyper is not None:
            state["hyper"] = self.hyper.state_dict()
        if self.divergence is not None:
            state["divergence"] = self.divergence.state_dict()
        if self.backward is not None:  # whether p.grad is changed before step() (clipping): its hooks copy it
            state["gradients_changed"] = self.backward.copying
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of a stack like this one, or change nothing.

        Args:
            state_dict: what ``state_dict()`` of a stack with the same levels, optimizers and learned values
                returned.

        Raises:
            ValueError: the state dict is of another stack, another optimizer or torch.optim; the message says
                what differs (the level, its optimizer, what a group learns, the height), before anything changes.
                A load that fails on the way puts back every level as it was.

        Example:
            ```python
            opt = hyperopt.stack("SGD(0.1)/SGD(1e-3)", model.parameters())
            try:
                opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())
            except ValueError as error:
                print(error)                             # what differs; nothing changed
            ```
        """
        self._refuse_unless_alike(state_dict, 0)
        levels = self.levels()
        kept = [(level.state, level.param_groups, [group["hyper_raw"].clone() for group in level.param_groups],
                 level.backward and level.backward.copying) for level in levels]
        divergence = self.divergence and copy.deepcopy(self.divergence.state_dict())
        try:
            self._load(state_dict)
        except Exception:
            for level, (state, groups, raws, copying) in zip(levels, kept):
                level.state, level.param_groups = state, groups
                for group, raw in zip(groups, raws):
                    group["hyper_raw"].copy_(raw)
                if level.backward is not None:
                    level.backward.copying = copying
            if divergence is not None:
                self.divergence.load_state_dict(divergence)
            raise

    def _load(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        hyper_state = state_dict.pop("hyper", None)
        divergence = state_dict.pop("divergence", None)
        changed = state_dict.pop("gradients_changed", False)
        state_dict.pop("optimizer")
        # The level above holds each group's hyper_raw as its parameter: restore values in place, keep the objects.
        raws = [group["hyper_raw"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for state in self.state.values():
            self.from_older(state)
        for group, raw in zip(self.param_groups, raws):
            raw.copy_(group["hyper_raw"])
            group["hyper_raw"] = raw
            state = self.state[group["params"][0]]
            if "step" in state:  # torch.optim leaves a step where it was saved (a number, in its older format);
                state["step"] = torch.as_tensor(state["step"]).to(raw)  # ours is used on the device
        if divergence is not None and self.divergence is not None:
            self.divergence.load_state_dict(divergence)
        if self.backward is not None:
            self.backward.copying = bool(changed)
        if self.hyper is not None:
            self.hyper._load(hyper_state)

    def _refuse_unless_alike(self, state_dict: dict, level: int) -> None:
        """One line saying what differs, where a state dict is not of a stack like this one from this level up."""
        where = f"level {level} of this stack is {self.NAME}"
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not isinstance(groups, list) or any(not isinstance(g, dict) or "hyper_raw" not in g for g in groups):
            raise ValueError(f"this state dict is not a hyperopt stack's (a torch.optim optimizer's?): its param "
                             f"groups hold no learned values; {where}")
        if state_dict.get("optimizer") != self.NAME:
            raise ValueError(f"the saved state's level {level} is {state_dict.get('optimizer')}, but {where}: "
                             "rebuild the stack the state came from")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the saved state's level {level} has {len(groups)} param groups, this one "
                             f"{len(self.param_groups)}")
        for index, (saved, ours) in enumerate(zip(groups, self.param_groups)):
            for key, same in (("learn", tuple(saved.get("learn") or ()) == tuple(ours["learn"])),
                              ("runs", saved.get("runs") == ours["runs"])):
                if not same:
                    raise ValueError(f"the saved state's level {level} ({self.NAME}), param group {index}, has "
                                     f"{key}={saved.get(key)!r}, this one {key}={ours[key]!r}")
            if len(saved["params"]) != len(ours["params"]):
                raise ValueError(f"the saved state's level {level}, param group {index}, has "
                                 f"{len(saved['params'])} parameters, this one {len(ours['params'])}")
        if (state_dict.get("hyper") is None) != (self.hyper is None):
            raise ValueError(f"the saved stack and this one differ in height (at level {level + 1}); rebuild the "
                             "stack the state came from")
        if self.hyper is not None:
            self.hyper._refuse_unless_alike(state_dict["hyper"], level + 1)
