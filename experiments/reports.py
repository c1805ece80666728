"""Writing results: a benchmark's JSON with a Markdown table beside it, and generated blocks in the README."""

from __future__ import annotations

import json
from pathlib import Path


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


def publish(report: dict, out: Path | None, readme: Path | None = None) -> None:
    """Print a benchmark's JSON report; with `out`, write it there and its results as Markdown beside it (and
    into the README block named after the file, with `readme`)."""
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
    if readme is not None:
        replace_between_markers(readme, out.stem, markdown)


def replace_between_markers(path: Path, name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = path.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"{path} has no {begin} ... {end} block to fill")
    head, rest = content.split(begin, 1)
    path.write_text(head + begin + "\n" + text.strip() + "\n" + end + rest.split(end, 1)[1])
