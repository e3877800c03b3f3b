"""What an export needs, checked before any work: the optional packages its options use, and memory.

Memory is estimated from the preset's weight bytes with factors measured on this kit's exports (the peak
RSS of the exporter's process tree: `python -m validation.export_memory`, docs/export-memory.md), and the
run's own peak is recorded in the file's metadata (`lvvit.export_memory`) and printed.
"""

from __future__ import annotations

import importlib.util

from lvvit.install import install_command
from lvvit.macs import count_weights
from lvvit.memory import MemoryBudgetError, PeakSampler, format_size
from lvvit.presets import Preset

from ..errors import ExportError
from .fast_path import FastPath

MEMORY_KEY = "lvvit.export_memory"
GIB = 1024**3
# Peak tree RSS <= FACTOR x weight bytes + BASE (measured; docs/export-memory.md). BASE covers Python with
# Paddle, ONNX and ONNX Runtime imported and the converter child; the factor covers ONNX Runtime's session
# (its weights, pre-packed copies) during verification. The fast paths load the whole graph into memory
# for their rewrites (and NNCF's calibration runs), hence their own factor.
FACTORS = {"exported": 3.0, "fast": 6.0}
BASE = 1 * GIB


def weight_bytes(spec: Preset) -> int:
    """float32 bytes of the preset's state dict at its resolution."""
    return 4 * count_weights(spec.arch, spec.resolution)


def estimated_peak(spec: Preset, fast: FastPath) -> int:
    return int(_factor(fast) * weight_bytes(spec) + BASE)


def _factor(fast: FastPath) -> float:
    return FACTORS["fast" if fast.rewrite else "exported"]


def check_memory_budget(spec: Preset, fast: FastPath, max_memory: int | None) -> int:
    """The estimated peak; raises `MemoryBudgetError` when it is over `max_memory` (bytes), before any work."""
    need = estimated_peak(spec, fast)
    if max_memory is not None and need > max_memory:
        kind = "fp32" if not fast.rewrite else "fast-path"
        raise MemoryBudgetError(
            f"--max-memory {format_size(max_memory)} is below what exporting {spec.name} at {spec.resolution}px "
            f"({kind}) needs: about {format_size(need)} at its peak ({_factor(fast):g} x "
            f"{format_size(weight_bytes(spec))} of weights + {format_size(BASE)}); nothing was started. "
            f"Give it at least {format_size(need)}, or export on a machine with more memory"
        )
    return need


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


def check_dependencies(fast: FastPath, verify: bool) -> None:
    """Every optional package the options use is importable; else `ExportError` naming the install command."""
    needs: dict[str, tuple[str, str]] = {}  # module -> (extra, what needs it and what else would do)
    if verify:
        needs["onnxruntime"] = ("cpu", "the verification; or --no-verify")
    if fast.graph == "ort-fused":
        needs["onnxruntime"] = ("cpu", "--optimize / --precision fp16, ONNX Runtime's fusions")
    if fast.quantize == "int8":
        needs["onnxruntime"] = ("cpu", "--quantize int8, its calibration and agreement gate")
        if fast.quantizer == "nncf":
            needs["nncf"] = ("int8", "--quantize int8 --quantizer nncf; or use --quantizer ort")
    missing = [(module, extra, why) for module, (extra, why) in needs.items() if _missing(module)]
    if missing:
        lines = [f"{module}: {install_command(extra)}  ({why})" for module, extra, why in missing]
        raise ExportError("missing packages, nothing was started:\n  " + "\n  ".join(lines))


def memory_record(memory: PeakSampler, weights: int, estimate: int) -> dict:
    """The run's peak tree RSS (bytes, per phase), its weight bytes and the pre-run estimate (metadata, JSON)."""
    summary = memory.summary()
    return {
        "peak_tree_rss": summary["peak"],
        "phases": {key.removeprefix("peak."): value for key, value in summary.items() if key != "peak"},
        "weight_bytes": weights,
        "estimate": estimate,
        "sampled_every_s": memory.period_s,
    }


def describe_memory(record: dict) -> str:
    phases = ", ".join(f"{name} {format_size(rss)}" for name, rss in record["phases"].items() if rss)
    peak, weights = record["peak_tree_rss"], record["weight_bytes"]
    return (
        f"peak memory (RSS of the process tree): {format_size(peak)}, {peak / weights:.1f}x the "
        f"{format_size(weights)} of weights (per phase: {phases})"
    )
