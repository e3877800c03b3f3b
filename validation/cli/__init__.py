"""`python -m validation COMMAND ...` (or `lvvit-validate COMMAND ...`): one module per subcommand, registered by name.

A subcommand module `validation/cli/<module>.py` exposes `add_parser(subparsers)`,
which adds its parser and sets `func` (args -> exit code) as a default, and a
`main(args)` that reads the `argparse.Namespace` once into typed options and calls
the library with them; nothing below `validation.cli` reads a Namespace. To add a
command, write that module and append its name to `COMMANDS`. Exit codes: 0
passed, 1 a runtime is outside the tolerance (the reports are written first), 2 a
usage or input error, 128 + N stopped by signal N.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lvvit.errors import LvvitError
from validation.errors import GateFailure

# The validation commands, then the tools (measurements, checks and data sets): module names in validation/cli.
COMMANDS = (
    "drift",
    "accuracy",
    "reference",
    "report",
    "bench",
    "locate",
    "engine_bench",
    "stream_latency",
    "export_memory",
    "ov_layers",
    "ort_fusions",
    "photos",
    "digits",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m validation",
        description="Prove an exported LV-ViT: numeric drift and accuracy of each runtime against native Paddle, "
        "with JSON, Markdown and HTML reports.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ info logs drown the progress lines
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    parser.set_defaults(argv=("python", "-m", "validation", *argv))  # the command line, recorded in the reports
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GateFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except LvvitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
