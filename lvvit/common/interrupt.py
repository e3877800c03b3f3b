"""SIGINT and SIGTERM end a run cleanly: temporary files removed, child processes stopped, one line said.

Python turns SIGINT into KeyboardInterrupt and leaves SIGTERM to kill the
process at once; Paddle replaces the SIGTERM handler at import with one that
prints a C++ "FatalError" and aborts. Either way temporary folders and `.part`
files stay behind. Raising an exception from the handler is not safe either:
the signal often lands while Paddle's C++ runs (tracing, an operator), which
turns the exception into a SystemError or crashes later (SIGSEGV seen here).
So the handler does the clean-up itself and exits: whoever makes a temporary
file or a child process registers it for the time it exists (`temporary`,
`child_process`), and `interrupts_exit` removes, stops and reports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

HANDLED = (signal.SIGINT, signal.SIGTERM)

_temporary: dict[Path, None] = {}  # files and folders to remove on an interrupt (insertion-ordered)
_children: dict[subprocess.Popen, None] = {}  # child processes to stop on an interrupt
_stoppers: dict[Callable[[], None], None] = {}  # services to stop on an interrupt (an embedded Ray)
_written: list[Path] = []  # results put in place so far: an interrupt must not say "nothing written" after them
_held: list[int] | None = None  # inside `signals_deferred` (main thread): the signals that came, handled at its end


@contextlib.contextmanager
def _registered(registry: dict, item: object) -> Iterator[None]:
    registry[item] = None
    try:
        yield
    finally:
        registry.pop(item, None)


@contextlib.contextmanager
def temporary(path: str | Path) -> Iterator[Path]:
    """Within the block, `path` (a temporary file or folder) is removed if the run is interrupted."""
    path = Path(path)
    with _registered(_temporary, path):
        yield path


@contextlib.contextmanager
def child_process(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Within the block, `process` is killed if the run is interrupted."""
    with _registered(_children, process):
        yield process


@contextlib.contextmanager
def temporary_folder(prefix: str) -> Iterator[Path]:
    """A new temporary folder, removed on leaving the block, and by an interrupt until it is gone.

    Removing it inside the registration matters: `TemporaryDirectory` followed by `temporary` unregisters the
    folder first, so an interrupt during the removal would leave the rest of it behind.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    with _registered(_temporary, path):
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # the block's own error is the one to report
            raise
        shutil.rmtree(path)  # a folder that cannot be removed is an error, as with TemporaryDirectory


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for a few steps that must not be cut in two (renames, and noting them).

    The mask holds them for the main thread. Another thread may still take the signal, and then Python runs the
    handler in the main thread all the same. So `interrupts_exit`'s handler also holds what comes in here, and
    acts on it when the block ends.
    """
    global _held
    if threading.current_thread() is not threading.main_thread() or _held is not None:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(HANDLED))
    _held = []
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # one held by the mask arrives here, into _held
        held, _held = _held, None
        handler = signal.getsignal(held[0]) if held else None
        if callable(handler):
            handler(held[0], None)


def note_written(path: Path) -> None:
    """Record that `path` was put in place; call it inside `signals_deferred` with the rename itself."""
    _written.append(path)


def written() -> list[Path]:
    """The results put in place so far in this process (for the line an interrupt prints)."""
    return list(_written)


def stopped_on_interrupt(stop: Callable[[], None]) -> contextlib.AbstractContextManager[None]:
    """Within the block, `stop()` runs if the run is interrupted (before the temporary files go)."""
    return _registered(_stoppers, stop)


def _clean_up() -> None:
    for stop in reversed(list(_stoppers)):
        with contextlib.suppress(Exception):
            stop()
    for process in list(_children):
        with contextlib.suppress(OSError):
            process.kill()
            process.wait(timeout=10)
    for path in reversed(list(_temporary)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def interrupts_exit(kept: Callable[[], str]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM clean up, print `interrupted by SIG...: <kept()>` and exit 128 + N.

    `kept()` says what the run leaves behind at that moment. Install it in the main thread of a command-line
    entry point only: the process ends in the handler (`os._exit`, no unwinding through Paddle's C++).
    """
    import paddle  # noqa: F401  (Paddle installs its aborting SIGTERM handler at import: ours must come after)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in HANDLED}

    def _stop(signum: int, frame: object) -> None:
        if _held is not None:  # inside `signals_deferred`: acted on at its end
            _held.append(signum)
            return
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        _clean_up()
        try:
            message = kept()
        except Exception as exc:  # the line must come out whatever the callback does
            message = f"(what was kept is unknown: {exc})"
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            # "\r" ends a progress bar's line on a pipe; on a terminal the bar is erased too.
            sys.stderr.write("\r\x1b[K" if sys.stderr.isatty() else "\r")
            sys.stderr.write(f"interrupted by {signal.Signals(signum).name}: {message}\n")
            sys.stderr.flush()
        os._exit(128 + signum)  # the shell's convention for a process ended by a signal

    for sig in HANDLED:
        signal.signal(sig, _stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
