"""The RNN experiment from run records: validation bits per character against epochs for each initial α (the fixed
Adam^α dashed, the hyperoptimized Adam^α/Adam solid), and the learned α against steps (every log_every_steps
steps where the records logged it).

    python scripts/figure_rnn.py runs/rnn --page docs/rnn.md --export-records results/rnn/runs

Writes results/figure_rnn.png, results/rnn.csv (final numbers per α and arm, mean ± std over seeds) and
results/rnn.md (the same as a table, with one generated text sample).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments.paper import PROTOCOLS
from experiments.records import describe_commits
from experiments.reports import (describe_source, deviation_note, export_records, figure_inputs, hyperparameter_path,
                                 mark_deviations, markdown_table, protocol_run, pyplot, save_figure, write_table)

ROOT = Path(__file__).resolve().parents[1]


def curves(records: list[dict]) -> pd.DataFrame:
    """One line per run and epoch: α, arm, seed, epoch, validation bpc."""
    lines = []
    for record in records:
        config = record["run"]["config"]
        arm = "hyperoptimized" if config["rnn"]["hyper"] else "fixed"
        for metrics in record["metrics"]:
            lines.append({"alpha": float(config["rnn"]["alpha"]), "arm": arm, "seed": config["seed"],
                          "epoch": metrics["epoch"], "valid_bpc": metrics["valid_bpc"]})
    return pd.DataFrame(lines)


def paths(records: list[dict]) -> pd.DataFrame:
    """One line per hyperoptimized run and logged step: α₀, seed, step, the α it has learned."""
    lines = []
    for record in records:
        config = record["run"]["config"]
        if config["rnn"]["hyper"]:
            alpha = float(config["rnn"]["alpha"])
            for step, values in [(0, {"lr": alpha})] + hyperparameter_path(record):
                lines.append({"alpha": alpha, "seed": config["seed"], "step": step, "learned_alpha": values["lr"]})
    return pd.DataFrame(lines, columns=["alpha", "seed", "step", "learned_alpha"])


def finals(records: list[dict]) -> pd.DataFrame:
    lines = []
    for record in records:
        config, summary = record["run"]["config"], record["summary"]
        lines.append({"alpha": float(config["rnn"]["alpha"]),
                      "arm": "hyperoptimized" if config["rnn"]["hyper"] else "fixed",
                      "status": summary.get("status"), "epochs": summary.get("epochs_completed"),
                      "valid_bpc": summary.get("valid_bpc"), "test_bpc": summary.get("test_bpc"),
                      "learned_alpha": (summary.get("hyperparameters") or [{}])[0].get("lr")})
    frame = pd.DataFrame(lines)
    ok = frame[frame["status"] == "ok"]
    table = ok.groupby(["alpha", "arm"]).agg(
        seeds=("test_bpc", "count"), epochs=("epochs", "max"), valid_bpc=("valid_bpc", "mean"),
        valid_bpc_std=("valid_bpc", "std"), test_bpc=("test_bpc", "mean"), test_bpc_std=("test_bpc", "std"),
        final_alpha=("learned_alpha", "mean")).reset_index()
    not_ok = frame[frame["status"] != "ok"].groupby(["alpha", "arm"]).size()
    table["not_ok_runs"] = [int(not_ok.get((a, arm), 0)) for a, arm in zip(table["alpha"], table["arm"])]
    return table


def draw(data: pd.DataFrame, learned: pd.DataFrame, out: Path, note: str = "") -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    alphas = sorted(data["alpha"].unique())
    # one colour per initial α, spread over the colour map however many there are
    colours = dict(zip(alphas, plt.cm.plasma([0.1 + 0.8 * i / max(1, len(alphas) - 1) for i in range(len(alphas))])))
    for (alpha, arm), part in data.groupby(["alpha", "arm"]):
        mean = part.dropna(subset=["valid_bpc"]).groupby("epoch")["valid_bpc"].mean()
        style = "-" if arm == "hyperoptimized" else "--"
        left.plot(mean.index, mean.values, style, marker="o", color=colours[alpha],
                  label=f"α₀ = {alpha:g}, {'Adam^α/Adam' if arm == 'hyperoptimized' else 'Adam^α fixed'}")
    for alpha, part in learned.groupby("alpha"):
        mean = part.groupby("step")["learned_alpha"].mean()
        right.plot(mean.index, mean.values, "-", color=colours[alpha], label=f"α₀ = {alpha:g}")
    left.set_xlabel("epoch")
    left.set_ylabel("validation bits per character (mean over seeds)")
    left.set_title("char-LSTM on War and Peace")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=7)
    right.set_yscale("log")
    right.set_xlabel("step")
    right.set_ylabel("learned α (mean over seeds)")
    right.set_title("Adam^α/Adam: the step size it learns")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 0.93 if note else 1))
    mark_deviations(figure, note)
    save_figure(figure, out)


def main() -> None:
    args, records = figure_inputs(__doc__, "rnn", "rnn", ROOT / "results")
    export_records(records, args.export_records,
                   lambda config: f"{'hyper' if config['rnn']['hyper'] else 'fixed'}_alpha{config['rnn']['alpha']:g}",
                   ("sample.txt", "vocabulary.json"))
    note = deviation_note("rnn", [protocol_run(record, (record["run"]["config"]["rnn"]["alpha"],
                                                        record["run"]["config"]["rnn"]["hyper"]),
                                               PROTOCOLS["rnn"].epochs) for record in records])
    draw(curves(records), paths(records), args.out / "figure_rnn.png", note)
    table = finals(records)
    table.to_csv(args.out / "rnn.csv", index=False)
    sample = next((r["summary"]["sample"] for r in records if r["summary"].get("sample")), "")
    command = f"python scripts/figure_rnn.py {describe_source(args)}"
    markdown = ((note + "\n\n" if note else "") + f"Generated by `{command}` from {len(records)} run records "
                f"({describe_commits(records)}): final validation and test bits per character (mean and std over "
                "seeds) and the α the hyperoptimized runs ended with.\n\n" + markdown_table(table.to_dict("records")) +
                "\nA text sample (300 characters at temperature 0.8) from one of these runs:\n\n```\n"
                + sample + "\n```\n")
    write_table(markdown, args.out / "rnn.md", args.page, "rnn")


if __name__ == "__main__":
    main()
