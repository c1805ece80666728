"""The paper's notation for stacks: ``"Adam^α/SGD(1e-5)"`` is Adam on the weights whose hyperparameter α is
learned by SGD with step size 1e-5. The leftmost optimizer updates the weights; each ``/`` adds a level above."""

from __future__ import annotations

import re
import struct
from typing import Any, Iterable, Sequence

from .adagrad import AdaGrad
from .adam import Adam
from .adamw import AdamW
from .hyperoptimizer import Hyperoptimizer
from .rmsprop import RMSProp
from .sgd import SGD

SYMBOLS = {"lr": "α", "momentum": "μ", "beta1": "β1", "beta2": "β2", "gamma": "γ", "eps": "ε",
           "weight_decay": "λ"}
ALIASES = {**{name: name for name in SYMBOLS}, **{symbol: name for name, symbol in SYMBOLS.items()},
           "alpha": "lr", "mu": "momentum", "β₁": "beta1", "β₂": "beta2", "wd": "weight_decay"}

# One line each optimizer: its module, and its place here and in __init__.py. The grammar below reads this table.
OPTIMIZERS = {cls.NAME.lower(): cls for cls in (SGD, Adam, AdamW, AdaGrad, RMSProp)}


def _positional_orders(width: int = 62) -> str:
    lines = ["positional order:"]
    for cls in OPTIMIZERS.values():
        order = f"{cls.NAME}({', '.join(cls.HYPERPARAMETERS)})"
        if len(lines[-1]) + len(order) + 2 > width:
            lines[-1] += ","
            lines.append(order)
        else:
            lines[-1] += (" " if lines[-1].endswith(":") else ", ") + order
    return "\n".join(" " * 48 + line for line in lines)


GRAMMAR = f"""\
  stack      := level ( "/" level )*            leftmost level updates the weights
  level      := NAME [ "^" learned ] [ "(" [ value ( "," value )* ] ")" ]
  NAME       := {" | ".join(cls.NAME for cls in OPTIMIZERS.values())}  (any case)
  learned    := symbol | "{{" symbol ( "," symbol )* "}}"
  symbol     := α | alpha | lr | μ | mu | momentum | β1 | beta1 | β2 | beta2 | γ | gamma | λ | wd
  value      := number | per-level | symbol "=" ( number | per-level )
{_positional_orders()}
                                                SGD(0.1, 0.9, nesterov=1): Nesterov momentum
                                                Adam(1e-3, log_lr=1)/Adam: α learned as log α
                                                Adam(1e-3, polyak=1)/Adam: α held under Polyak's bound
                                                Adam^α(1e-3, log_lr=1, polyak=0.3, polyak_start=1)/Adam(0.01):
                                                under 0.3 of it, the first step at it
  per-level  := "{{" symbol ":" number ( "," symbol ":" number )* "}}"
                                                at the top of a stack: a value for each hyperparameter the
                                                level learns, e.g. its step size for α and for μ
  examples:  SGD   SGD(0.01)/SGD   Adam^α/SGD(1e-5)   RMSProp^{{α,γ}}/RMSProp(1e-4)   SGD(lr=0.1, momentum=0.9)/SGD
             SGD(0.1, 0.9, wd=1e-4)/SGD({{α: 1e-5, μ: 1e-6}})"""
"""The grammar of the paper's notation, as `stack` and `parse` read it (and as their errors show it):
``print(hyperopt.GRAMMAR)``. Missing values are the paper's defaults."""

_LEVEL = re.compile(r"^\s*(?P<name>[A-Za-z]+)\s*(?:\^\s*(?P<learned>\{[^}]*\}|[^\s(/{]+))?\s*"
                    r"(?:\((?P<args>[^()]*)\))?\s*$")


def _error(spec: str, part: str, why: str) -> ValueError:
    return ValueError(f"bad optimizer stack {spec!r}: {why} in {part.strip()!r}.\nThe notation is:\n{GRAMMAR}")


