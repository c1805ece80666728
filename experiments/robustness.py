"""The robustness benchmark (results/robustness.md): its tasks (budget, metric and deviation from the paper; their
settings are configs/task/), its methods, the same on every task, and the search space of the tuned AdamW. A run
is `+exp=robustness task=TASK robustness.method=NAME robustness.alpha=α seed=S` (and `robustness.trial=T` for the
tuned AdamW); scripts/run_robustness.py runs them all as sweeps, scripts/robustness.py makes the table and figure.

The rule for the levels above the weights is fixed here, before any task was run, and is not tuned per task (that
is the claim under test): an SGD tower's every level starts at α, the protocol of the paper's Figure 3 in its
2019 version; an Adam level above starts at Adam's default 1e-3, what the paper's notation means by a bare Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # seven decades of initial step size
SEEDS = (0, 1, 2)
STUDIES, TRIALS = 3, 5  # the tuned AdamW: studies (each its own seed and quasirandom draw) of trials each
UPPER_ADAM = 1e-3
WARMUP = 0.05  # the warmup-cosine schedule of the AdamW whose scale is learned: its warmup fraction


@dataclass(frozen=True)
class Task:
    label: str
    metric: str  # the metric key the report reads after each pass, and a method is judged by at the end
    steps: int
    budget: str
    against_paper: str
    alphas: tuple[float, ...] = ALPHAS  # the initial step sizes its swept methods run at
    lengthens: str | None = None  # the task it runs at a longer budget


# Each task's budget, metric and deviation from the paper, in one place; its settings are configs/task/NAME.yaml.
TASKS = {
    "mnist_mlp": Task(
        "MNIST MLP (the paper's)", "test_error", 200,
        "200 steps of batch 256: 4 passes over the first 12,800 training images; test error on all 10,000 test "
        "images after each pass",
        "200 steps instead of the paper's 30 epochs (7,050 steps); MNIST has no validation split, so the tuned "
        "AdamW is chosen on the test error, which the paper reports"),
    "char_lstm": Task(
        "char-LSTM 2×128, War and Peace", "valid_bpc", 120,
        "120 steps of 32 windows of 100 characters: 4 passes over the first 96,000 training characters (the book's "
        "first 106,700, split 90/5/5); validation bits per character (5,335 characters) after each pass",
        "batch 32 instead of 128 and 120 steps instead of 50 epochs, as one reproduction reads the paper's RNN"),
    "resnet20_cifar": Task(
        "ResNet-20, CIFAR-10 subset", "test_error", 80,
        "80 steps of batch 32 with the paper's augmentation: 4 passes over the first 640 training images; error on "
        "the first 500 test images after each pass",
        "80 steps instead of Figure 2's 200 epochs of 50,000 images, no weight decay beyond the methods' own, and "
        "every other decade of α only: the costliest step, cut to fit the benchmark on 2 CPU cores",
        ALPHAS[::2]),
    "char_gpt": Task(
        "char-GPT 0.43 M, War and Peace", "valid_bpc", 120,
        "120 steps of 32 windows of 64 characters: 4 passes over the first 61,440 training characters (the book's "
        "first 68,300); validation bits per character (3,415 characters) after each pass",
        "not a task of the paper (models/char_gpt.py: 2 blocks of width 128, 4 heads, context 64)"),
    # the same two at about 5× the budget, for the methods that may need longer to show what they do (issue 29)
    "mnist_mlp_long": Task(
        "MNIST MLP, 5× the budget", "test_error", 1000,
        "1,000 steps of batch 256: 5 passes over the first 51,200 training images; test error on all 10,000 test "
        "images after each pass",
        "1,000 steps instead of the paper's 7,050; every other decade of α, to fit the benchmark on 2 CPU cores",
        ALPHAS[::2], "mnist_mlp"),
    "char_gpt_long": Task(
        "char-GPT 0.43 M, 5× the budget", "valid_bpc", 604,
        "604 steps of 32 windows of 64 characters: 4 passes over the training part of the book's first 341,500 "
        "characters (split 90/5/5); validation bits per character after each pass",
        "not a task of the paper; every other decade of α, to fit the benchmark on 2 CPU cores", ALPHAS[::2],
        "char_gpt"),
}
BASE_TASKS = ("mnist_mlp", "char_lstm", "resnet20_cifar", "char_gpt")


@dataclass(frozen=True)
class Method:
    label: str
    family: str  # fixed, stack, free (learning-rate-free, at its defaults) or tuned
    swept: bool  # run at every initial step size α (else once per seed, at its published default)
    kappa: float = UPPER_ADAM  # an Adam stack's step size of the levels above
    tasks: tuple[str, ...] | None = None  # the tasks it runs on (None: every one)

    def runs_on(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


# The κ of the recommended stack, a decade each side of the default, on two tasks (issue 29): with additive
# hyper-steps κ, not α, sets the scale, so a stack that needs κ tuned has not removed the tuning
KAPPA_TASKS = ("mnist_mlp", "char_gpt")
# The second recommended stack (issue 29), chosen on the MNIST task alone (both budgets; seeds 0 to 2) among
# Polyak's bound on a share of the loss (1, 0.5, 0.3, 0.2, 0.1, 0.03), with α as itself or as log α, started at
# the bound or not, κ from 1e-4 to 0.3; then frozen, here, before any other task ran with it: α as log α (a step of
# the level above moves it by a factor), held under Polyak's bound on 0.3 of the loss, the first step set at that
# bound, the level above Adam(0.01) learning α alone
SHARE, LOG_KAPPA = 0.3, 1e-2


METHODS = {
    # (at the longer budgets: the stacks, fixed Adam, the learning-rate-free methods and the tuned AdamW)
    "sgd": Method("SGD(α), fixed", "fixed", True, tasks=BASE_TASKS),
    "sgd_momentum": Method("SGD(α, μ=0.9), fixed", "fixed", True, tasks=BASE_TASKS),
    "adam": Method("Adam(α), fixed", "fixed", True),
    "sgd_h1": Method("SGD(α)/SGD(α)", "stack", True),
    "sgd_h2": Method("SGD(α)/SGD(α)/SGD(α)", "stack", True),
    "sgd_h3": Method("SGD(α)/SGD(α)/SGD(α)/SGD(α)", "stack", True),
    "adam_h1": Method("Adam(α)/Adam", "stack", True),
    "adam_h2": Method("Adam(α)/Adam/Adam", "stack", True),
    "adamw_learned_scale": Method("AdamW^α(α)/Adam, warmup-cosine", "stack", True),
    # the recommended stack (issue 29): chosen on the MNIST task alone, then frozen before the other tasks ran
    "adam_polyak": Method("Adam(α, polyak)/Adam (first recommended)", "stack", True),
    "adam_polyak_kappa_down": Method("Adam(α, polyak)/Adam(1e-4)", "stack", True, 1e-4, KAPPA_TASKS),
    "adam_polyak_kappa_up": Method("Adam(α, polyak)/Adam(1e-2)", "stack", True, 1e-2, KAPPA_TASKS),
    # the second, the recommended one: chosen on MNIST alone, then frozen (above)
    "adam_started": Method("Adam^α(log α, polyak=0.3, start)/Adam(0.01) (recommended)", "stack", True, LOG_KAPPA),
    "adam_started_kappa_down": Method("Adam^α(log α, polyak=0.3, start)/Adam(1e-3)", "stack", True,
                                      LOG_KAPPA / 10, KAPPA_TASKS),
    "adam_started_kappa_up": Method("Adam^α(log α, polyak=0.3, start)/Adam(0.1)", "stack", True, LOG_KAPPA * 10,
                                    KAPPA_TASKS),
    "schedulefree_adamw": Method("Schedule-Free AdamW(α)", "free", True),
    "mechanic_adam": Method("Mechanic(Adam(α))", "free", True),  # a learned scale over Adam's step
    "momo_adam": Method("MoMo-Adam(α)", "free", True),  # Adam's step capped by a Polyak-type bound
    "prodigy": Method("Prodigy", "free", False),
    "dadapt_adam": Method("D-Adapt Adam", "free", False),
    "dog": Method("DoG (its last iterate)", "free", False),  # without the averaging its authors recommend
    "tuned_adamw": Method("AdamW, warmup-cosine, tuned", "tuned", False),
}

# The tuned AdamW's search space, in the manner of AlgoPerf's external tuning (its ranges are ours): each study
# draws TRIALS points of a scrambled Sobol sequence seeded by the study's seed.
SEARCH_SPACE = {
    "lr": ("log", 1e-4, 1e-1),
    "weight_decay": ("log", 1e-4, 1.0),
    "one_minus_beta1": ("log", 1e-2, 0.5),
    "warmup": ("linear", 0.02, 0.2),
}


def trial_point(study: int, trial: int) -> dict[str, float]:
    """The hyperparameters of trial `trial` of study `study` (the study's seed)."""
    if not 0 <= trial < TRIALS:
        raise ValueError(f"robustness.trial={trial} must be in 0..{TRIALS - 1}")
    draw = torch.quasirandom.SobolEngine(len(SEARCH_SPACE), scramble=True, seed=study).draw(
        TRIALS, dtype=torch.float64)[trial]
    point = {}
    for (name, (scale, low, high)), u in zip(SEARCH_SPACE.items(), draw.tolist()):
        point[name] = low * (high / low) ** u if scale == "log" else low + (high - low) * u
    return point


def _number(value: float) -> str:
    return f"{float(value):.4g}"


def optimizer(method: str, alpha: float, seed: int, trial: int) -> str:
    """The `optimizer=` of one run, in the paper's notation or as a learning-rate-free optimizer."""
    a = repr(float(alpha))
    if method not in METHODS:
        raise ValueError(f"unknown robustness.method {method!r}; known: {', '.join(METHODS)}")
    kappa = METHODS[method].kappa
    if method == "tuned_adamw":
        point = trial_point(seed, trial)
        return (f"AdamW({_number(point['lr'])}, beta1={_number(1 - point['one_minus_beta1'])}, "
                f"wd={_number(point['weight_decay'])})")
    return {
        "sgd": f"SGD({a})",
        "sgd_momentum": f"SGD({a}, 0.9)",
        "adam": f"Adam({a})",
        "sgd_h1": "/".join([f"SGD({a})"] * 2),
        "sgd_h2": "/".join([f"SGD({a})"] * 3),
        "sgd_h3": "/".join([f"SGD({a})"] * 4),
        "adam_h1": f"Adam({a})/Adam({kappa})",
        "adam_h2": f"Adam({a})/Adam({kappa})/Adam({kappa})",
        "adamw_learned_scale": f"AdamW^α({a})/Adam({kappa})",
        **dict.fromkeys(("adam_polyak", "adam_polyak_kappa_down", "adam_polyak_kappa_up"),
                        f"Adam({a}, polyak=1)/Adam({kappa})"),  # (κ is the method's)
        **dict.fromkeys(("adam_started", "adam_started_kappa_down", "adam_started_kappa_up"),
                        f"Adam^α({a}, log_lr=1, polyak={SHARE}, polyak_start=1)/Adam({kappa})"),
        "schedulefree_adamw": f"ScheduleFreeAdamW({a})",
        "mechanic_adam": f"MechanicAdam({a})",
        "momo_adam": f"MomoAdam({a})",
        "prodigy": "Prodigy",
        "dadapt_adam": "DAdaptAdam",
        "dog": "DoG",
    }[method]


def schedule(method: str, seed: int, trial: int) -> dict | None:
    """The `schedule=` of one run: warmup-cosine for the AdamWs, nothing for the others."""
    if method == "tuned_adamw":
        return {"name": "warmup_cosine", "warmup": round(trial_point(seed, trial)["warmup"], 4), "final": 0.0}
    if method == "adamw_learned_scale":
        return {"name": "warmup_cosine", "warmup": WARMUP, "final": 0.0}
    return None


def _schedule_node(method: str, seed: int, trial: int):
    value = schedule(method, seed, trial)
    return None if value is None else OmegaConf.create(value)  # a node: a plain dict cannot replace `null`


def register_resolvers() -> None:
    """`${robustness_optimizer:...}` and `${robustness_schedule:...}`, which configs/exp/robustness.yaml uses."""
    for name, function in (("robustness_optimizer", optimizer), ("robustness_schedule", _schedule_node)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
