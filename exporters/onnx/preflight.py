"""What an export needs, checked before any work: the optional packages its options use, and memory.

Memory is estimated from the preset's weight bytes with factors measured on this kit's exports (the peak
RSS of the exporter's process tree: `python -m validation export-memory`, docs/export-memory.md), and the
run's own peak is recorded in the file's metadata (`lvvit.export_memory`) and printed.
"""

from __future__ import annotations

import importlib.util

from lvvit.common.cpuinfo import cpuinfo_path, has_native_bf16
from lvvit.common.install import install_command
from lvvit.common.memory import MemoryBudgetError, PeakSampler, format_size
from lvvit.macs import count_weights
from lvvit.presets import Preset

from ..errors import ExportError
from .fast_path import FastPath

MEMORY_KEY = "lvvit.export_memory"
GIB = 1024**3
# Peak tree RSS <= FACTOR x weight bytes + BASE, the goal the exports meet (measured on this kit's exports,
# docs/export-memory.md: lvvit_s 806 MiB against 1.29 GiB; the fused graph 1.03 GiB). BASE covers Python with
# Paddle, ONNX and ONNX Runtime imported and the converter child; the factor, the weights held by Paddle and
# then by ONNX Runtime's session (with its pre-packed copies) during verification.
FACTOR = 3.0
BASE = 1 * GIB
# int8 is not estimated: NNCF's calibration holds activations, which grow with the images, tokens and width
# rather than with the weights (lvvit_s: 3.30 GiB with 32 images, 34x its weights).
INT8_MEASURED = "3.30 GiB for lvvit_s calibrated on 32 images"


def weight_bytes(spec: Preset) -> int:
    """float32 bytes of the preset's state dict at its resolution."""
    return 4 * count_weights(spec.arch, spec.resolution)


def estimated_peak(spec: Preset) -> int:
    return int(FACTOR * weight_bytes(spec) + BASE)


def check_memory_budget(spec: Preset, fast: FastPath, max_memory: int | None) -> int | None:
    """The estimated peak (None for int8); raises `MemoryBudgetError` when it is over `max_memory` (bytes), or
    when a budget is asked of an int8 export, which is not estimated: before any work either way."""
    if fast.quantize:
        if max_memory is not None:
            raise MemoryBudgetError(
                f"--max-memory is not estimated for --quantize int8: NNCF's calibration memory grows with the "
                f"images and the resolution, not with the weights (measured: {INT8_MEASURED}); nothing was "
                f"started. Drop --max-memory, or calibrate on fewer images (--calibration-count)"
            )
        return None
    need = estimated_peak(spec)
    if max_memory is not None and need > max_memory:
        raise MemoryBudgetError(
            f"--max-memory {format_size(max_memory)} is below what exporting {spec.name} at {spec.resolution}px "
            f"needs: about {format_size(need)} at its peak ({FACTOR:g} x {format_size(weight_bytes(spec))} of "
            f"weights + {format_size(BASE)}); nothing was started. Give it at least {format_size(need)}, or "
            f"export on a machine with more memory"
        )
    return need


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


def check_requirements(fast: FastPath, verify: bool) -> None:
    """Every optional package the options use is importable, and the CPU has what they ask for; else `ExportError`
    naming the install command or the flag, before anything is started."""
    needs: dict[str, tuple[str, str]] = {}  # module -> (extra, what needs it and what else would do)
    if verify:
        needs["onnxruntime"] = ("cpu", "the verification; or --no-verify")
    if fast.graph == "ort-fused":
        needs["onnxruntime"] = ("cpu", "--optimize / --precision fp16, ONNX Runtime's fusions")
    if fast.quantize == "int8":
        needs["onnxruntime"] = ("cpu", "--quantize int8, its calibration and agreement gate")
        if fast.quantizer == "nncf":
            needs["nncf"] = ("int8", "--quantize int8 --quantizer nncf; or use --quantizer ort")
        if fast.accuracy_control and fast.control_runtime == "openvino":
            needs["openvino"] = ("openvino", "--control-runtime openvino; or --control-runtime ort")
    missing = [(module, extra, why) for module, (extra, why) in needs.items() if _missing(module)]
    if missing:
        lines = [f"{module}: {install_command(extra)}  ({why})" for module, extra, why in missing]
        raise ExportError("missing packages, nothing was started:\n  " + "\n  ".join(lines))
    if fast.control_precision == "bf16" and not has_native_bf16():
        raise ExportError(
            f"--control-precision bf16 needs a CPU with native bf16 (avx512_bf16 or amx_bf16), and {cpuinfo_path()} "
            "lists neither (OpenVINO would refuse bf16 here); nothing was started. Use --control-precision f32, or "
            "export on a CPU with bf16"
        )


def memory_record(memory: PeakSampler, weights: int, estimate: int | None) -> dict:
    """The run's peak tree RSS (bytes, per phase), its weight bytes and the pre-run estimate (metadata, JSON)."""
    summary = memory.summary()
    return {
        "peak_tree_rss": summary["peak"],
        "phases": {key.removeprefix("peak."): value for key, value in summary.items() if key != "peak"},
        "seconds": {phase: round(seconds, 2) for phase, seconds in memory.seconds.items()},
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
