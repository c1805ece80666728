"""Figure 3 from run records and benchmark JSON: test error against the initial step size for SGD stacks of
height 0-3 and learning-rate-free optimizers (left), and per-step time against stack height (right).

    python scripts/figure3.py runs/sensitivity --runtime results/bench_height_cpu.json --page docs/figure3.md \
        --export-records results/figure3/runs

Writes results/figure3.png, results/figure3.csv (one line per method, height and α) and results/figure3.md (the
spread of final test error over α per height, beside the values read off the paper).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from experiments.paper import FIGURE_3_RANGE
from experiments.records import copy_record, describe_commits, safe_name
from experiments.reports import (describe_source, deviation_note, figure_inputs, mark_deviations, protocol_run, pyplot,
                                 save_figure, write_table)

ROOT = Path(__file__).resolve().parents[1]
SWEPT_BASELINES = ("ScheduleFreeSGD", "ScheduleFreeAdamW")
# The learning-rate-free optimizers drawn as bands, each in a colour of its own, the same in every drawing.
BAND_COLOURS = {"Prodigy": "tab:green", "DAdaptSGD": "tab:purple", "DAdaptAdam": "tab:brown"}


def sensitivity_points(records: list[dict]) -> pd.DataFrame:
    """One line per run: method, height, α, seed, status, final test error."""
    lines = []
    for record in records:
        config = record["run"]["config"]
        summary = record["summary"]
        lines.append({"method": config["sensitivity"]["method"], "height": config["sensitivity"]["height"],
                      "alpha": float(config["sensitivity"]["alpha"]), "seed": config["seed"],
                      "epochs": config["epochs"], "status": summary.get("status"),
                      "test_error": summary.get("test_error"), "directory": record["directory"]})
    return pd.DataFrame(lines)


def summarise(points: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, min and max of the final test error over seeds; diverged runs count with the error they had."""
    finished = points[points["status"].isin(["ok", "diverged"])]
    grouped = finished.groupby(["method", "height", "alpha"])
    table = grouped["test_error"].agg(["mean", "std", "min", "max", "count"]).reset_index()
    table["diverged"] = grouped["status"].apply(lambda s: int((s == "diverged").sum())).values
    failed = points[~points["status"].isin(["ok", "diverged"])].groupby(["method", "height", "alpha"]).size()
    table["failed"] = [int(failed.get((m, h, a), 0)) for m, h, a in zip(table.method, table.height, table.alpha)]
    return table.rename(columns={"count": "seeds", "mean": "test_error", "std": "test_error_std",
                                 "min": "test_error_min", "max": "test_error_max"})


def spread(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for height, part in table[table["method"] == "SGD"].groupby("height"):
        paper = FIGURE_3_RANGE.get(int(height))
        rows.append({"height": int(height), "alphas": len(part), "best_error": part["test_error"].min(),
                     "worst_error": part["test_error"].max(),
                     "spread": part["test_error"].max() - part["test_error"].min(),
                     "diverged_runs": int(part["diverged"].sum()),
                     "paper_range": f"{paper[0]:g} to {paper[1]:g}" if paper else "not read off"})
    return pd.DataFrame(rows)


def runtime(path: Path | None) -> pd.DataFrame:
    """Per-step time of SGD stacks as % over height 0, for ours and the reference, from bench_overhead JSON."""
    if path is None:
        return pd.DataFrame()
    results = [row for row in json.loads(path.read_text())["results"] if row["family"] == "SGD"]
    base = next(row for row in results if row["height"] == 0)
    lines = []
    for row in results:
        line = {"height": row["height"]}
        for who in ("ours", "ours_compiled", "reference"):
            if f"{who}_ms" in row:
                line[f"{who}_ms"] = row[f"{who}_ms"]
                line[f"{who}_percent_over_height_0"] = 100.0 * (row[f"{who}_ms"] / base[f"{who}_ms"] - 1.0)
        lines.append(line)
    return pd.DataFrame(lines)


def draw(table: pd.DataFrame, times: pd.DataFrame, out: Path, note: str = "") -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    colours = plt.cm.viridis([0.0, 0.3, 0.6, 0.85])
    stacks = table[table["method"] == "SGD"]
    for height, part in stacks.groupby("height"):
        part = part.sort_values("alpha")
        colour = colours[int(height) % len(colours)]
        left.errorbar(part["alpha"], part["test_error"], yerr=part["test_error_std"].fillna(0), marker="o",
                      color=colour, capsize=3, label=f"SGD stack, height {int(height)}")
        marked = part[part["diverged"] > 0]
        left.scatter(marked["alpha"], marked["test_error"], marker="x", s=90, color="red", zorder=5)
    for method, part in table[table["method"] != "SGD"].groupby("method"):
        part = part.sort_values("alpha")
        if method in SWEPT_BASELINES and len(part) > 1:
            left.plot(part["alpha"], part["test_error"], linestyle="--", marker=".", label=f"{method} (lr = α)")
        else:
            low, high = part["test_error_min"].min(), part["test_error_max"].max()
            left.axhspan(low, high, alpha=0.25, label=f"{method} (default lr, band over seeds)",
                         color=BAND_COLOURS.get(method, "tab:gray"))
    if not table[table["diverged"] > 0].empty:
        left.scatter([], [], marker="x", color="red", label="a seed diverged")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("initial step size α of every level")
    left.set_ylabel("final test error, % (mean ± std over seeds)")
    left.set_title("MNIST MLP: sensitivity to the initial step size")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="upper right")
    for who, style in (("ours", "o-"), ("ours_compiled", "s--"), ("reference", "^:")):
        column = f"{who}_percent_over_height_0"
        if column in times:
            right.plot(times["height"], times[column], style, label=who.replace("_", " "))
    if not times.empty:
        right.set_xscale("symlog", linthresh=10, linscale=2)
        right.set_xticks(list(times["height"]), [str(h) for h in times["height"]])
        right.minorticks_off()
    right.set_xlabel("stack height (SGD levels above the weights' SGD)")
    right.set_ylabel("per-step time, % over height 0")
    right.set_title("MNIST MLP on the CPU: cost of each level")
    right.grid(True, alpha=0.3)
    right.legend()
    figure.tight_layout(rect=(0, 0, 1, 0.95 if note else 1))
    mark_deviations(figure, note)
    save_figure(figure, out)


