"""The CPU the kit runs on, as /proc/cpuinfo describes it: the one place that reads it.

The environment variable LVVIT_CPUINFO names another file to read instead: the kit's one override of its CPU
detection, through which the tests check every CPU kind's branch (the bench's floors, the bf16 rows, the int8
target of an export) from stored cpuinfo files on any machine. Reports record which file was read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lvvit.errors import CpuInfoError

CPUINFO_ENV = "LVVIT_CPUINFO"
PROC_CPUINFO = Path("/proc/cpuinfo")
MAX_CPUINFO_BYTES = 16 << 20  # a 512-thread machine's cpuinfo is under 1 MiB


def cpuinfo_path() -> Path:
    """/proc/cpuinfo, or the file LVVIT_CPUINFO names."""
    override = os.environ.get(CPUINFO_ENV)
    return Path(override) if override else PROC_CPUINFO


def read_cpuinfo() -> tuple[str, Path]:
    """The cpuinfo text and its file; empty where /proc/cpuinfo does not exist (not Linux). A file named by
    LVVIT_CPUINFO that is missing, unreadable or too large is a `CpuInfoError`."""
    path = cpuinfo_path()
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CPUINFO_BYTES + 1)
    except FileNotFoundError:
        if path == PROC_CPUINFO:
            return "", path
        raise CpuInfoError(f"{CPUINFO_ENV}={path}: no such file") from None
    except OSError as exc:
        raise CpuInfoError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_CPUINFO_BYTES:
        raise CpuInfoError(f"{path}: more than {MAX_CPUINFO_BYTES >> 20} MiB, not a cpuinfo file")
    return data.decode("utf-8", errors="replace"), path


def cpuinfo_field(text: str, name: str) -> str | None:
    """The first value of field `name` in cpuinfo `text` (the first processor's)."""
    match = re.search(rf"^{name}\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else None


def cpu_flags() -> set[str]:
    """The first processor's flags (empty when the file lists none)."""
    flags = cpuinfo_field(read_cpuinfo()[0], "flags")
    return set(flags.split()) if flags else set()


def has_native_bf16(flags: set[str] | None = None) -> bool:
    """AVX512-BF16 or AMX-BF16 (of `flags`, or of the CPU at hand): without them OpenVINO emulates bf16, slower than
    f32, or refuses it."""
    return bool({"avx512_bf16", "amx_bf16"} & (cpu_flags() if flags is None else flags))
