"""What the paper reports, written once: Table 1's rows, the values read off Figures 2 and 3, and each experiment's
protocol. The Table 1 configs (`+exp=mnist_*`), the scripts that build the tables and the tests all read this."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One row of Table 1: a stack in the paper's notation and its test error (%, mean ± std of 3 runs)."""

    group: str
    stack: str
    error: float
    std: float
    rerun_of: str | None = None  # for a rerun with the learned values fixed: the stack that learned them

    @property
    def kind(self) -> str:
        if self.rerun_of is not None:
            return "rerun"
        return "hyperoptimized" if "/" in self.stack else "baseline"

    @property
    def epochs(self) -> int:
        """30 epochs for the SGD and AdaGrad groups, 5 for Adam and RMSProp. The paper's text does not say;
        two secondary sources do."""
        return 30 if self.group in ("SGD", "AdaGrad") else 5

    @property
    def config_name(self) -> str:
        """The experiment's name, `+exp=NAME`: mnist_sgd_adam for SGD/Adam(0.1), mnist_sgd_adam_rerun for its rerun."""
        stack = self.rerun_of or self.stack
        levels = []
        for level in stack.split("/"):
            name, _, learned = re.sub(r"\(.*\)", "", level).partition("^")
            learned = learned.strip("{}").replace("α", "alpha").replace("γ", "gamma").replace(",", "")
            levels.append(name.lower() + learned)
        return "mnist_" + "_".join(levels) + ("_rerun" if self.rerun_of else "")


def _group(group: str, *rows: tuple) -> list[Row]:
    """A group's rows from (stack, error, std[, rerun stack, rerun error, rerun std]) tuples, reruns in place."""
    out = []
    for stack, error, std, *rerun in rows:
        out.append(Row(group, stack, error, std))
        if rerun:
            out.append(Row(group, rerun[0], rerun[1], rerun[2], rerun_of=stack))
    return out


# Table 1 as printed: 18 stacks, 14 of them followed by a fresh run with the values they learned, fixed.
TABLE_1: list[Row] = [
    *_group("SGD",
            ("SGD(0.01)", 8.99, 0.05),
            ("SGD/SGD", 4.81, 0.10, "SGD(0.0769)", 5.44, 0.10),
            ("SGD/Adam(0.1)", 4.86, 0.06, "SGD(0.4538)", 2.80, 0.09),
            ("SGD/AdaGrad", 4.85, 0.21, "SGD(0.0836)", 5.17, 0.03),
            ("SGD/RMSProp(0.1)", 4.52, 0.02, "SGD(0.5920)", 2.52, 0.07)),
    *_group("Adam",
            ("Adam", 4.67, 0.06),
            ("Adam/SGD(1e-5)", 3.03, 0.02, "Adam(0.0040, 0.899, 0.999)", 3.11, 0.06),
            ("Adam^α/SGD(1e-5)", 3.12, 0.04, "Adam^α(0.0021)", 3.47, 0.02),
            ("Adam/Adam", 3.05, 0.09, "Adam(0.0038, 0.870, 0.999)", 3.24, 0.13),
            ("Adam^α/Adam", 3.04, 0.08, "Adam^α(0.0036)", 3.08, 0.12)),
    *_group("AdaGrad",
            ("AdaGrad", 7.40, 0.08),
            ("AdaGrad/SGD", 6.90, 0.16, "AdaGrad(0.0080)", 7.75, 0.02),
            ("AdaGrad/AdaGrad", 5.03, 0.23, "AdaGrad(0.0151)", 6.67, 0.08)),
    *_group("RMSProp",
            ("RMSProp", 4.19, 0.47),
            ("RMSProp^α/SGD(1e-4)", 3.55, 0.23, "RMSProp(0.0030)", 3.93, 0.70),
            ("RMSProp^{α,γ}/SGD(1e-4)", 3.33, 0.07, "RMSProp(0.0032, 0.9899)", 3.25, 0.09),
            ("RMSProp^α/RMSProp(1e-4)", 3.42, 0.45, "RMSProp(0.0021)", 3.60, 0.04),
            ("RMSProp^{α,γ}/RMSProp(1e-4)", 2.96, 0.11, "RMSProp(0.0020, 0.9962)", 3.65, 0.36)),
]
TABLE_1_STACKS = [row.stack for row in TABLE_1 if row.rerun_of is None]

