"""Run a snippet of kit code in a child process under a memory and a time limit.

The hostile-input tests use it to prove that a reader fails cleanly in bounded
resources: the child's address space is capped with RLIMIT_AS, so an
allocation that a crafted file provokes raises MemoryError (or the kit's own
error) instead of taking the machine down, and a hang becomes a timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Paddle alone maps about 2.5 GiB of address space at import; 6 GiB leaves room
# for a model while still catching the multi-gigabyte allocations of crafted files.
DEFAULT_MEMORY_LIMIT = 6 << 30
DEFAULT_TIMEOUT_S = 60.0

_PRELUDE = """\
import json, resource, sys, traceback
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
sys.path.insert(0, {root!r})
def _report(kind, error=None):
    out = {{"outcome": kind}}
    if error is not None:
        out["type"] = type(error).__name__
        out["mro"] = [c.__name__ for c in type(error).__mro__]
        out["message"] = str(error)[:4000]
    print("\\n@@BOUNDED@@" + json.dumps(out))
try:
{body}
except BaseException as error:  # the point is to classify whatever escapes
    _report("raised", error)
else:
    _report("returned")
"""


@dataclass(frozen=True)
class BoundedResult:
    """What the child did: `outcome` is "returned", "raised", "timeout" or "crashed"."""

    outcome: str
    error_type: str | None
    error_mro: tuple[str, ...]
    message: str
    seconds: float
    returncode: int | None
    output: str

    def raised(self, error_class: type[BaseException]) -> bool:
        return self.outcome == "raised" and error_class.__name__ in self.error_mro


def run_bounded(
    code: str,
    *,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    cwd: str | Path | None = None,
) -> BoundedResult:
    """Run `code` (a Python snippet) in a child under RLIMIT_AS=`memory_limit` and a wall-clock `timeout_s`."""
    body = textwrap.indent(textwrap.dedent(code).strip() or "pass", "    ")
    script = _PRELUDE.format(limit=int(memory_limit), root=str(ROOT), body=body)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as expired:
        out = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return BoundedResult("timeout", None, (), "", time.perf_counter() - start, None, out)
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    marker = proc.stdout.rfind("@@BOUNDED@@")
    if marker < 0:
        return BoundedResult("crashed", None, (), "", seconds, proc.returncode, output)
    report = json.loads(proc.stdout[marker + len("@@BOUNDED@@") :].splitlines()[0])
    return BoundedResult(
        report["outcome"],
        report.get("type"),
        tuple(report.get("mro", ())),
        report.get("message", ""),
        seconds,
        proc.returncode,
        output,
    )
