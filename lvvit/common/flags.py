"""Command-line flags shared by the kit's commands: an old spelling kept as a hidden, deprecated alias.

    action = parser.add_argument("--report-dir", type=Path, default=Path("build/reports"), help=...)
    deprecated_alias(parser, "--output-dir", action)

`--output-dir DIR` then sets `report_dir` as `--report-dir DIR` does, is left out of `--help`,
and writes one line on stderr saying to use `--report-dir`. Scripts written for the old
spelling keep working.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import Any


def deprecated_alias(container: Any, old: str, action: argparse.Action) -> argparse.Action:
    """Add `old` to `container` (a parser or an argument group) as a hidden alias of `action`'s flag."""
    new = action.option_strings[-1] if action.option_strings else action.dest
    base = type(action)

    class Deprecated(base):  # type: ignore[misc, valid-type]
        def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
            print(f"{parser.prog}: {old} is deprecated, use {new}", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    accepted = inspect.signature(base.__init__).parameters
    settings = {
        key: getattr(action, key)
        for key in ("nargs", "const", "type", "choices", "metavar")
        if key in accepted and getattr(action, key) is not None
    }
    return container.add_argument(
        old, action=Deprecated, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **settings
    )


def note_deprecated(prog: str, old: str, new: str) -> None:
    """The one-line deprecation note, for old spellings that are not a flag (a positional argument, a unit)."""
    print(f"{prog}: {old} is deprecated, use {new}", file=sys.stderr)
