"""`python -m validation report`: its parser and its run (the work: `validation.reports.write`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from validation.reports.write import load_report, write_reports


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import add_report_dir, add_report_name

    parser = subparsers.add_parser(
        "report",
        help="render a JSON report's set again: its JSON in the current format, Markdown and HTML pages",
        description="Draw the Markdown (+ PNG figures) and self-contained HTML pages from a drift, accuracy, locate "
        "or bench JSON report of any version, e.g. after editing the renderer or on another machine.",
    )
    parser.add_argument("json", type=Path, help="a report written by drift, accuracy, locate or bench (any version)")
    add_report_dir(parser, default="beside the JSON", old=("--output-dir",))
    add_report_name(parser, "default: the JSON file's")
    parser.set_defaults(func=main)


def main(args: Any) -> int:
    return run(args.json, args.report_dir, args.name)


def run(json_file: Path, report_dir: Path | None, name: str | None = None) -> int:
    report = load_report(json_file)
    # the set again: the JSON in this version's format (the same numbers), and its pages
    written = write_reports(report, report_dir or json_file.parent, name or json_file.stem)
    for kind, path in written.items():
        if not kind.startswith("png:"):
            print(f"wrote {path}")
    return 0
