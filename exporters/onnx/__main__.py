"""`python -m exporters.onnx --preset NAME [...]` (or `lvvit-export`): parse, call the library, print the result."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from lvvit.common.flags import deprecated_alias
from lvvit.common.interrupt import interrupts_exit, written
from lvvit.common.memory import MemoryBudgetError, parse_size
from lvvit.errors import LvvitError
from lvvit.presets import get_preset, list_presets

from .accuracy_control import CONTROL_PRECISIONS, CONTROL_RUNTIMES
from .export import (
    DEFAULT_ATOL,
    DEFAULT_OPSET,
    MAX_BATCH,
    MAX_OPSET,
    MAX_RESOLUTION,
    MIN_OPSET,
    check_options,
    export_onnx,
    export_paddle_inference,
)
from .fast_path import CONTROL_STAGES, INT8_MIN_AGREEMENT, PRECISIONS, FastPath
from .int8_target import INT8_TARGETS
from .quantize import EVALUATION_LIMIT, QUANTIZERS


def _finite_number(value: str, low: float, high: float = math.inf) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not (low <= number <= high and math.isfinite(number)):  # written so that NaN is refused
        raise argparse.ArgumentTypeError(f"expected a finite number within [{low:g}, {high:g}], got {value!r}")
    return number


def _tolerance(value: str) -> float:
    return _finite_number(value, 0.0)


def _fraction(value: str) -> float:
    return _finite_number(value, 0.0, 1.0)


def _count(value: str, name: str = "the count") -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {number}")
    return number


def _memory_size(value: str) -> int:
    try:
        return parse_size(value)
    except MemoryBudgetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _batch(value: str) -> int | None:
    return None if value == "dynamic" else _count(value, "batch size")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exporters.onnx",
        description="Export an LV-ViT preset to a self-describing ONNX file (or a Paddle inference artifact) "
        "and verify it against native Paddle.",
    )
    _add_model(parser)
    _add_output(parser)
    fast = parser.add_argument_group("fast paths")
    _add_fast_paths(fast)
    _add_int8(fast)
    _add_accuracy_control(fast)
    _add_limits(parser)
    return parser


def _add_model(parser: argparse.ArgumentParser) -> None:
    """The model: preset, weights, resolution, batch, opset, seed."""
    parser.add_argument("--preset", metavar="NAME", help=f"model to export: {', '.join(list_presets())}")
    parser.add_argument("--list-presets", action="store_true", help="list the presets with their settings and exit")
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help=".pdparams, .safetensors or the authors' .pth.tar; without it a deterministic random "
        "initialisation is exported (and recorded as such)",
    )
    parser.add_argument(
        "--checkpoint-key",
        default=None,
        help="entry of a wrapped checkpoint (default: state_dict, model, state_dict_ema)",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help=f"input size, a multiple of 16 up to {MAX_RESOLUTION} (default: the preset's); resamples pos_embed",
    )
    parser.add_argument(
        "--batch",
        type=_batch,
        default=None,
        metavar="dynamic|N",
        help=f"'dynamic' (default) for any batch size, or a fixed size N up to {MAX_BATCH}",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET}: native LayerNormalization)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random initialisation and the verification inputs (default 0)"
    )


def _add_output(parser: argparse.ArgumentParser) -> None:
    """Where the file goes, its format, and its verification."""
    parser.add_argument(
        "--output",
        default=None,
        help="file, or folder for <preset>.onnx (default: ./<preset>.onnx; <preset>_<res>.onnx at another resolution)",
    )
    parser.add_argument(
        "--format",
        choices=("onnx", "paddle"),
        default="onnx",
        help="onnx (default), or paddle: paddle.jit.save inference files + .lvvit.json metadata",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip onnx.checker and the drift check against Paddle (ONNX Runtime, or --control-runtime's)",
    )
    parser.add_argument(
        "--atol",
        type=_tolerance,
        default=DEFAULT_ATOL,
        help=f"verification tolerance: max abs error vs Paddle, finite and >= 0 (default {DEFAULT_ATOL:g})",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars on stderr (int8 calibration passes, accuracy control's runs)",
    )


def _add_fast_paths(fast: argparse._ArgumentGroup) -> None:
    fast.add_argument(
        "--optimize",
        action="store_true",
        help="save ONNX Runtime's fused graph for the CPU; runs on ONNX Runtime only; file <preset>_ort.onnx. "
        "Every block's Attention, GELU and SkipLayerNormalization fusion is checked; Attention stays fused, "
        "SkipLayerNormalization and BiasGelu are written back as plain ops (faster on ONNX Runtime's CPU kernels)",
    )
    fast.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp16 for GPUs: fused graph in half precision, LayerNorm/Softmax kept fp32, float32 I/O (default fp32)",
    )
    fast.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="static int8 (QDQ) quantization of the portable graph, calibrated on the --images folder",
    )


def _add_int8(fast: argparse._ArgumentGroup) -> None:
    """int8: the quantizer, its calibration images and gate, the target CPU."""
    fast.add_argument(
        "--quantizer",
        choices=QUANTIZERS,
        default="nncf",
        help="int8 quantizer: nncf (default; transformer scheme with SmoothQuant, needs the [int8] extra) "
        "or ort (ONNX Runtime's quantize_static)",
    )
    images = fast.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --quantize int8: the folder of real images to calibrate on and to measure the int8 gate on",
    )
    deprecated_alias(fast, "--calibration", images)
    fast.add_argument(
        "--calibration-count",
        type=_count,
        default=32,
        help="images used for calibration (default 32), spread evenly over the --images folder sorted by path, so "
        "that a folder sorted by class calibrates on every class; the gate's images are spread the same way: up to "
        f"{EVALUATION_LIMIT}, the calibration ones included",
    )
    fast.add_argument(
        "--min-int8-agreement",
        type=_fraction,
        default=INT8_MIN_AGREEMENT,
        help=f"int8 accuracy gate: least top-1 agreement with Paddle fp32 on the held-out --images, a fraction "
        f"(default {INT8_MIN_AGREEMENT})",
    )
    fast.add_argument(
        "--keep-smooth-quant-muls",
        action="store_true",
        help="with --quantize int8 (nncf): leave SmoothQuant's Multiply nodes as NNCF wrote them instead of "
        "folding those after a LayerNorm into it (the fold is exact; this is for comparing speed); "
        "file <preset>_int8_unfolded.onnx",
    )
    fast.add_argument(
        "--int8-target",
        choices=INT8_TARGETS,
        default="auto",
        help="with --quantize int8: the CPU the file is for (nncf). vnni: every linear layer and convolution in "
        "int8 (OpenVINO's int8 linear layers need VNNI / AMX to beat f32); avx2: the convolutions only, the "
        "linear layers in f32 (on AVX2 without VNNI OpenVINO's int8 GEMM is no faster than its f32 one); auto "
        "(default): the CPU at hand's, printed. With --quantizer ort, avx2 takes 7-bit weights (reduce_range: "
        "ONNX Runtime's AVX2 int8 kernel saturates with 8-bit ones). Files: <preset>_int8.onnx (_int8_ortq.onnx), "
        "with _vnni / _avx2 when given",
    )


def _add_accuracy_control(fast: argparse._ArgumentGroup) -> None:
    fast.add_argument(
        "--accuracy-control",
        action="store_true",
        help="with --quantize int8 (either quantizer): keep stages (the input's quantization, stem and block halves, "
        "the head) in float, the one that adds the most error by itself first, re-quantizing each time, until "
        "top-1 agreement with Paddle fp32 on the --images folder reaches --min-int8-agreement, then tries each "
        "kept stage back in int8, the costliest first; file <preset>_int8_ac.onnx (ort: _int8_ortq_ac.onnx); "
        "each step is "
        "printed, the stages kept in float are recorded in the metadata (lvvit.float_stages) and, with the "
        "layers, in the graph's doc string. A step costs one calibration and three runs over the images "
        "(about 35 s for lvvit_s on 2 cores); the backward pass takes at most one step per kept stage",
    )
    fast.add_argument(
        "--control-stages",
        choices=CONTROL_STAGES,
        default="fine",
        help="with --accuracy-control: fine (default): the input's quantization, each convolution of the stem "
        "and its projection, each block's attention and MLP halves, the head; whole: the stem, each block, the head",
    )
    fast.add_argument(
        "--control-runtime",
        choices=CONTROL_RUNTIMES,
        default="ort",
        help="with --accuracy-control: the runtime whose top-1 agreement the loop measures, the int8 graph as "
        "shipped: ort (default) or openvino (the runtime that ships the nncf file); the export's gate runs the same",
    )
    fast.add_argument(
        "--control-precision",
        choices=CONTROL_PRECISIONS,
        default="f32",
        help="with --control-runtime openvino: the math of the float parts while the loop measures, as you will "
        "run the file (OpenVinoPredictor's precision): f32 (default) or bf16 (a CPU with avx512_bf16 or amx_bf16; "
        "bf16 runs what is kept in float, and the ops between the int8 layers, about twice as fast)",
    )
    fast.add_argument(
        "--max-float-stages",
        type=_count,
        default=None,
        help="with --accuracy-control: stop after keeping this many stages in float, even below the target "
        "(the gate then fails the export); default: until the target is met or every stage is float",
    )


def _add_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-memory",
        type=_memory_size,
        default=None,
        metavar="SIZE",
        help="memory the export may take, e.g. 4GiB or 3.5GB: checked before any work against the estimated peak "
        "(RSS of the exporter and its converter child, measured per preset); the run's peak is printed and "
        "recorded in the file's metadata either way",
    )


def _print_presets() -> None:
    for name in list_presets():
        p = get_preset(name)
        print(f"{name:<13} {p.resolution:>4}px  crop {p.preprocess.crop_pct:<4} {p.params_m:>7.2f}M  top-1 {p.top1}")


_KEPT = "stopped; temporary files removed, nothing written, any older file at the target untouched"


def _kept() -> str:
    """The interrupt's line: what the export had put in place when it came (the result is renamed in last)."""
    done = written()
    return f"stopped after the export was written ({', '.join(map(str, done))})" if done else _KEPT


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ info logs drown the progress lines
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        _print_presets()
        return 0
    if not args.preset:
        parser.error("--preset is required (see --list-presets)")
    common = dict(
        preset=args.preset,
        weights=args.weights,
        resolution=args.resolution,
        output=args.output,
        batch=args.batch,
        checkpoint_key=args.checkpoint_key,
        seed=args.seed,
    )
    try:
        check_options(args.batch, args.opset, args.resolution)  # before Paddle is imported and the model built
        with interrupts_exit(_kept):  # to the last line: an interrupt after the rename says the file is there
            result = _export(args, common)
            for path in result.files:
                print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
            print(f"done in {result.seconds:.1f}s")
    except LvvitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _export(args: argparse.Namespace, common: dict):
    if args.format == "paddle":
        return export_paddle_inference(**common)
    fast = FastPath(
        optimize=args.optimize,
        precision=args.precision,
        quantize=args.quantize,
        calibration=args.images,
        quantizer=args.quantizer,
        calibration_count=args.calibration_count,
        min_int8_agreement=args.min_int8_agreement,
        accuracy_control=args.accuracy_control,
        max_float_stages=args.max_float_stages,
        fold_smooth_quant=not args.keep_smooth_quant_muls,
        progress=not args.no_progress,
        int8_target=args.int8_target,
        control_stages=args.control_stages,
        control_precision=args.control_precision,
        control_runtime=args.control_runtime,
    )
    return export_onnx(
        **common, opset=args.opset, verify=not args.no_verify, atol=args.atol, fast=fast, max_memory=args.max_memory
    )


if __name__ == "__main__":
    sys.exit(main())
