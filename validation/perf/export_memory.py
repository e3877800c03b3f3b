"""`python -m validation export-memory`: the exporter's peak memory and time per preset, against a baseline.

Each preset is exported by `python -m exporters.onnx` in a child process, verification included, while
the peak RSS of the child's process tree (the exporter and its converter child) is sampled from outside
every 50 ms. With `--baseline DIR` (another checkout of the kit, e.g. `git worktree add /tmp/old 6cd0fd8`)
each preset is exported by that checkout too, right before this one, with its own PYTHONPATH, so both see
the same machine. Prints a Markdown table; `--json` keeps the numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from exporters.onnx.preflight import BASE, FACTOR, MEMORY_KEY, weight_bytes
from lvvit.common.memory import PeakSampler, format_size
from lvvit.presets import get_preset

ROOT = Path(__file__).resolve().parents[2]  # the kit's checkout


@dataclass(frozen=True)
class Run:
    checkout: str
    preset: str
    seconds: float
    peak: int
    returncode: int
    phases: dict[str, int]  # the exporter's own record, per phase (`lvvit.export_memory`; empty before it existed)


def export_once(checkout: Path, preset: str, work: Path, timeout: float) -> Run:
    """Export `preset` with the exporter of `checkout` (its own PYTHONPATH); the file is deleted after."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    with tempfile.TemporaryDirectory(prefix="export-memory-", dir=work) as out:
        started = time.perf_counter()
        process = psutil.Popen(
            [sys.executable, "-m", "exporters.onnx", "--preset", preset, "--output", f"{out}/"],
            cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        with PeakSampler(pid=process.pid) as memory:
            try:
                _, err = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                for child in process.children(recursive=True):
                    child.kill()
                process.kill()
                _, err = process.communicate()
        seconds = time.perf_counter() - started
        files = sorted(Path(out).glob("*.onnx"))
        phases = _recorded_phases(files[0]) if files else {}
    if process.returncode != 0:
        sys.stderr.write(f"{checkout}: {preset} failed ({process.returncode}):\n{err.decode()[-2000:]}\n")
    return Run(str(checkout), preset, seconds, memory.peak, process.returncode, phases)


def _recorded_phases(path: Path) -> dict[str, int]:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[MEMORY_KEY])["phases"] if MEMORY_KEY in props else {}


def goal(preset: str) -> int:
    """The goal, which `--max-memory` also estimates with: 3x the weight bytes + 1 GiB."""
    return int(FACTOR * weight_bytes(get_preset(preset)) + BASE)


def table(new: list[Run], old: dict[str, Run]) -> str:
    head = "| preset | weight bytes | peak tree RSS | ratio | goal (3x + 1 GiB) | export time |"
    rule = "|---|---|---|---|---|---|"
    if old:
        head += " before: peak | before: time | time after / before |"
        rule += "---|---|---|"
    lines = [head, rule]
    for run in new:
        weights = weight_bytes(get_preset(run.preset))
        failed = "" if run.returncode == 0 else f" (exit {run.returncode})"
        line = (
            f"| {run.preset} | {format_size(weights)} | {format_size(run.peak)}{failed} | {run.peak / weights:.1f}x "
            f"| {format_size(goal(run.preset))} {'met' if run.peak <= goal(run.preset) else 'MISSED'} "
            f"| {run.seconds:.0f} s |"
        )
        if old:
            before = old[run.preset]
            failed = "" if before.returncode == 0 else f" (exit {before.returncode})"
            line += (
                f" {format_size(before.peak)}{failed} | {before.seconds:.0f} s | {run.seconds / before.seconds:.2f} |"
            )
        lines.append(line)
    return "\n".join(lines)


def measure(
    presets: list[str], baseline: Path | None, work: Path, timeout: float, json_file: Path | None
) -> tuple[list[Run], dict[str, Run]]:
    """Export each preset with this checkout (and before it, with `baseline`'s), measuring each; `json_file` is
    rewritten after each preset, so that a long run that is stopped keeps what it measured."""
    for name in presets:
        get_preset(name)  # an unknown name fails here, listing the valid ones
    work.mkdir(parents=True, exist_ok=True)
    new: list[Run] = []
    old: dict[str, Run] = {}
    for name in presets:
        if baseline is not None:
            old[name] = export_once(baseline.resolve(), name, work, timeout)
            print(f"{name} before: {format_size(old[name].peak)}, {old[name].seconds:.0f} s", file=sys.stderr)
        new.append(export_once(ROOT, name, work, timeout))
        print(f"{name}: {format_size(new[-1].peak)}, {new[-1].seconds:.0f} s", file=sys.stderr, flush=True)
        if json_file is not None:
            record = {"new": [asdict(r) for r in new], "baseline": {k: asdict(r) for k, r in old.items()},
                      "factor": FACTOR, "base": BASE}  # fmt: skip
            json_file.write_text(json.dumps(record, indent=2))
    return new, old
