"""How the kit's library functions report progress: a `Log` callback, stderr by default (stdout stays for results)."""

from __future__ import annotations

import sys
from collections.abc import Callable

Log = Callable[[str], None]


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
