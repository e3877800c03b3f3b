"""`python -m validation report`: its parser and its run (the work: `validation.reports.write`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from validation.reports.write import load_report, render


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="render the Markdown and HTML pages of a JSON report again",
        description="Draw the Markdown (+ PNG figures) and self-contained HTML pages from a drift, accuracy, locate "
        "or bench JSON report of any version, e.g. after editing the renderer or on another machine.",
    )
    parser.add_argument("json", type=Path, help="a report written by drift, accuracy, locate or bench (any version)")
    parser.add_argument("--output-dir", type=Path, default=None, help="where the pages go (default: beside the JSON)")
    parser.set_defaults(func=main)


def main(args: Any) -> int:
    report = load_report(args.json)
    written = render(report, args.output_dir or args.json.parent, args.json.stem)
    for kind, path in written.items():
        if not kind.startswith("png:"):
            print(f"wrote {path}")
    return 0
