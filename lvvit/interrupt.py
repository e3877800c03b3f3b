"""SIGINT and SIGTERM as an exception, so that `finally` blocks remove temporary files and runs exit cleanly.

Python turns SIGINT into KeyboardInterrupt but leaves SIGTERM to kill the
process at once, and Paddle replaces the SIGTERM handler at import with one
that prints a C++ "FatalError" and aborts: either way temporary folders and
`.part` files stay behind. `interrupts_raise` installs one handler for both,
after importing Paddle so that Paddle's does not win.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


_received: list[int] = []  # the signals caught, latest last


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `kept` says what it leaves behind (set by whoever knows).

    The signal is looked up rather than passed: Paddle's dy2static re-creates an exception
    raised while it traces from its message alone, so the constructor takes any arguments.
    """

    kept = "nothing new was written"

    @property
    def signum(self) -> int:
        return _received[-1] if _received else signal.SIGINT

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for a process ended by a signal

    def line(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}: {self.kept}"


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` in the main thread (once; later ones are ignored).

    Ignoring a second signal lets the clean-up (removing temporary files) finish. Any exception that leaves
    the block after a signal came is turned into `Interrupted`: the signal is what broke the run.
    """
    import paddle  # noqa: F401  (Paddle installs its aborting SIGTERM handler at import: ours must come after)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in HANDLED}

    def _raise(signum: int, frame: object) -> None:
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_IGN)
        _received.append(signum)
        raise Interrupted(signal.Signals(signum).name)

    for sig in HANDLED:
        signal.signal(sig, _raise)
    caught = len(_received)
    try:
        yield
    except Interrupted:
        raise
    except BaseException as exc:
        # Raised inside a C++ call, our exception comes back as another (Paddle's SystemError, for one).
        if len(_received) > caught:
            raise Interrupted(signal.Signals(_received[-1]).name) from exc
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
