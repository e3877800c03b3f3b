"""`python -m validation export-memory`: the exporter's peak memory and time (`validation.perf.export_memory`)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvvit.presets import list_presets


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import add_work_dir
    from validation.perf import export_memory

    parser = subparsers.add_parser(
        "export-memory",
        help="the exporter's peak memory and time per preset, against a baseline checkout",
        description=export_memory.__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--presets", default=",".join(list_presets()), help="comma-separated (default: all)")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout of the kit to compare with")
    add_work_dir(
        parser, None, "the system's temporary folder", "where the exports go (deleted after each)", ("--work",)
    )
    parser.add_argument("--timeout-s", type=float, default=1800, help="per export (default 1800)")
    parser.add_argument("--json", type=Path, default=None, help="also write the runs as JSON here")
    parser.set_defaults(func=main)


@dataclass(frozen=True)
class ExportMemoryOptions:
    presets: tuple[str, ...]
    baseline: Path | None
    work_dir: Path
    timeout_s: float
    json: Path | None


def main(args: Any) -> int:
    presets = tuple(name.strip() for name in args.presets.split(",") if name.strip())
    work = args.work_dir or Path(tempfile.gettempdir())
    return run(ExportMemoryOptions(presets, args.baseline, work, args.timeout_s, args.json))


def run(o: ExportMemoryOptions) -> int:
    from validation.perf.export_memory import measure, table

    new, old = measure(list(o.presets), o.baseline, o.work_dir, o.timeout_s, o.json)
    print(table(new, old))
    return 0 if all(r.returncode == 0 for r in [*new, *old.values()]) else 1
