"""Atomic file results: write beside the target, rename over it only on success."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import LvvitError


class OutputPathError(LvvitError, OSError):
    """A result path that cannot be written."""


@contextlib.contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on a clean exit with a non-empty file, rename it over `target`.

    On an exception (or an empty result) the temporary file is removed and an
    older file at `target` is left untouched.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise OutputPathError(f"{target}: cannot write here ({exc.strerror or exc})") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a result file gets the usual permissions
    try:
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise OutputPathError(f"{target}: the writer produced an empty file; nothing was written")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