def _hyperparameter(spec: str, part: str, symbol: str) -> str:
    name = ALIASES.get(symbol.strip().lower(), ALIASES.get(symbol.strip()))
    if name is None:
        raise _error(spec, part, f"unknown hyperparameter {symbol.strip()!r}")
    return name


def _number(spec: str, part: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _error(spec, part, f"{text.strip()!r} is not a number") from None


def _value(spec: str, part: str, text: str) -> float | dict[str, float]:
    """A number, or ``{α: 1e-5, μ: 1e-6}``: a value for each hyperparameter of the level below."""
    text = text.strip()
    if not text.startswith("{"):
        return _number(spec, part, text)
    if not text.endswith("}"):
        raise _error(spec, part, f"{text!r} has no closing brace")
    values = {}
    for entry in text[1:-1].split(","):
        if ":" not in entry:
            raise _error(spec, part, f"{entry.strip()!r} is not `symbol: number`")
        symbol, number = entry.split(":", 1)
        values[_hyperparameter(spec, part, symbol)] = _number(spec, part, number)
    return values


def _arguments(text: str) -> list[str]:
    """Split on the commas outside braces."""
    arguments, depth, current = [], 0, ""
    for character in text:
        depth += {"{": 1, "}": -1}.get(character, 0)
        if character == "," and depth == 0:
            arguments.append(current)
            current = ""
        else:
            current += character
    return arguments + [current]


def parse(spec: str) -> list[tuple[type[Hyperoptimizer], dict, tuple[str, ...] | None]]:
    """Read a stack written in the paper's notation (`GRAMMAR`), without building it.

    Args:
        spec: the stack, e.g. ``"Adam^α/SGD(1e-5)"``.

    Returns:
        The levels, bottom (the weights' optimizer) first, each as (optimizer class, hyperparameter values given,
        the names the level above learns, or None for what the reference code learns by default).

    Raises:
        ValueError: the spec does not follow the notation; the message names the level and shows the grammar.

    Example:
        ```python
        levels = hyperopt.parse("Adam^α/SGD(1e-5)")
        assert [cls.__name__ for cls, _, _ in levels] == ["Adam", "SGD"]
        assert levels[0][2] == ("lr",) and levels[1][1] == {"lr": 1e-5}
        ```
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"an optimizer stack must be a non-empty string, not {spec!r}.\nThe notation is:\n{GRAMMAR}")
    levels = []
    for part in spec.split("/"):
        match = _LEVEL.match(part)
        if match is None:
            raise _error(spec, part, "cannot read this level")
        cls = OPTIMIZERS.get(match["name"].lower())
        if cls is None:
            raise _error(spec, part, f"unknown optimizer {match['name']!r} (known: SGD, Adam, AdamW, AdaGrad, RMSProp)")
        learned = None
        if match["learned"] is not None:
            symbols = match["learned"].strip("{}").split(",")
            learned = tuple(_hyperparameter(spec, part, s) for s in symbols)
        values: dict[str, float] = {}
        order = list(cls.HYPERPARAMETERS)
        args = _arguments(match["args"]) if (match["args"] or "").strip() else []
        for position, arg in enumerate(args):
            if "=" in arg:
                key, text = arg.split("=", 1)
                if key.strip().lower() in cls.OPTIONS:  # an option: nesterov=1, polyak=0.3
                    values[key.strip().lower()] = cls.option(key.strip().lower(), _number(spec, part, text))
                    continue
                name = _hyperparameter(spec, part, key)
            else:
                if any("=" in a for a in args[:position]):
                    raise _error(spec, part, "a positional value follows a keyword value")
                if position >= len(order):
                    raise _error(spec, part, f"{cls.NAME} takes at most {len(order)} values ({', '.join(order)})")
                name, text = order[position], arg
            if name not in cls.HYPERPARAMETERS:
                raise _error(spec, part, f"{cls.NAME} has no hyperparameter {name!r} (it has {', '.join(order)})")
            if name in values:
                raise _error(spec, part, f"{name} is given twice")
            values[name] = _value(spec, part, text)
        levels.append((cls, values, learned))
    return levels


Levels = list[tuple[type[Hyperoptimizer], dict, tuple[str, ...] | None]]


def stack(spec: str | Levels | Sequence[str | Levels], params: Iterable | None = None,
          **options: Any) -> Hyperoptimizer:
    """Build a stack from the paper's notation (`GRAMMAR`), or from its levels as `parse` gives them.

    A list of stacks, one per run, builds one stack that trains them together (``runs=len(spec)``): ``params``
    then hold every run's parameters stacked on a leading dimension (``models.batch_models``); the stacks must
    share their structure (optimizers, what each level learns) and may differ in their values.

    Args:
        spec: the stack, e.g. ``"Adam/SGD(1e-5)"`` (the weights' optimizer leftmost), its levels, or a list of
            either, one per run.
        params: the tensors or param groups the weights' optimizer optimizes, as for ``torch.optim``.
        **options: applied to every level: check_finite, keep_in_range, compile, foreach, process_group (and
            maximize, for the weights' level); see `Hyperoptimizer`.

    Returns:
        The weights' optimizer, a ``torch.optim.Optimizer`` whose ``hyper`` is the level above, and so on.

    Raises:
        ValueError: the spec does not follow the notation (the message shows the grammar), or a value is out of
            range for its optimizer.
        TypeError: an option that is not one of the above.

    Example:
        ```python
        opt = hyperopt.stack("SGD(0.1, 0.9)/SGD(1e-3)", model.parameters())
        assert str(opt) == "SGD(0.1, 0.9)/SGD(0.001)"
        assert opt.hyper.param_groups[0]["lr"] == 1e-3
        ```
    """
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise TypeError(f"stack() got the keyword argument(s) {unknown}; its options, for every level, are "
                        f"{sorted(OPTIONS)} (a hyperparameter's value goes into the notation: \"SGD(0.1, 0.9)\")")
    if isinstance(spec, str):
        return _build(parse(spec), params, spec, **options)
    spec = list(spec)
    if spec and all(isinstance(level, tuple) for level in spec):
        return _build(spec, params, spec, **options)
    return _stack_of_runs([parse(run) if isinstance(run, str) else list(run) for run in spec], params, **options)


# The keyword arguments of stack(), passed to every level (maximize: to the weights' optimizer, whose objective it is).
OPTIONS = {"check_finite", "keep_in_range", "compile", "foreach", "maximize", "process_group"}


def _of_level(options: dict, above: bool) -> dict:
    return {k: v for k, v in options.items() if k != "maximize"} if above else options


def _build(levels: Levels, params, spec, **options) -> Hyperoptimizer:
    """The levels from the top down, then the parameters: an error of the notation's values says the grammar, one
    of the parameters (their dtype, a parameter in two groups, how they are sharded) does not."""
    hyper = None
    for position, (cls, values, learned) in reversed(list(enumerate(levels))):
        try:
            hyper = cls(None, hyper=hyper, learn=learned, **_of_level(options, position > 0), **values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"bad optimizer stack {spec!r}: {error}.\nThe notation is:\n{GRAMMAR}") from error
    if params is not None:
        hyper._attach(params)
    return hyper


def structure(levels: Levels) -> list[tuple[type[Hyperoptimizer], tuple[str, ...], dict]]:
    """What runs stacked together must share: each level's optimizer, what it learns, and which of its values are
    given per hyperparameter of the level below."""
    shape = []
    for cls, values, learned in levels:
        full = {name: default for name, (default, _, _) in cls.HYPERPARAMETERS.items()} | values
        per_hyperparameter = tuple(sorted(name for name, value in values.items() if isinstance(value, dict)))
        options = tuple(sorted({**cls.OPTIONS, **{k: v for k, v in values.items() if k in cls.OPTIONS}}.items()))
        shape.append((cls, tuple(learned) if learned is not None else cls.default_learn(full), per_hyperparameter,
                      options))
    return shape


def _stack_of_runs(runs: list[Levels], params, **options) -> Hyperoptimizer:
    if not runs:
        raise ValueError("a stack of runs needs at least one run's stack")
    shapes = [structure(levels) for levels in runs]
    for run, shape in enumerate(shapes[1:], 1):
        if shape != shapes[0]:
            raise ValueError(f"the stacks of runs 0 and {run} differ in their optimizers ({shapes[0]} and {shape}), "
                             "in what a level learns, or in a value per hyperparameter: runs trained together may "
                             "differ only in their values")
    hyper = None
    for position in reversed(range(len(shapes[0]))):
        cls, learned, per_hyperparameter, options_of_level = shapes[0][position]
        values = {name: [float(levels[position][1].get(name, default)) for levels in runs]
                  for name, (default, _, _) in cls.HYPERPARAMETERS.items() if name not in per_hyperparameter}
        for name in per_hyperparameter:  # one {name: number} for all runs, or one per run
            given = [levels[position][1][name] for levels in runs]
            values[name] = given[0] if all(value == given[0] for value in given) else given
        hyper = cls(params if position == 0 else None, hyper=hyper, learn=learned, runs=len(runs),
                    **_of_level(options, position > 0), **values, **dict(options_of_level))
    return hyper


def _format_number(value: float | dict[str, float], single_precision: bool) -> str:
    # The shortest text that reads back to the same number in the precision the value is held in.
    if isinstance(value, dict):
        return "{" + ", ".join(f"{SYMBOLS[name]}: {_format_number(number, single_precision)}"
                               for name, number in value.items()) + "}"
    return _shortest_float32(value) if single_precision else repr(float(value))


def _to_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _shortest_float32(value: float) -> str:
    """The shortest decimal that reads back to the same float32, written as Python writes floats (1.0, 1e-05)."""
    target = _to_float32(float(value))
    if target != target or target in (float("inf"), float("-inf")):
        return repr(target)
    for digits in range(1, 10):
        shortest = float(f"{target:.{digits}g}")
        if _to_float32(shortest) == target:
            return repr(shortest)
    return repr(target)


def format_level(level: Hyperoptimizer, values: dict[str, float], learned: tuple[str, ...],
                 single_precision: bool = False) -> str:
    text = level.NAME
    if tuple(learned) != tuple(level.default_learn(values)):
        symbols = [SYMBOLS[name] for name in learned]
        text += "^" + (symbols[0] if len(symbols) == 1 else "{" + ",".join(symbols) + "}")
    numbers = [_format_number(values[name], single_precision) for name in level.HYPERPARAMETERS]
    defaults = [_format_number(default, single_precision) for default, _, _ in level.HYPERPARAMETERS.values()]
    while len(numbers) > 1 and numbers[-1] == defaults[len(numbers) - 1]:
        numbers.pop()
    numbers += [f"{name}={float(values[name]):g}" for name in level.OPTIONS if values.get(name)]  # (True: 1)
    return text + "(" + ", ".join(numbers) + ")"


def format_stack(optimizer: Hyperoptimizer, group: int = 0, run: int | None = None) -> str:
    """Write a stack in the paper's notation with its current values; ``stack(format_stack(opt))`` rebuilds it.
    ``str(opt)`` is the same for the first param group.

    Args:
        optimizer: the weights' optimizer of a stack.
        group: which param group's values.
        run: which run's values, in a stack of runs (``runs=N``).

    Returns:
        The notation, e.g. ``"Adam(0.0038, 0.9, 0.999)/SGD(1e-05)"``.

    Example:
        ```python
        opt = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())
        copy = hyperopt.stack(hyperopt.format_stack(opt), model.parameters())
        assert hyperopt.format_stack(copy) == hyperopt.format_stack(opt)
        ```
    """
    levels = optimizer.levels()
    values = optimizer.hyperparameters(group, run)
    texts = []
    for level, level_values in zip(levels, values):
        if level.attached:
            g = level.param_groups[group]
            single = g["hyper_raw"].dtype.itemsize <= 4
            switches = {name: g[name] for name in level.OPTIONS}
            texts.append(format_level(level, {**level_values, **switches}, g["learn"], single))
        else:
            texts.append(format_level(level, level_values, level.defaults["learn"]))
    return "/".join(texts)
