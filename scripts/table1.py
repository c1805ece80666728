"""Regenerate Table 1 (MNIST) from run records, beside the paper's numbers.

    python scripts/table1.py runs/table1                       # records written by the Table 1 multirun
    python scripts/table1.py --wandb ENTITY/PROJECT            # or the runs mirrored to Weights & Biases
    python scripts/table1.py --wandb-dir runs/table1           # or W&B's offline run folders, without a server
    python scripts/table1.py runs/table1 --export-records results/table1/runs   # keep the small record files

Writes results/table1.md and results/table1.csv. Every row of the paper appears: runs that are missing, failed or
diverged are shown as such, never dropped. A row whose difference from the paper exceeds the paper's standard
deviation plus ours is flagged.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import pandas as pd

import hyperopt
from experiments.paper import TABLE_1
from experiments.records import copy_record, describe_commits, safe_name
from experiments.reports import (add_sources, describe_source, deviation_note, protocol_run, records_of,
                                 replace_between_markers)

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = {row.stack: row.epochs for row in TABLE_1}


def learned_notation(runs: list[dict]) -> str | None:
    """The weights' optimizer with the values its runs learned (mean over seeds), e.g. Adam(0.0041, 0.899, 0.999):
    the stack's bottom level as written (Adam^α, RMSProp^{α,γ}, ...) and the values of what it learns."""
    finals = [run["hyperparameters"][0] for run in runs if run.get("hyperparameters")]
    if not finals or not runs[0].get("optimizer"):
        return None
    bottom = runs[0]["optimizer"].split("/")[0].split("(")[0].strip()
    cls, values, learned = hyperopt.parse(runs[0]["optimizer"])[0]
    defaults = {name: default for name, (default, _, _) in cls.HYPERPARAMETERS.items()}
    learn = learned if learned is not None else cls.default_learn({**defaults, **values})
    mean = {name: statistics.fmean(final[name] for final in finals) for name in learn}
    return f"{bottom}(" + ", ".join(f"{mean[name]:.4g}" for name in learn) + ")"


def runs_of(records: list[dict]) -> list[dict]:
    runs = []
    for record in records:
        config = record["run"].get("config", {})
        summary = record["summary"]
        runs.append({**protocol_run(record, config.get("row"), EPOCHS.get(config.get("row"))),
                     "row": config.get("row"), "experiment": config.get("experiment"),
                     "optimizer": config.get("optimizer"), "seed": config.get("seed"),
                     "epochs": config.get("epochs"), "status": summary.get("status"),
                     "test_error": summary.get("test_error"), "hyperparameters": summary.get("hyperparameters"),
                     "wall_seconds": summary.get("wall_seconds"), "started": summary.get("started"),
                     "epochs_completed": summary.get("epochs_completed"), "directory": record["directory"],
                     "git": record["run"].get("git", {})})
    return runs


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def build_table(runs: list[dict]) -> pd.DataFrame:
    table1_runs = [run for run in runs if run.get("experiment") == "table1"]
    by_row: dict[str, list[dict]] = {}
    for run in table1_runs:
        by_row.setdefault(run["row"], []).append(run)
    lines = []
    for row in TABLE_1:
        paper = {"group": row.group, "row": row.stack, "kind": row.kind, "paper_error": row.error,
                 "paper_std": row.std, "rerun_of": row.rerun_of}
        runs_of_row = sorted(by_row.get(row.stack, []), key=lambda run: (run["seed"] is None, run["seed"]))
        ok = [run for run in runs_of_row if run["status"] == "ok"]
        errors = [run["test_error"] for run in ok]
        mean, std = mean_std(errors)
        statuses = {status: sum(run["status"] == status for run in runs_of_row)
                    for status in ("ok", "diverged", "failed", "running")}
        status = ", ".join(f"{count} {status}" for status, count in statuses.items() if count) or "missing"
        difference = None if mean is None else mean - row.error
        beyond = None if mean is None else abs(difference) > row.std + std
        if row.kind == "hyperoptimized":
            learned = learned_notation(ok)
        elif row.kind == "rerun":
            learned = learned_notation([run for run in by_row.get(row.rerun_of, []) if run["status"] == "ok"])
        else:
            learned = None
        lines.append({**paper, "our_error": mean, "our_std": std, "seeds": len(errors), "status": status,
                      "difference": difference, "beyond_both_stds": beyond,
                      "paper_learned": row.stack if row.kind == "rerun" else None, "our_learned": learned,
                      "seeds_run": ",".join(str(run["seed"]) for run in runs_of_row),
                      "wall_seconds": sum(run["wall_seconds"] or 0.0 for run in runs_of_row)})
    return pd.DataFrame(lines)