# Figure 2: final test error (%) read off the paper's figure (±1-2 points), by (method, initial α, initial μ).
FIGURE_2_FIXED, FIGURE_2_HYPER, FIGURE_2_HE = "SGD(α, μ) fixed", "SGD(α, μ)/SGD", "He et al. 2015"
FIGURE_2 = {(FIGURE_2_HYPER, 0.1, 0.9): 9.5, (FIGURE_2_HYPER, 1.0, 0.9): 9.5, (FIGURE_2_FIXED, 0.1, 0.9): 13.0,
            (FIGURE_2_FIXED, 1.0, 0.9): 30.0, (FIGURE_2_FIXED, 1.0, 0.99): "diverged",
            (FIGURE_2_HYPER, 1.0, 0.99): 19.5, (FIGURE_2_HE, 0.1, 0.9): 13.0}

# Figure 3 (left): the range of final test error over initial α ∈ [1e-8, 1] read off the figure, by stack height.
FIGURE_3_RANGE = {0: (13.0, 90.0), 3: (12.5, 14.5)}


@dataclass(frozen=True)
class Protocol:
    """How the paper's runs were made, as far as it says: a result made otherwise is marked as such."""

    seeds: int | None             # runs per point (None: not stated)
    train_examples: int | None    # the full training set
    epochs: int | None = None     # None: per row (Table 1) or not stated

    def deviations(self, runs: list[dict]) -> list[str]:
        """What in these runs departs from the protocol, in words (none: it is followed). Each run is a dict:
        key (the point that seeds repeat), epochs and paper_epochs (None: not stated), train_examples, subset and
        test_subset (the data options it ran with)."""
        found = []
        short = sorted({(run["epochs"], run["paper_epochs"]) for run in runs
                        if run["paper_epochs"] is not None and run["epochs"] != run["paper_epochs"]})
        if short:
            found.append("epochs: " + ", ".join(f"{ours} instead of {paper}" for ours, paper in short))
        subsets = sorted({run["subset"] for run in runs if run.get("subset")})
        if subsets:
            found.append(f"trained on the first {' / '.join(map(str, subsets))} examples only (data.subset)")
        fewer = sorted({run["train_examples"] for run in runs if run.get("train_examples") and self.train_examples
                        and not run.get("subset") and run["train_examples"] < self.train_examples})
        if fewer:
            found.append(f"trained on the {' / '.join(map(str, fewer))} training examples at hand, of "
                         f"{self.train_examples}")
        if any(run.get("test_subset") for run in runs):
            found.append("evaluated on part of the test set (data.test_subset)")
        if self.seeds is not None:
            counts: dict = {}
            for run in runs:
                counts[run["key"]] = counts.get(run["key"], 0) + 1
            few = sorted({count for count in counts.values() if count < self.seeds})
            if few:
                found.append(f"{' or '.join(map(str, few))} run(s) per point instead of {self.seeds}")
        return found


PROTOCOLS = {
    "table1": Protocol(seeds=3, train_examples=60_000),
    # One run per curve in the figure; 200 epochs on the 50,000 training images.
    "figure2": Protocol(seeds=1, train_examples=50_000, epochs=200),
    # The paper states neither the model, the length nor the number of seeds of this panel.
    "sensitivity": Protocol(seeds=None, train_examples=60_000),
    # The paper gives no setup; 50 epochs is the one reproduction's reading.
    "rnn": Protocol(seeds=None, train_examples=None, epochs=50),
}
