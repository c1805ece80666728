"""Two commits' runs of scripts/bench_overhead.py, side by side: for each stack, the range of each commit's ratios
to torch.optim over its runs, the reference code's, and how far each commit is behind the reference (the median over
its runs of ours less the reference's, both measured in the same run). Prints JSON (and writes it with --out).

Runs a minute apart on a shared machine differ by up to 0.09 in these ratios, so one run each cannot tell two
commits apart; runs alternating between the two (results/bench_overhead_alternating/) and their differences from
the reference, which did not change, can.

Example:
    python scripts/compare_overhead_runs.py results/bench_overhead_alternating --commits 0e0d065,23ee7f7 \\
        --out results/bench_overhead_alternating/compared_0e0d065_23ee7f7.json --page docs/speed.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from experiments.provenance import provenance
from experiments.reports import publish


def read_runs(folder: Path, commits: list[str]) -> dict[str, list[dict]]:
    """{commit: its runs' reports}, each commit's runs found among the folder's JSON files by its commit's prefix."""
    runs = {commit: [] for commit in commits}
    for path in sorted(folder.glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SystemExit(f"{path} is not JSON ({error}): remove it or run its benchmark again")
        if not isinstance(report, dict) or "results" not in report or "git" not in report:
            continue  # (another script's output, such as an earlier comparison)
        matching = [commit for commit in commits if str(report["git"].get("commit", "")).startswith(commit)]
        if not matching:
            continue
        if report["git"].get("dirty"):
            raise SystemExit(f"{path} was measured on a working tree with uncommitted changes, so its commit does "
                             "not say what ran: measure it again on a clean checkout")
        if not all("reference_vs_torch_optim" in row for row in report["results"]):
            raise SystemExit(f"{path} has no reference code's ratios (bench_overhead.py --no-reference?): "
                             "compare runs that timed it")
        runs[matching[0]].append(report)
    missing = [commit for commit, found in runs.items() if not found]
    if missing:
        raise SystemExit(f"no bench_overhead.py run of commit {', '.join(missing)} in {folder}")
    machines = {json.dumps(report.get("machine"), sort_keys=True) for found in runs.values() for report in found}
    if len(machines) > 1:
        raise SystemExit(f"the runs in {folder} were measured on different machines: compare runs of one machine")
    return runs


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def compared(runs: dict[str, list[dict]]) -> list[dict]:
    """One row per stack, in the order the first run lists them."""
    by_stack: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for commit, reports in runs.items():
        for report in reports:
            for row in report["results"]:
                pair = (row["ours_vs_torch_optim"], row["reference_vs_torch_optim"])
                by_stack.setdefault(row["stack"], {}).setdefault(commit, []).append(pair)
    rows = []
    for stack, pairs in by_stack.items():
        row = {"stack": stack}
        for commit in runs:
            ours = [o for o, _ in pairs.get(commit, [])]
            row[f"ours at {commit}"] = spread(ours) if ours else None
        row["reference"] = spread([r for commit_pairs in pairs.values() for _, r in commit_pairs])
        for commit in runs:
            differences = [o - r for o, r in pairs.get(commit, [])]
            row[f"behind at {commit}"] = round(statistics.median(differences), 3) if differences else None
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of bench_overhead.py JSON files")
    parser.add_argument("--commits", required=True, help="the two (or more) commits to compare, comma-separated "
                                                         "prefixes, in the order of the columns")
    parser.add_argument("--out", type=Path, help="also write the JSON here (and its Markdown beside it)")
    parser.add_argument("--page", type=Path, help="also put the Markdown table into this documentation page's block")
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder} is not a folder of bench_overhead.py runs")
    commits = [commit.strip() for commit in args.commits.split(",") if commit.strip()]
    runs = read_runs(args.folder, commits)
    first = next(iter(runs.values()))[0]
    report = {
        "benchmark": f"{first['benchmark']}: the runs of commits {', '.join(commits)} side by side "
                     f"({', '.join(f'{commit}: {len(found)}' for commit, found in runs.items())} runs)",
        "method": "ours at a commit and the reference: the range of the ratios to torch.optim over the runs; behind "
                  "at a commit: the median over its runs of its ratio less the reference code's in the same run "
                  "(negative: faster than the reference)",
        **provenance(),
        "machine": first["machine"],  # (the runs'; this script only reads them)
        "results": compared(runs),
    }
    publish(report, args.out, args.page)


if __name__ == "__main__":
    sys.exit(main())
