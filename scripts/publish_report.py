"""Write a benchmark's JSON report again, with its Markdown table beside it (and into a documentation page's block):
for a report that came back alone, as the GPU machine brings them back (scripts/device_suite.sh). The report is
read as data, never executed.

    python scripts/publish_report.py BACK.json --out results/bench_step_resnet20_h200.json [--page docs/gpu.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.reports import publish


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="a benchmark script's JSON report")
    parser.add_argument("--out", type=Path, required=True, help="where to write it, its Markdown beside it")
    parser.add_argument("--page", type=Path, help="also put the Markdown table into this documentation page's block")
    args = parser.parse_args()
    try:
        report = json.loads(args.report.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"{args.report}: not a benchmark's JSON report ({error})")
    missing = {"benchmark", "method", "results"} - set(report)
    if missing:
        raise SystemExit(f"{args.report}: not a benchmark's JSON report (no {', '.join(sorted(missing))})")
    publish(report, args.out, args.page)


if __name__ == "__main__":
    main()
