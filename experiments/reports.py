"""Writing results: a benchmark's JSON with a Markdown table beside it, tables and figures from run records (marked
when their runs depart from the paper's protocol), and the generated blocks of the documentation's pages."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.paper import PROTOCOLS
from experiments.records import DamagedRecord, copy_record, read_records, safe_name


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}"
        text = "" if value is None else str(value)
        return text if len(text) <= 60 else text[:57] + "…"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def publish(report: dict, out: Path | None, page: Path | None = None) -> None:
    """Print a benchmark's JSON report; with `out`, write it there and its results as Markdown beside it (and
    into the block named after the file of the documentation page `page`)."""
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    machine = report.get("machine", {})
    where = machine.get("gpu") or f"{machine.get('cpu_count')}-core CPU, {machine.get('torch_threads')} threads"
    markdown = (f"{report['benchmark']}; {report['method']}. Measured on {where}, torch "
                f"{report.get('versions', {}).get('torch')}, commit {str(report.get('git', {}).get('commit'))[:10]}"
                f" by `{' '.join(report.get('command', []))}`.\n\n" + markdown_table(report["results"]))
    out.with_suffix(".md").write_text(markdown)
    if page is not None:
        replace_between_markers(page, out.stem, markdown)


def replace_between_markers(path: Path, name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = path.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"{path} has no {begin} ... {end} block to fill")
    head, rest = content.split(begin, 1)
    path.write_text(head + begin + "\n" + text.strip() + "\n" + end + rest.split(end, 1)[1])


def figure_inputs(description: str, experiment: str, markers: str, out: Path, extra=None):
    """(arguments, run records) of a figure script: record folders, --out, --page, --export-records, and
    whatever `extra(parser)` adds; it stops with a message when the folders hold no run of `experiment`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sources(parser, experiment)
    parser.add_argument("--out", type=Path, default=out, help="where the figure and its tables go")
    parser.add_argument("--page", type=Path,
                        help=f"also put the table between the {markers} markers of this documentation page")
    parser.add_argument("--export-records", type=Path, metavar="DIR",
                        help="also copy each run's small record files here (to commit them)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    return args, records_of(experiment, args)


def add_sources(parser: argparse.ArgumentParser, experiment: str) -> None:
    """The run source of every results script: record folders, a W&B project online, or W&B's offline folders."""
    parser.add_argument("records", nargs="*", help=f"folders holding the {experiment} runs' records (searched "
                                                   "recursively)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from this W&B project instead")
    parser.add_argument("--wandb-dir", metavar="DIR", action="append",
                        help="read the runs from the W&B offline run folders under DIR (what logger=wandb "
                             "wandb.mode=offline writes), without a server; repeatable")
    for name, what in (("group", "in this W&B group"), ("tag", "with this W&B tag (repeatable)"),
                       ("state", "in this W&B state (finished, crashed, ...)"), ("sweep", "of this W&B sweep id")):
        parser.add_argument(f"--wandb-{name}", action="append" if name == "tag" else "store",
                            help=f"with --wandb: only the runs {what}")
    parser.add_argument("--skip-damaged", action="store_true",
                        help="leave out a record that cannot be read (each is named) rather than stop")


def describe_source(args) -> str:
    if args.wandb:
        return f"--wandb {args.wandb}"
    if args.wandb_dir:
        return " ".join(f"--wandb-dir {folder}" for folder in args.wandb_dir)
    return " ".join(args.records)


def records_of(experiment: str, args) -> list[dict]:
    """The run records of `experiment` from the source `args` name (add_sources); a script stops with one line
    when there are none, or when one cannot be read (unless --skip-damaged: then each one left out is named, and
    the output says so)."""
    from experiments import wandb_runs

    sources = [bool(args.records), bool(args.wandb), bool(args.wandb_dir)]
    if sum(sources) != 1:
        raise SystemExit("give one source of runs: folders of run records, --wandb ENTITY/PROJECT or --wandb-dir DIR")
    folders = args.records or args.wandb_dir or []
    missing = [folder for folder in folders if not Path(folder).is_dir()]
    if missing:
        raise SystemExit(f"no such folder: {', '.join(missing)}")
    damaged = [] if args.skip_damaged else None
    try:
        if args.wandb:
            filters = {key: value for key, value in (
                ("group", args.wandb_group), ("state", args.wandb_state), ("sweep", args.wandb_sweep),
                ("tags", {"$in": args.wandb_tag} if args.wandb_tag else None)) if value}
            records = wandb_runs.records_from_project(args.wandb, experiment, filters, damaged)
        elif args.wandb_dir:
            records = wandb_runs.records_from_offline(args.wandb_dir, experiment, damaged, progress=sys.stderr.isatty())
        else:
            records = read_records(*folders, experiment=experiment, damaged=damaged)
    except DamagedRecord as error:
        raise SystemExit(f"{error} (--skip-damaged leaves such a record out of the results)") from None
    for error in damaged or ():
        print(f"left out, damaged: {error}", file=sys.stderr)
    if damaged:
        print(f"{len(damaged)} damaged record(s) left out: these results are of the {len(records)} others",
              file=sys.stderr)
    if not records:
        raise SystemExit(f"no {experiment} run records in {describe_source(args)} (a record is a folder holding "
                         "run.json and summary.json, written by experiments/train.py, or its W&B mirror)")
    return records


def protocol_run(record: dict, key, paper_epochs: int | None) -> dict:
    """What of a run the paper's protocol speaks of (see experiments.paper.Protocol.deviations)."""
    config, summary = record["run"].get("config", {}), record["summary"]
    examples = summary.get("train_examples")
    if examples is None and summary.get("data"):  # records written before train_examples was
        examples = int(str(summary["data"]).split()[0])
    data = config.get("data", {})
    return {"key": key, "epochs": config.get("epochs"), "paper_epochs": paper_epochs, "train_examples": examples,
            "subset": data.get("subset"), "test_subset": data.get("test_subset")}


def deviation_note(experiment: str, runs: list[dict]) -> str:
    """A bold line saying how the runs depart from the paper's protocol, or "" when they follow it."""
    found = PROTOCOLS[experiment].deviations(runs)
    return "**Not the paper's protocol:** " + "; ".join(found) + "." if found else ""


def pyplot():
    """matplotlib's pyplot, drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mark_deviations(figure, note: str) -> None:
    """Write a deviation note across the top of a figure, so that the picture cannot pass for the paper's."""
    if note:
        figure.text(0.5, 0.998, note.replace("**", ""), ha="center", va="top", color="firebrick", fontsize=9,
                    wrap=True)


def write_table(markdown: str, path: Path, page: Path | None, markers: str) -> None:
    """A generated table: into its Markdown file, into the block named `markers` of the documentation page `page`
    (with one), and out."""
    path.write_text(markdown, encoding="utf-8")
    if page is not None:
        replace_between_markers(page, markers, markdown)
    print(markdown)


def save_figure(figure, out: Path) -> None:
    """Write a matplotlib figure (its folder made if need be) and free it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    pyplot().close(figure)


def hyperparameter_path(record: dict, level: int = 0) -> list[tuple[int, dict]]:
    """(step, that level's hyperparameters) along a run: every log_every_steps steps where its record logged them
    (hyperparameters.jsonl), else once an epoch (records made before it did)."""
    return [(point["step"], point["hyperparameters"][level]) for point in record.get("trajectory") or record["metrics"]]


def export_records(records: list[dict], destination: Path | None, name_of, extra: tuple[str, ...] = (),
                   trajectory: bool = True) -> None:
    """With --export-records: copy each record's small files to destination/NAME/seedS, NAME from its config."""
    if destination is None:
        return
    for record in records:
        config = record["run"]["config"]
        copy_record(record["directory"], destination / safe_name(name_of(config)) / f"seed{config['seed']}", extra,
                    trajectory)
