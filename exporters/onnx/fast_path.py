"""The fast export paths: ONNX Runtime's fused graph, fp16 for GPUs, static int8; and their gates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lvvit.common.progress import Log
from lvvit.presets import PreprocessConfig, Preset
from runtimes.registry import precision_note

from ..errors import ExportError
from .accuracy_control import CONTROL_PRECISIONS, CONTROL_RUNTIMES
from .int8_target import INT8_TARGETS
from .quantize import QUANTIZERS
from .verify import Tolerance

if TYPE_CHECKING:
    import numpy as np

    from .quantize import CalibrationSet

FP16_ATOL = 5e-2  # half precision carries ~3 significant digits
INT8_MIN_AGREEMENT = 0.99  # int8 is gated on top-1 agreement with Paddle fp32 on real images
PRECISIONS = ("fp32", "fp16")
CONTROL_STAGES = ("fine", "whole")


@dataclass(frozen=True)
class FastPath:
    """The export options of the fast paths (all off: the portable fp32 graph)."""

    optimize: bool = False  # ONNX Runtime's fused graph (contrib ops; ONNX Runtime only)
    precision: str = "fp32"  # or "fp16" (for GPUs; implies the fused graph)
    quantize: str | None = None  # or "int8": static QDQ, needs `calibration`
    calibration: Path | None = None  # folder of real images
    quantizer: str = "nncf"  # or "ort" (see exporters.onnx.quantize)
    calibration_count: int = 32
    min_int8_agreement: float = INT8_MIN_AGREEMENT
    accuracy_control: bool = False  # int8: keep the most sensitive stages in float until the agreement gate is met
    max_float_stages: int | None = None  # accuracy control: stop after this many stages kept in float (None: all)
    fold_smooth_quant: bool = True  # nncf: fold SmoothQuant's Multiply nodes into the LayerNorm before them (exact)
    progress: bool = True  # int8: progress bars on stderr over calibration and accuracy control's runs
    int8_target: str = "auto"  # nncf: which CPU's int8 kernels the file is for (see int8_target)
    control_stages: str = "fine"  # accuracy control: "fine" (input, stem convolutions, block halves) or "whole"
    control_runtime: str = "ort"  # accuracy control: where the loop measures agreement ("ort" or "openvino")
    control_precision: str = "f32"  # accuracy control on openvino: the math of the float parts ("f32" or "bf16")

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.quantizer not in QUANTIZERS:
            raise ExportError(f"--quantizer must be one of {', '.join(QUANTIZERS)}, got {self.quantizer!r}")
        if self.quantize not in (None, "int8"):
            raise ExportError(f"--quantize supports int8 only, got {self.quantize!r}")
        if self.quantize and self.calibration is None:
            raise ExportError("--quantize int8 needs --images DIR: a folder of real images to calibrate on")
        if self.calibration_count < 1:
            raise ExportError(f"--calibration-count must be at least 1, got {self.calibration_count}")
        if not 0.0 <= self.min_int8_agreement <= 1.0:  # NaN fails this too
            raise ExportError(f"--min-int8-agreement must be within [0, 1], got {self.min_int8_agreement}")
        if self.accuracy_control and self.quantize != "int8":
            raise ExportError("--accuracy-control applies to --quantize int8")
        if self.max_float_stages is not None and (not self.accuracy_control or self.max_float_stages < 1):
            raise ExportError(f"--max-float-stages applies to --accuracy-control and must be at least 1, "
                              f"got {self.max_float_stages}")  # fmt: skip
        if not self.fold_smooth_quant and (self.quantize != "int8" or self.quantizer != "nncf"):
            raise ExportError("--keep-smooth-quant-muls applies to --quantize int8 with --quantizer nncf")
        if self.control_stages not in CONTROL_STAGES:
            raise ExportError(
                f"--control-stages must be one of {', '.join(CONTROL_STAGES)}, got {self.control_stages!r}"
            )
        if self.control_runtime not in CONTROL_RUNTIMES:
            runtimes = ", ".join(CONTROL_RUNTIMES)
            raise ExportError(f"--control-runtime must be one of {runtimes}, got {self.control_runtime!r}")
        if (self.control_stages, self.control_runtime) != ("fine", "ort") and not self.accuracy_control:
            raise ExportError("--control-stages and --control-runtime apply to --accuracy-control")
        if self.control_precision not in CONTROL_PRECISIONS:
            precisions = ", ".join(CONTROL_PRECISIONS)
            raise ExportError(f"--control-precision must be one of {precisions}, got {self.control_precision!r}")
        if self.control_precision != "f32" and (not self.accuracy_control or self.control_runtime != "openvino"):
            raise ExportError("--control-precision applies to --accuracy-control with --control-runtime openvino")
        if self.int8_target not in INT8_TARGETS:
            raise ExportError(f"--int8-target must be one of {', '.join(INT8_TARGETS)}, got {self.int8_target!r}")
        if self.int8_target != "auto" and self.quantize != "int8":
            raise ExportError("--int8-target applies to --quantize int8")
        if self.quantize and (self.optimize or self.precision != "fp32"):
            raise ExportError("--quantize int8 applies to the portable fp32 graph; drop --optimize / --precision")

    @property
    def rewrite(self) -> bool:
        return self.optimize or self.precision != "fp32" or self.quantize is not None

    @property
    def graph(self) -> str:
        return "ort-fused" if self.optimize or self.precision == "fp16" else "exported"

    @property
    def tag(self) -> str:
        """File-name suffix: '', '_ort' (fused), '_fp16', '_int8' (nncf), '_int8_ac' (nncf with accuracy control),
        '_int8_ac_whole' (its whole stages), '_int8_unfolded' (nncf, SmoothQuant's Multiply nodes left), each with
        '_vnni' / '_avx2' for an explicit --int8-target, '_int8_ortq' (ONNX Runtime's quantizer; '_int8_ortq_ac',
        '_int8_ortq_ac_whole' with accuracy control); '_bf16' after '_ac' when the loop measured OpenVINO at bf16."""
        if self.quantize:
            ac = ("_ac_whole" if self.control_stages == "whole" else "_ac") if self.accuracy_control else ""
            ac += "_bf16" if self.control_precision == "bf16" else ""
            if self.quantizer == "nncf":
                base = "_int8" + (ac or ("" if self.fold_smooth_quant else "_unfolded"))
            else:
                base = "_int8_ortq" + ac
            return base if self.int8_target == "auto" else f"{base}_{self.int8_target}"
        return "_fp16" if self.precision == "fp16" else "_ort" if self.optimize else ""


def calibration_images(fast: FastPath, config: PreprocessConfig, log: Log) -> tuple[CalibrationSet, np.ndarray]:
    """int8: the calibration folder's images (found and listed) and the gate's images, preprocessed."""
    from lvvit.preprocess import preprocess_batch

    from .quantize import find_calibration_images

    calibration = find_calibration_images(fast.calibration, config, fast.calibration_count)
    for path, why in calibration.skipped:
        log(f"      skipped calibration file {path}: {why}")
    log(
        f"      calibrating int8 ({fast.quantizer}) on {len(calibration.used)} images from {calibration.folder}; "
        f"the gate also sees {calibration.held_out} held-out images"
    )
    if fast.accuracy_control:
        calibration.require_held_out()
    return calibration, preprocess_batch(calibration.evaluation, config)


def apply_fast_path(
    proto,
    spec: Preset,
    fast: FastPath,
    log: Log,
    calibration: CalibrationSet | None = None,
    images: np.ndarray | None = None,
    reference_top1: np.ndarray | None = None,
):
    """Fuse / fp16 / int8 as asked; returns the new proto and the stages accuracy control kept in float (empty
    otherwise). int8 takes `calibration_images`' result and Paddle fp32's classes for the images."""
    from .optimize import convert_to_fp16, expand_slow_cpu_fusions, fuse_for_onnxruntime

    arch = spec.arch
    float_stages: tuple[str, ...] = ()
    if fast.graph == "ort-fused":
        blocks = len(arch.order) if arch.order else arch.depth
        proto, report = fuse_for_onnxruntime(proto, arch.num_heads, arch.embed_dim, blocks)
        log("      " + report.line())
        if fast.precision == "fp32":  # the CPU graph; fp16 is for GPUs, whose fused kernels are fast
            proto, expanded = expand_slow_cpu_fusions(proto)
            log(
                f"      expanded {expanded['SkipLayerNormalization']} SkipLayerNormalization and "
                f"{expanded['BiasGelu']} BiasGelu back to Add/LayerNormalization/Gelu: faster on ONNX Runtime's CPU"
            )
    if fast.precision == "fp16":
        proto = convert_to_fp16(proto)
        log("      converted to fp16 (LayerNorm, Softmax and the token max kept in fp32)")
    if fast.quantize == "int8":
        if calibration is None or images is None or (fast.accuracy_control and reference_top1 is None):
            raise ExportError("int8 needs the calibration images (and, for accuracy control, Paddle's classes)")
        proto, float_stages = _quantize(proto, spec, fast, log, calibration, images, reference_top1)
    return proto, float_stages


def _quantize(
    proto, spec: Preset, fast: FastPath, log: Log, calibration: CalibrationSet, images: np.ndarray, reference_top1
) -> tuple[object, tuple[str, ...]]:
    """int8 for the CPU at hand (`--int8-target`), plain or under accuracy control; the stages kept in float."""
    from .int8_target import bf16_float_parts_hint, resolve_int8_target, slower_than_f32_warning
    from .quantize import quantize_int8, quantize_int8_accuracy_controlled

    target, why = resolve_int8_target(fast.int8_target)
    if fast.quantizer == "nncf":
        linear = "every linear layer" if target == "vnni" else "the convolutions only (linear layers in f32)"
        log(f"      int8 for {target}: {linear} ({why})")
    else:
        weights = "8-bit weights" if target == "vnni" else "7-bit weights (no vpmaddubsw saturation)"
        log(f"      int8 for {target}: the linear layers, {weights} ({why})")
    warning = slower_than_f32_warning(fast.quantizer, target)
    if warning:
        log(f"      {warning}")
    hint = bf16_float_parts_hint(fast.quantizer, fast.control_precision)
    if hint:
        log(f"      {hint}")
    indent = lambda m: log("      " + m)  # noqa: E731
    if not fast.accuracy_control:
        proto = quantize_int8(proto, calibration, spec.preprocess, fast.quantizer, indent,
                              fast.fold_smooth_quant, fast.progress, target)  # fmt: skip
        return proto, ()
    log(
        f"      accuracy control: top-1 agreement >= {fast.min_int8_agreement:.1%} on {len(images)} images "
        f"({calibration.held_out} of them held out from calibration), measured on {fast.control_runtime}"
        f"{precision_note(fast.control_runtime, fast.control_precision)}; {fast.control_stages} stages"
    )
    return quantize_int8_accuracy_controlled(
        proto, calibration, spec.preprocess, images, reference_top1, fast.min_int8_agreement,
        fast.max_float_stages, indent, fast.progress, target, fast.control_stages == "fine",
        fast.control_runtime, fast.quantizer, fast.control_precision,
    )  # fmt: skip


def tolerance_for(fast: FastPath, atol: float) -> Tolerance:
    """The verification gate of a fast path: int8 on top-1 agreement only, fp16 looser, fp32 `atol`."""
    if fast.quantize == "int8":
        return Tolerance(atol=None, min_top1=fast.min_int8_agreement)
    if fast.precision == "fp16":
        return Tolerance(atol=FP16_ATOL)
    return Tolerance(atol=atol)
