"""Atomic file results: write beside the target, rename over it only on success.

`atomic_output` makes one file; `atomic_files` makes a set of files (a report
and its pages, a Paddle inference artifact) that replaces an older set as a unit.
Errors of the disk (full, quota, read-only, too large) become `OutputPathError`
naming the target and the cause; an older result at the target stays untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from lvvit.common.interrupt import note_written, signals_deferred, temporary
from lvvit.errors import LvvitError

# Errors of a writer that concern the disk rather than the data (an unwritable folder fails earlier, at mkstemp;
# EACCES or EIO inside the block may come from reading an input and are left as they are).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class OutputPathError(LvvitError, OSError):
    """A result path that cannot be written."""


# Staging names carry the writer's process id, so that a later run can tell a killed writer's leftovers (removed
# by `sweep_leftovers`) from the files of a writer still at work in the same folder (left alone).
_OWNER = re.compile(r"^\..*\.pid(\d+)-[^/]*\.part$|^\.lvvit-staging-pid(\d+)-[^/]*\.part$")


def _owner() -> str:
    return f"pid{os.getpid()}-"


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: a process of another user
        return True
    return True


def sweep_leftovers(folder: str | Path) -> list[Path]:
    """Remove the `.part` staging files and folders that killed writers left in `folder`; returns them."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _OWNER.match(entry.name)
            if match is None or process_alive(int(match.group(1) or match.group(2))):
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            removed.append(path)
    return removed


def _refuse_special(target: Path) -> None:
    """An existing target must be a regular file: `os.replace` would swap out a device, a FIFO or a folder."""
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputPathError(f"{target}: cannot write here ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
        raise OutputPathError(f"{target}: exists and is {kind}, not a regular file; refusing to replace it")


def _write_error(target: Path, exc: OSError) -> OutputPathError:
    elsewhere = exc.filename and not str(exc.filename).startswith(str(target.parent))  # not its own staging file
    where = f" writing {exc.filename}" if elsewhere else ""
    return OutputPathError(f"{target}: cannot write ({exc.strerror or exc}{where}); nothing was replaced")


@contextlib.contextmanager
def _write_errors_named(target: Path) -> Iterator[None]:
    """A disk error of the writer (full, quota, too large) becomes `OutputPathError` naming `target`."""
    try:
        yield
    except OutputPathError:
        raise
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            raise _write_error(target, exc) from exc
        raise


def _make_room(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{folder}: cannot write here ({exc.strerror or exc})") from exc


@contextlib.contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on a clean exit with a non-empty file, rename it over `target`.

    On an exception (or an empty result) the temporary file is removed and an
    older file at `target` is left untouched.
    """
    target = Path(target)
    _refuse_special(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{_owner()}", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise OutputPathError(f"{target}: cannot write here ({exc.strerror or exc})") from exc
    os.close(fd)
    with temporary(tmp_name) as tmp:  # removed by an interrupt too (lvvit.common.interrupt)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a result file gets the usual permissions
        try:
            with _write_errors_named(target):
                yield tmp
            if not tmp.exists() or tmp.stat().st_size == 0:
                raise OutputPathError(f"{target}: the writer produced an empty file; nothing was written")
            try:
                with signals_deferred():  # an interrupt's line then knows whether the result is in place
                    os.replace(tmp, target)
                    note_written(target)
            except OSError as exc:
                raise _write_error(target, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)


def _commit(staging: Path, folder: Path, stale: Iterable[str]) -> None:
    """Move every file of `staging` into `folder`; on any failure put the older files back."""
    new = sorted(p.name for p in staging.iterdir() if p.is_file())
    old = [n for n in dict.fromkeys([*new, *stale]) if (folder / n).exists() or (folder / n).is_symlink()]
    for name in new:
        _refuse_special(folder / name)
    backup = staging / ".previous"
    backup.mkdir()
    moved_old: list[str] = []
    placed: list[str] = []
    try:
        for name in old:
            os.replace(folder / name, backup / name)
            moved_old.append(name)
        for name in new:
            os.replace(staging / name, folder / name)
            placed.append(name)
        for name in placed:
            note_written(folder / name)
    except BaseException as exc:
        for name in placed:
            (folder / name).unlink(missing_ok=True)
        for name in moved_old:
            os.replace(backup / name, folder / name)
        if isinstance(exc, OSError):
            raise _write_error(folder, exc) from exc
        raise


@contextlib.contextmanager
def atomic_files(folder: str | Path, stale: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a staging folder beside `folder`'s files; on a clean exit move its files into `folder` as a unit.

    Older files of the same names (and the `stale` names: files of an older set
    that the new set no longer has) are replaced together: all of them or, on
    an error or an interrupt, none. The staging folder is always removed.
    """
    folder = Path(folder)
    _make_room(folder)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".lvvit-staging-{_owner()}", suffix=".part", dir=folder))
    except OSError as exc:
        raise OutputPathError(f"{folder}: cannot write here ({exc.strerror or exc})") from exc
    with temporary(staging):  # removed by an interrupt too (lvvit.common.interrupt)
        try:
            with _write_errors_named(folder):
                yield staging
            with signals_deferred():
                _commit(staging, folder, stale)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