def to_markdown(spread_table: pd.DataFrame, times: pd.DataFrame, points: pd.DataFrame, command: str,
                commits: str, note: str = "") -> str:
    epochs = ", ".join(str(e) for e in sorted(points["epochs"].unique())) if len(points) else "—"
    text = (note + "\n\n" if note else "") + (
        f"Generated by `{command}` from {len(points)} run records ({epochs} epochs each; {commits}). Spread of the "
        "final test error (mean over seeds) across the initial step sizes, per SGD stack height:\n\n")
    text += "| height | α values | best % | worst % | spread (points) | diverged runs | paper (read off) % |\n"
    text += "|---|---|---|---|---|---|---|\n"
    for row in spread_table.to_dict("records"):
        text += (f"| {row['height']} | {row['alphas']} | {row['best_error']:.2f} | {row['worst_error']:.2f} | "
                 f"{row['spread']:.2f} | {row['diverged_runs']} | {row['paper_range']} |\n")
    if not times.empty:
        text += "\nPer-step time of SGD stacks, % over height 0 (the paper: about +1 to 2 % per level):\n\n"
        columns = [c for c in times.columns if c.endswith("percent_over_height_0")]
        text += "| height | " + " | ".join(c.replace("_percent_over_height_0", "") for c in columns) + " |\n"
        text += "|---|" + "---|" * len(columns) + "\n"
        for row in times.to_dict("records"):
            text += f"| {row['height']} | " + " | ".join(f"{row[c]:+.1f} %" for c in columns) + " |\n"
    return text


def main() -> None:
    args, records = figure_inputs(__doc__, "sensitivity", "figure3", ROOT / "results", lambda parser:
                                  parser.add_argument("--runtime", type=Path, help="bench_overhead.py JSON with SGD "
                                                                                   "stacks of several heights"))
    points = sensitivity_points(records)
    if args.export_records:
        for point in points.to_dict("records"):
            name = safe_name(f"{point['method']}_height{point['height']}_alpha{point['alpha']:g}")
            copy_record(point["directory"], args.export_records / name / f"seed{point['seed']}")
    table, times = summarise(points), runtime(args.runtime)
    note = deviation_note("sensitivity", [
        protocol_run(record, (point["method"], point["height"], point["alpha"]), None)
        for record, point in zip(records, points.to_dict("records"))])
    draw(table, times, args.out / "figure3.png", note)
    table.to_csv(args.out / "figure3.csv", index=False)
    if not times.empty:
        times.to_csv(args.out / "figure3_runtime.csv", index=False)
    command = "python scripts/figure3.py " + describe_source(args) + \
        (f" --runtime {args.runtime}" if args.runtime else "")
    markdown = to_markdown(spread(table), times, points, command, describe_commits(records), note)
    write_table(markdown, args.out / "figure3.md", args.page, "figure3")


if __name__ == "__main__":
    main()
