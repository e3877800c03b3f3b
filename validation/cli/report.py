"""`python -m validation report`: its parser and its run (the work: `validation.reports.write`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from validation.reports.write import load_report, write_reports


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="render a JSON report's set again: its JSON in the current format, Markdown and HTML pages",
        description="Draw the Markdown (+ PNG figures) and self-contained HTML pages from a drift, accuracy, locate "
        "or bench JSON report of any version, e.g. after editing the renderer or on another machine.",
    )
    parser.add_argument("json", type=Path, help="a report written by drift, accuracy, locate or bench (any version)")
    parser.add_argument("--output-dir", type=Path, default=None, help="where the pages go (default: beside the JSON)")
    parser.set_defaults(func=main)


def main(args: Any) -> int:
    report = load_report(args.json)
    # the set again: the JSON in this version's format (the same numbers), and its pages
    written = write_reports(report, args.output_dir or args.json.parent, args.json.stem)
    for kind, path in written.items():
        if not kind.startswith("png:"):
            print(f"wrote {path}")
    return 0
