"""Static int8 quantization to a QDQ ONNX graph, calibrated on the user's real images.

Two quantizers, chosen explicitly:
- `nncf` (default): OpenVINO's NNCF with its transformer scheme (SmoothQuant, fast bias
  correction, quantizers placed where OpenVINO and ONNX Runtime run int8 kernels).
- `ort`: ONNX Runtime's `quantize_static`, per-channel int8 weights, min/max activations.
Both write QDQ ONNX that ONNX Runtime and OpenVINO run.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from lvvit.errors import ImageError
from lvvit.interrupt import temporary
from lvvit.metadata import INPUT_NAME
from lvvit.preprocess import image_files, preprocess
from lvvit.presets import PreprocessConfig

from ..errors import ExportError

# For ONNX Runtime: the linear layers (MatMuls with a weight) are quantized, with float outputs so
# that each becomes one MatMulIntegerToFloat kernel. The attention products (q @ k^T, attn @ v: both
# operands activations) and the convolutional stem stay float: quantizing them measured slower on
# ONNX Runtime's CPU kernels and less accurate. Softmax, LayerNorm and GELU stay float as well.
QUANTIZED_OPS = ["MatMul"]


def activation_matmuls(proto: onnx.ModelProto) -> list[str]:
    """Names of MatMul nodes with no initializer input."""
    weights = {init.name for init in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)]


EVALUATION_LIMIT = 256  # images the int8 gate is measured on (calibration images included)


@dataclass(frozen=True)
class CalibrationSet:
    folder: Path
    used: list[Path]  # calibrates the activation ranges
    evaluation: list[Path]  # the gate's images: `used` plus the held-out rest of the folder
    skipped: list[tuple[Path, str]]  # unreadable files and why

    @property
    def held_out(self) -> int:
        return len(self.evaluation) - len(self.used)

    def batches(self, config: PreprocessConfig) -> Iterator[np.ndarray]:
        for path in self.used:
            yield preprocess(path, config)[None]


def find_calibration_images(folder: str | Path, config: PreprocessConfig, limit: int) -> CalibrationSet:
    """Readable images under `folder` (sorted, recursive): the first `limit` calibrate, up to
    `EVALUATION_LIMIT` evaluate; unreadable ones are listed, not fatal."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"--calibration {folder}: not a folder of images")
    candidates = image_files(folder)
    if limit < 1:
        raise ExportError(f"--calibration-count must be at least 1, got {limit}")
    readable: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in candidates:
        if len(readable) == max(limit, EVALUATION_LIMIT):
            break
        try:
            preprocess(path, config)
        except ImageError as exc:
            skipped.append((path, str(exc)))
            continue
        readable.append(path)
    if not readable:
        raise ExportError(f"--calibration {folder}: no readable images found ({len(skipped)} unreadable)")
    return CalibrationSet(folder, readable[:limit], readable, skipped)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed images."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self._batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:  # pragma: no cover - ONNX Runtime calls it only for some methods
        raise NotImplementedError


QUANTIZERS = ("nncf", "ort")


def quantize_int8(
    proto: onnx.ModelProto, calibration: CalibrationSet, config: PreprocessConfig, quantizer: str = "nncf"
) -> onnx.ModelProto:
    """The int8 QDQ graph of `proto`, calibrated on `calibration`'s images with `quantizer`."""
    if quantizer == "nncf":
        return _quantize_nncf(proto, calibration, config)
    if quantizer == "ort":
        return _quantize_ort(proto, calibration, config)
    raise ExportError(f"--quantizer must be one of {', '.join(QUANTIZERS)}, got {quantizer!r}")


def _quantize_nncf(proto: onnx.ModelProto, calibration: CalibrationSet, config: PreprocessConfig) -> onnx.ModelProto:
    try:
        import nncf
    except ImportError as exc:
        raise ExportError(
            f"--quantizer nncf needs NNCF: pip install 'lvvit-deploy[int8]' (or use --quantizer ort) ({exc})"
        ) from exc
    samples = list(calibration.batches(config))
    dataset = nncf.Dataset(samples, lambda batch: {INPUT_NAME: batch})
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.quantize(
                proto,
                dataset,
                model_type=nncf.ModelType.TRANSFORMER,
                # symmetric activations: as fast on VNNI and, measured on lvvit_s, closer to fp32 than MIXED
                preset=nncf.QuantizationPreset.PERFORMANCE,
                subset_size=len(samples),
            )
    except Exception as exc:  # NNCF raises a variety of errors from its backends
        raise ExportError(f"int8 quantization (nncf) failed: {type(exc).__name__}: {exc}") from exc


def _fold_every(images: int) -> int:
    """A chunk size for ONNX Runtime's calibrator that leaves a non-empty last chunk.

    Its MinMax calibrator raises "No data is collected" when the image count is a
    multiple of `CalibMaxIntermediateOutputs` (the last, empty chunk).
    """
    return next((k for k in (4, 3, 5, 7) if images % k), images + 1)


def _quantize_ort(proto: onnx.ModelProto, calibration: CalibrationSet, config: PreprocessConfig) -> onnx.ModelProto:
    """Per-channel symmetric int8 weights, uint8 activations from min/max calibration."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="lvvit-int8-") as work, temporary(work):
        source, prepared, target = (Path(work) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, str(source))
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
                excluded = activation_matmuls(onnx.load(str(prepared)))
                quantize_static(
                    str(prepared),
                    str(target),
                    _Reader(calibration.batches(config)),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=QUANTIZED_OPS,
                    nodes_to_exclude=excluded,
                    extra_options={
                        "OpTypesToExcludeOutputQuantization": QUANTIZED_OPS,
                        # fold the ranges every few images: holding every image's activations would
                        # need tens of GB for lvvit_l at 448px
                        "CalibMaxIntermediateOutputs": _fold_every(len(calibration.used)),
                    },
                    calibrate_method=CalibrationMethod.MinMax,
                )
        except Exception as exc:  # ONNX Runtime's quantizer raises bare exceptions
            raise ExportError(f"int8 quantization (ort) failed: {type(exc).__name__}: {exc}") from exc
        return onnx.load(str(target))
