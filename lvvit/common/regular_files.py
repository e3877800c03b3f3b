"""Open and list only regular files: what the kit does with paths that strangers give it.

A FIFO named `cat.jpg` blocks `open()` forever, `/dev/zero` never ends, a symlink
loop or a broken link fails in odd places. Files are opened with O_NONBLOCK and
checked with fstat on the open descriptor (no race between the check and the
read); folders are walked with every entry that is not a regular file listed
with its reason instead of dropped unsaid. Symlinked folders are followed once
(loops are cut by device/inode), as data sets are often links to another disk.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


class NotRegularFileError(OSError):
    """A path that exists but is not a regular file (FIFO, device, socket, folder)."""


def _kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def _os_reason(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop"
    if exc.errno == errno.ENOENT and path.is_symlink():
        return f"a broken symbolic link (to {os.readlink(path)!r}, which does not exist)"
    return exc.strerror or str(exc)


def open_regular(path: str | Path) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file (after symlinks); never blocks.

    Raises `NotRegularFileError` (with what it is) or the `OSError` of the open.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        exc.strerror = _os_reason(path, exc)
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"not a regular file: {_kind(mode)}", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, max_bytes: int) -> bytes:
    """The whole of a regular file no larger than `max_bytes`; `OSError` (or `NotRegularFileError`) otherwise."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise NotRegularFileError(errno.EFBIG, f"{size} bytes, over the limit of {max_bytes} bytes", str(path))
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while we read it
        raise NotRegularFileError(errno.EFBIG, f"over the limit of {max_bytes} bytes", str(path))
    return data


@dataclass(frozen=True)
class SkippedPath:
    """A path a folder walk left out, and why."""

    path: Path
    reason: str


def classify(path: Path) -> str | None:
    """None for a regular file (after symlinks), else why it is not one."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return _os_reason(path, exc)
    except ValueError as exc:  # an embedded NUL byte
        return str(exc)
    return None if stat.S_ISREG(mode) else _kind(mode)


def walk_regular_files(folder: Path) -> tuple[list[Path], list[SkippedPath]]:
    """Every regular file under `folder` (recursive, sorted), and every other entry with its reason.

    Folders are not entries: a symlinked folder is walked unless it was walked already (a loop).
    """
    files: list[Path] = []
    skipped: list[SkippedPath] = []
    seen: set[tuple[int, int]] = set()
    for path, reason in _walk(folder, seen):
        if reason is None:
            files.append(path)
        else:
            skipped.append(SkippedPath(path, reason))
    files.sort()
    skipped.sort(key=lambda s: s.path)
    return files, skipped


def _walk(folder: Path, seen: set[tuple[int, int]]) -> Iterator[tuple[Path, str | None]]:
    # An explicit stack rather than recursion: a deep tree must not hit the recursion limit.
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            info = current.stat()
        except OSError as exc:
            yield current, _os_reason(current, exc)
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen:
            yield current, "a folder already walked (a symbolic link loop or a second link to it)"
            continue
        seen.add(key)
        try:
            with os.scandir(current) as entries:
                # DirEntry answers is_dir/is_file from the folder listing itself (no stat) unless it is a link.
                children = [(Path(e.path), _is(e.is_dir), _is(e.is_file)) for e in entries]
        except OSError as exc:
            yield current, f"cannot list the folder ({exc.strerror or exc})"
            continue
        for child, is_dir, is_file in children:
            if is_dir:
                stack.append(child)
            else:
                yield child, None if is_file else classify(child)


def _is(test) -> bool:
    try:
        return test()
    except OSError:
        return False