def _cell(mean, std, digits=2):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def timing(runs: list[dict]) -> str:
    """How long the runs took: first start to last end, and the sum of their wall times."""
    done = [run for run in runs if run.get("experiment") == "table1" and run.get("wall_seconds")]
    if not done:
        return ""
    span = max(run["started"] + run["wall_seconds"] for run in done) - min(run["started"] for run in done)
    epochs = sum(run["epochs_completed"] or 0 for run in done)
    return (f"{len(done)} runs at {describe_commits([{'run': {'git': run.get('git', {})}} for run in done])}, "
            f"{epochs} run-epochs: {span / 60:.1f} minutes from the first start to the last end, "
            f"{sum(run['wall_seconds'] for run in done) / 60:.1f} minutes of run wall time in all.")


def to_markdown(table: pd.DataFrame, sources: str, timing_line: str = "", note: str = "") -> str:
    header = ("| group | optimizer | paper error % | our error % (seeds) | difference | runs | "
              "learned hyperparameters: paper / ours |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for row in table.to_dict("records"):
        name = f"↳ {row['row']}" if row["kind"] == "rerun" else row["row"]
        ours = _cell(row["our_error"], row["our_std"])
        if row["seeds"]:
            ours += f" ({row['seeds']})"
        difference = "—" if row["difference"] is None or pd.isna(row["difference"]) else \
            f"{row['difference']:+.2f}" + (" **beyond 2σ**" if row["beyond_both_stds"] else "")
        ours_learned = row["our_learned"] if isinstance(row["our_learned"], str) else "—"
        if row["kind"] == "rerun":
            learned = f"{row['paper_learned']} / {ours_learned}"
        elif row["kind"] == "hyperoptimized":
            learned = f"see rerun / {ours_learned}"
        else:
            learned = ""
        lines.append(f"| {row['group']} | {name} | {_cell(row['paper_error'], row['paper_std'])} | {ours} | "
                     f"{difference} | {row['status']} | {learned} |")
    flagged = int(table["beyond_both_stds"].fillna(False).astype(bool).sum())
    mean_difference = table["difference"].abs().mean()
    return (f"# Table 1: MNIST test error, paper against this repository\n\n" + (note + "\n\n" if note else "") +
            f"Generated by `python scripts/table1.py {sources}` from run records. Rows marked ↳ rerun the stack "
            "above with the hyperparameter values *the paper* printed, fixed; the last column shows those beside "
            "the values our own hyperoptimized runs learned (mean over seeds). A difference is flagged "
            "**beyond 2σ** when it exceeds the paper's standard deviation plus ours "
            f"({flagged} of {len(table)} rows); the mean absolute difference is {mean_difference:.2f} points. "
            f"{timing_line}\n\n" + header + "\n".join(lines) + "\n")


def export_records(runs: list[dict], destination: Path) -> None:
    """Copy the small files of each Table 1 record to destination/<row>/seed<k>/."""
    for run in runs:
        if run.get("experiment") == "table1" and Path(run["directory"]).is_dir():
            copy_record(run["directory"], destination / safe_name(run["row"]) / f"seed{run['seed']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sources(parser, "table1")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="where table1.md and .csv go")
    parser.add_argument("--export-records", type=Path, metavar="DIR",
                        help="also copy each run's small record files here (to commit them)")
    parser.add_argument("--page", type=Path,
                        help="also put the table between the table1 markers of this documentation page")
    args = parser.parse_args()
    runs = runs_of(records_of("table1", args))
    if args.export_records:
        export_records(runs, args.export_records)
    table = build_table(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    sources = describe_source(args)
    note = deviation_note("table1", [run for run in runs if run.get("experiment") == "table1"])
    markdown = to_markdown(table, sources, timing(runs), note)
    (args.out / "table1.md").write_text(markdown)
    table.to_csv(args.out / "table1.csv", index=False)
    if args.page:
        replace_between_markers(args.page, "table1", markdown.split("\n", 2)[2])
    print(markdown)


if __name__ == "__main__":
    main()
