"""Memory of a run: the peak RSS of a process tree (the process and its children), sampled; memory sizes as text.

RSS is summed over the tree, as `ps` would show it: pages shared between a parent and its child (libraries)
count twice, which errs on the side of caution. A peak shorter than the sampling period (50 ms) can be missed,
and the tree is listed every 0.5 s (a listing scans every process of the system), so a child that lives less
than that may be too; the peaks of an export (a model built, a converter child, a session opened) last seconds.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

import psutil

from lvvit.errors import LvvitError

PERIOD_S = 0.05  # sampling period: paddle2onnx's peaks last seconds, not milliseconds
LIST_EVERY = 10  # samples between two listings of the tree (a listing scans all processes: 0.5 s, not 50 ms)
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip


class MemoryBudgetError(LvvitError, ValueError):
    """A memory budget that is unreadable, or smaller than what the run needs."""


def parse_size(text: str) -> int:
    """Bytes of `text`: a number with an optional unit, `4GiB`, `3.5 GB`, `800MiB`, `1e9` (decimal and binary)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise MemoryBudgetError(f"unreadable memory size {text!r}: expected a number and a unit such as 4GiB, "
                                f"3.5GB or 800MiB")  # fmt: skip
    size = float(match.group(1)) * _UNITS[unit]
    if not 0 < size < 2**63:
        raise MemoryBudgetError(f"memory size {text!r} must be positive")
    return int(size)


def format_size(size: float) -> str:
    """`2.81 GiB`, `602.0 MiB`: binary units, as the budget flag reads them."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(size) >= scale:
            return f"{size / scale:.2f} {unit}" if unit == "GiB" else f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def tree_members(process: psutil.Process) -> list[psutil.Process]:
    """`process` and its descendants (psutil scans every process of the system for them: ~3 ms of CPU)."""
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return [process]


def tree_rss(process: psutil.Process, members: list[psutil.Process] | None = None) -> int:
    """Summed RSS of `process` and its descendants now, or of `members` as last listed (processes that ended
    count as 0)."""
    total = 0
    for member in tree_members(process) if members is None else members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


@dataclass
class PeakSampler:
    """Samples the tree RSS of `pid` (default: this process) in a thread; `phase(name)` starts a named phase.

    Use as a context manager. `peak` is the tree's peak over the whole run, `phases` the peak within each phase,
    `seconds` each closed phase's wall time.
    """

    pid: int | None = None
    period_s: float = PERIOD_S
    peak: int = 0
    phases: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase
    _phase: str = "start"
    _since: float = field(default_factory=time.perf_counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> PeakSampler:
        self._process = psutil.Process(self.pid)
        self._members = tree_members(self._process)
        self._samples = 0
        self.sample()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample(relist=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def sample(self, relist: bool = False) -> int:
        self._samples += 1
        if relist or self._samples % LIST_EVERY == 0:
            self._members = tree_members(self._process)
        rss = tree_rss(self._process, self._members)
        with self._lock:
            self.peak = max(self.peak, rss)
            self.phases[self._phase] = max(self.phases.get(self._phase, 0), rss)
        return rss

    def phase(self, name: str) -> None:
        """Close the current phase (one last sample) and start `name`."""
        self.sample(relist=True)
        now = time.perf_counter()
        with self._lock:
            self.seconds[self._phase] = self.seconds.get(self._phase, 0.0) + now - self._since
            self._phase, self._since = name, now
        self.sample()

    def summary(self) -> dict[str, int]:
        """Peak bytes: `peak` (the run) and `peak.<phase>` for each phase."""
        with self._lock:
            return {"peak": self.peak, **{f"peak.{name}": rss for name, rss in self.phases.items()}}
