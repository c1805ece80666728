"""Figure 2 from run records: ResNet-20 on CIFAR-10, one panel per initial (α, μ), train loss and test error
against epochs on a log scale for the fixed SGD(α, μ), the hyperoptimized SGD(α, μ)/SGD and He et al.'s schedule;
and a table of final test errors beside the values read off the paper's figure.

    python scripts/figure2.py runs/figure2 --page docs/figure2.md --export-records results/figure2/runs

Writes results/figure2.png, results/figure2_hyperparameters.png (per cell, the α and μ the hyperoptimized runs
learn, against steps), results/figure2.csv and results/figure2.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments.paper import FIGURE_2, FIGURE_2_FIXED as FIXED, FIGURE_2_HE as HE, FIGURE_2_HYPER as HYPER, PROTOCOLS
from experiments.records import copy_record, describe_commits, safe_name
from experiments.reports import (describe_source, deviation_note, figure_inputs, hyperparameter_path, mark_deviations,
                                 markdown_table, protocol_run, pyplot, save_figure, write_table)

ROOT = Path(__file__).resolve().parents[1]
ALPHAS, MOMENTA = (0.01, 0.1, 1.0), (0.09, 0.9, 0.99)
STYLE = {FIXED: "tab:blue", HYPER: "tab:orange", HE: "0.45"}
FOLDER = {FIXED: "fixed", HYPER: "hyper", HE: "he2015"}


def method_of(config: dict) -> str:
    if config.get("schedule"):
        return HE
    return HYPER if config["cifar"]["hyper"] else FIXED


def runs(records: list[dict]) -> list[dict]:
    out = []
    for record in records:
        config, summary = record["run"]["config"], record["summary"]
        out.append({"method": method_of(config), "alpha": float(config["cifar"]["alpha"]),
                    "momentum": float(config["cifar"]["momentum"]), "seed": config["seed"],
                    "status": summary.get("status"), "metrics": record["metrics"], "summary": summary,
                    "directory": record["directory"], "path": hyperparameter_path(record)})
        out[-1]["protocol"] = protocol_run(record, (out[-1]["method"], out[-1]["alpha"], out[-1]["momentum"]),
                                           PROTOCOLS["figure2"].epochs)
    return out


def finals(all_runs: list[dict]) -> pd.DataFrame:
    lines = []
    for run in all_runs:
        summary = run["summary"]
        learned = (summary.get("hyperparameters") or [{}])[0]
        lines.append({"method": run["method"], "alpha": run["alpha"], "momentum": run["momentum"],
                      "status": run["status"], "epochs": summary.get("epochs_completed"),
                      "test_error": summary.get("test_error") if run["status"] == "ok" else None,
                      "train_loss": summary.get("train_loss") if run["status"] == "ok" else None,
                      "final_alpha": learned.get("lr"), "final_momentum": learned.get("momentum")})
    frame = pd.DataFrame(lines)
    table = frame.groupby(["method", "alpha", "momentum"], sort=False).agg(
        runs=("status", "size"), ok=("status", lambda s: int((s == "ok").sum())), epochs=("epochs", "max"),
        test_error=("test_error", "mean"), test_error_std=("test_error", "std"), train_loss=("train_loss", "mean"),
        final_alpha=("final_alpha", "mean"), final_momentum=("final_momentum", "mean")).reset_index()
    table["paper_test_error"] = [FIGURE_2.get((m, a, u), "—") for m, a, u in
                                 zip(table["method"], table["alpha"], table["momentum"])]
    return table.sort_values(["momentum", "alpha", "method"]).reset_index(drop=True)


def mean_curve(group: list[dict], key: str) -> pd.Series:
    frame = pd.DataFrame([{"epoch": m["epoch"], key: m[key]} for run in group for m in run["metrics"]])
    return frame.groupby("epoch")[key].mean() if len(frame) else pd.Series(dtype=float)


def cells(axes, xlabel: str, ylabel: str):
    """(α₀, μ₀, its panel) for each cell of the 3 × 3 grid, the panel titled and labelled (log scale)."""
    for row, momentum in enumerate(MOMENTA):
        for column, alpha in enumerate(ALPHAS):
            axis = axes[row][column]
            axis.set_yscale("log")
            axis.set_title(f"α₀ = {alpha:g}, μ₀ = {momentum:g}", fontsize=10)
            axis.grid(True, which="both", alpha=0.25)
            if row == 2:
                axis.set_xlabel(xlabel)
            if column == 0:
                axis.set_ylabel(ylabel)
            yield alpha, momentum, axis


def not_run(axis) -> None:
    axis.text(0.97, 0.95, "this cell not run", transform=axis.transAxes, ha="right", va="top", color="0.4",
              fontsize=9)


def draw(all_runs: list[dict], out: Path, note: str = "") -> None:
    plt = pyplot()
    figure, axes = plt.subplots(3, 3, figsize=(14, 11), sharex=True, sharey=True)
    he = [run for run in all_runs if run["method"] == HE]
    for alpha, momentum, axis in cells(axes, "epoch", "train loss (dotted), test error (solid)"):
        cell = [run for run in all_runs if run["method"] != HE
                and (run["alpha"], run["momentum"]) == (alpha, momentum)]
        for method in (FIXED, HYPER, HE):
            group = he if method == HE else [run for run in cell if run["method"] == method]
            if not group:
                continue
            loss, error = mean_curve(group, "train_loss"), mean_curve(group, "test_error") / 100.0
            axis.plot(loss.index, loss.values, ":", color=STYLE[method], lw=1.2)
            axis.plot(error.index, error.values, "-", color=STYLE[method], lw=1.8)
            for run in group:
                if run["status"] == "diverged" and run["metrics"]:
                    last = run["metrics"][-1]
                    axis.plot(last["epoch"], 1.0, "x", color="red", ms=9, mew=2)
        if not cell:
            not_run(axis)
    handles = [plt.Line2D([], [], color=STYLE[m], lw=2, label=m) for m in (FIXED, HYPER, HE)]
    handles.append(plt.Line2D([], [], color="red", marker="x", ls="", label="diverged"))
    figure.legend(handles=handles, loc="upper center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 0.99))
    figure.suptitle("ResNet-20 on CIFAR-10 (test error as a fraction)", y=0.95)
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    mark_deviations(figure, note)
    save_figure(figure, out)


def draw_hyperparameters(all_runs: list[dict], out: Path, note: str = "") -> None:
    """Per cell, the α (solid, log scale) and μ (dashed, right axis) that SGD(α, μ)/SGD learns, against steps,
    the mean over its runs."""
    plt = pyplot()
    figure, axes = plt.subplots(3, 3, figsize=(14, 11), sharex=True)
    for index, (alpha, momentum, axis) in enumerate(cells(axes, "step", "learned α (solid)")):
        group = [run for run in all_runs if run["method"] == HYPER
                 and (run["alpha"], run["momentum"]) == (alpha, momentum)]
        frame = pd.DataFrame([{"step": step, "lr": values["lr"], "momentum": values["momentum"]}
                              for run in group for step, values in [(0, {"lr": alpha, "momentum": momentum})]
                              + run["path"]])
        twin = axis.twinx()
        if len(frame):
            mean = frame.groupby("step").mean()
            axis.plot(mean.index, mean["lr"], "-", color=STYLE[HYPER], lw=1.8)
            twin.plot(mean.index, mean["momentum"], "--", color="tab:green", lw=1.5)
        else:
            not_run(axis)
        twin.set_ylim(0.0, 1.0)
        if index % 3 == 2:
            twin.set_ylabel("learned μ (dashed)")
    figure.suptitle("ResNet-20 on CIFAR-10: the α and μ that SGD(α, μ)/SGD learns (mean over runs)", y=0.97)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    mark_deviations(figure, note)
    save_figure(figure, out)


def main() -> None:
    args, records = figure_inputs(__doc__, "figure2", "figure2", ROOT / "results")
    all_runs = runs(records)
    if args.export_records:
        for run in all_runs:
            name = safe_name(f"{FOLDER[run['method']]}_alpha{run['alpha']:g}_mu{run['momentum']:g}")
            copy_record(run["directory"], args.export_records / name / f"seed{run['seed']}")
    note = deviation_note("figure2", [run["protocol"] for run in all_runs])
    draw(all_runs, args.out / "figure2.png", note)
    draw_hyperparameters(all_runs, args.out / "figure2_hyperparameters.png", note)
    table = finals(all_runs)
    table.to_csv(args.out / "figure2.csv", index=False)
    data = sorted({run["summary"]["data"] for run in all_runs if run["summary"].get("data")}) or ["(unrecorded)"]
    command = f"python scripts/figure2.py {describe_source(args)}"
    markdown = ((note + "\n\n" if note else "") + f"Generated by `{command}` from {len(records)} run records "
                f"({describe_commits(records)}; trained on {' / '.join(data)}): final test error (%, mean over "
                "runs) per cell and method, the paper's value read off its figure (±1-2 points), and the α and μ "
                "the runs ended with.\n\n" + markdown_table(table.to_dict("records")))
    write_table(markdown, args.out / "figure2.md", args.page, "figure2")


if __name__ == "__main__":
    main()
