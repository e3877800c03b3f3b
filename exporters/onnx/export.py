"""The export library functions: build the model, convert, verify, write atomically."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lvvit.common.atomic import atomic_files, atomic_output
from lvvit.common.interrupt import temporary_folder
from lvvit.common.memory import PeakSampler
from lvvit.common.progress import Log, to_stderr
from lvvit.metadata import ModelMetadata
from lvvit.presets import Preset

from ..errors import ExportError, Int8GateError, VerificationError
from ..provenance import tool_versions, weights_provenance
from .fast_path import FastPath, apply_fast_path, calibration_images, tolerance_for
from .preflight import (
    MEMORY_KEY,
    check_memory_budget,
    check_requirements,
    describe_memory,
    memory_record,
    weight_bytes,
)
from .stream import append_metadata
from .verify import DriftCheck, Reference, Tolerance, reference_logits, runtime_label, verify_export

if TYPE_CHECKING:
    import numpy as np

    from .quantize import CalibrationSet

DEFAULT_OPSET = 17  # the first opset with a native LayerNormalization
DEFAULT_ATOL = 1e-4
MIN_OPSET = 13  # the oldest opset the kit supports
MAX_OPSET = 21  # paddle2onnx 2.1 converts opsets 7..21 and aborts the process beyond
MAX_RESOLUTION = 1024  # 4,096 patches: the verification's attention maps alone take gigabytes beyond
MAX_BATCH = 64  # a fixed batch is verified at its own size: that many images through both runtimes


@dataclass
class ExportResult:
    path: Path
    metadata: ModelMetadata
    checks: list[DriftCheck] = field(default_factory=list)
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)
    memory: dict = field(default_factory=dict)  # the run's peak tree RSS, per phase (`preflight.memory_record`)


def resolve_output(
    output: str | Path | None, preset: str, resolution: int, default_preset_res: int, suffix: str
) -> Path:
    """A file path for `--output`: a folder (existing, or ending in '/') gets `<preset>[_<res>]<suffix>`."""
    stem = preset if resolution == default_preset_res else f"{preset}_{resolution}"
    if output is None:
        return Path.cwd() / f"{stem}{suffix}"
    out = Path(output)
    if out.is_dir() or str(output).endswith(("/", "\\")) or (not out.suffix and not out.exists()):
        return out / f"{stem}{suffix}"
    return out  # an existing non-folder (a file, or /dev/full) is the target itself; atomic_output judges it


def _build(preset: str | Preset, weights, resolution, checkpoint_key, seed, log: Log, arch_overrides: dict):
    from lvvit import create_model

    model = create_model(
        preset, weights=weights, resolution=resolution, checkpoint_key=checkpoint_key, seed=seed, **arch_overrides
    )
    if weights is None:
        log(
            "WARNING: no --weights given: exporting a deterministic RANDOM initialisation "
            f"(seed {seed}). Its predictions are meaningless; the artifact records this."
        )
    return model


def _metadata(
    model, batch: int | None, opset: int, seed: int, graph: str = "exported", precision: str = "fp32"
) -> ModelMetadata:
    spec = model.preset
    return ModelMetadata(
        preset=spec.name,
        preprocess=spec.preprocess,
        num_classes=spec.arch.num_classes,
        batch=batch,
        opset=opset,
        weights=weights_provenance(model, seed),
        versions=tool_versions("paddlepaddle", "paddle2onnx", "onnx", "onnxruntime", "onnxruntime-gpu"),
        arch=spec.arch.to_kwargs(),
        graph=graph,
        precision=precision,
    )


def check_options(batch: int | None, opset: int, resolution: int | None) -> None:
    """The numeric options, checked before any work (ExportError / ResolutionError naming the limit)."""
    from lvvit.errors import ResolutionError

    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise ExportError(f"--batch must be 'dynamic' or an integer within [1, {MAX_BATCH}], got {batch}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"--opset {opset} is outside the supported range {MIN_OPSET}..{MAX_OPSET} "
            f"(paddle2onnx converts up to {MAX_OPSET}; default {DEFAULT_OPSET})"
        )
    if resolution is not None and not 1 <= resolution <= MAX_RESOLUTION:
        raise ResolutionError(f"--resolution {resolution} is outside 16..{MAX_RESOLUTION} (a multiple of 16)")


def _stamp(proto, metadata: ModelMetadata) -> None:
    proto.doc_string = f"LV-ViT {metadata.preset} at {metadata.resolution}px, exported by the LV-ViT deployment kit"
    del proto.metadata_props[:]
    for key, value in sorted(metadata.to_props().items()):
        proto.metadata_props.add(key=key, value=value)


@dataclass
class _Staged:
    """What the Paddle side leaves once the model is gone: the file's metadata and what to check it against."""

    metadata: ModelMetadata
    references: list[Reference]
    calibration: CalibrationSet | None = None
    images: np.ndarray | None = None
    reference_top1: np.ndarray | None = None


def _paddle_side(
    preset, weights, resolution, checkpoint_key, seed, arch_overrides, verify: bool, batch: int | None, opset: int,
    fast: FastPath, workdir: Path, tmp: Path, memory: PeakSampler, log: Log,
) -> _Staged:  # fmt: skip
    """Build the model, take Paddle's logits for the checks, convert, write the fp32 file to `tmp` with the
    weights streamed in. The model lives only in this function: it is gone before ONNX Runtime loads the file."""
    from ..fusable import fusable_copy
    from ..paddle_static import model_file, save_inference_model
    from .convert import convert_program
    from .stream import write_model

    memory.phase("build")
    model = _build(preset, weights, resolution, checkpoint_key, seed, log, arch_overrides)
    precision = "int8" if fast.quantize else fast.precision
    metadata = _metadata(model, batch, opset, seed, graph=fast.graph, precision=precision)
    staged = _Staged(metadata, [])
    if fast.quantize:
        staged.calibration, staged.images = calibration_images(fast, model.preset.preprocess, log)
    if verify or fast.accuracy_control:
        memory.phase("reference")
        batches = [batch] if batch is not None else [1, 3]
        staged.references = reference_logits(model, batches, seed, staged.images)
        if staged.images is not None:
            staged.reference_top1 = staged.references[0].logits.argmax(1)
    memory.phase("program")
    traced = fusable_copy(model) if fast.rewrite else model
    del model  # (the fusable copy is the one traced)
    prefix = workdir / "model"
    names = save_inference_model(traced, prefix, batch, in_place=True)
    state = traced.state_dict()
    memory.phase("convert")
    log(f"[2/3] converting to ONNX (opset {opset}, batch {batch or 'dynamic'}, {fast.graph} graph, {precision})")
    shapes = {name: list(tensor.shape) for name, tensor in state.items()}
    converted = convert_program(model_file(prefix), names, shapes, lambda name: state[name].numpy(), opset, batch)
    _stamp(converted.proto, metadata)
    write_model(tmp, converted.proto, ((name, state[name].numpy()) for name in converted.weights))
    return staged


def export_onnx(
    preset: str | Preset,
    weights: str | Path | None = None,
    resolution: int | None = None,
    output: str | Path | None = None,
    batch: int | None = None,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    checkpoint_key: str | None = None,
    seed: int = 0,
    fast: FastPath | None = None,
    max_memory: int | None = None,
    log: Log = to_stderr,
    **arch_overrides,
) -> ExportResult:
    """Export `preset` to one ONNX file and (unless `verify=False`) prove it matches Paddle.

    Args:
        batch: None for a dynamic batch axis named "batch", or a fixed size.
        output: a file, or a folder for `<preset>.onnx`; default `./<preset>.onnx`.
        atol: the verification's max abs error allowed against Paddle (fp32 graphs).
        fast: fused graph, fp16 or int8 (see `FastPath`); default the portable fp32 graph.
        max_memory: bytes the export may take (peak RSS of its process tree); refused before any work when the
            estimate for the preset is larger (`MemoryBudgetError`).
        arch_overrides: architecture fields to replace (tiny models in tests).

    The file appears at the output path only when conversion and verification
    succeeded; an older file there is otherwise left untouched. Its metadata records the run's peak memory.
    """

    from lvvit import resolve_preset

    fast = fast or FastPath()
    check_options(batch, opset, resolution)
    tolerance = tolerance_for(fast, atol)  # refuses a non-finite or negative atol before any work
    started = time.perf_counter()
    spec = resolve_preset(preset, resolution, **arch_overrides)
    check_requirements(fast, verify)
    need = check_memory_budget(spec, fast, max_memory)
    suffix = f"{fast.tag}.onnx"
    target = resolve_output(output, spec.name, spec.resolution, resolve_preset(preset).resolution, suffix)
    with (
        PeakSampler() as memory,
        atomic_output(target) as tmp,  # fails early, before any work, when the folder is not writable
        temporary_folder("lvvit-export-") as workdir,
    ):
        log(f"[1/3] building {spec.name} at {spec.resolution}px")
        staged = _paddle_side(preset, weights, resolution, checkpoint_key, seed, arch_overrides, verify, batch, opset,
                              fast, workdir, tmp, memory, log)  # fmt: skip
        metadata = _apply_fast(tmp, staged, spec, fast, memory, log) if fast.rewrite else staged.metadata
        checks = _verify(tmp, target, staged, tolerance, fast, memory, spec, need, log) if verify else []
        if not verify:
            log("[3/3] verification skipped (--no-verify)")
        record = _record_memory(tmp, memory, spec, need, log)
    return ExportResult(target, metadata, checks, time.perf_counter() - started, [target], record)


def _apply_fast(
    tmp: Path, staged: _Staged, spec: Preset, fast: FastPath, memory: PeakSampler, log: Log
) -> ModelMetadata:
    """Rewrite the staged file in place along the fast path (fusion, fp16, int8); its metadata with the float stages."""
    import onnx

    memory.phase("fast path")
    proto = onnx.load(str(tmp))
    proto, float_stages = apply_fast_path(
        proto, spec, fast, log, staged.calibration, staged.images, staged.reference_top1
    )
    metadata = replace(staged.metadata, float_stages=float_stages)
    _stamp(proto, metadata)
    onnx.save(proto, str(tmp))
    return metadata


def _verify(
    tmp: Path,
    target: Path,
    staged: _Staged,
    tolerance: Tolerance,
    fast: FastPath,
    memory: PeakSampler,
    spec: Preset,
    need: int,
    log: Log,
) -> list[DriftCheck]:
    """onnx.checker, then the file against Paddle on ONNX Runtime, or where accuracy control measured it (OpenVINO,
    at its precision): the gate must judge what the loop chose for. An int8 file under the gate is kept aside as
    `.rejected`."""
    memory.phase("verify")
    runtime, precision = (fast.control_runtime, fast.control_precision) if fast.accuracy_control else ("ort", "f32")
    log(f"[3/3] verifying: onnx.checker, then {runtime_label(runtime, precision)} vs Paddle ({tolerance.describe()})")
    try:
        checks = verify_export(tmp, staged.references, tolerance, str(target), runtime, precision)
    except VerificationError as exc:
        if not (fast.quantize and exc.checks):
            raise
        _record_memory(tmp, memory, spec, need, log)
        raise _keep_rejected(tmp, target, exc, fast, _random_weights_note(staged)) from exc
    for check in checks:
        log("      " + check.line())
    return checks


def _record_memory(path: Path, memory: PeakSampler, spec: Preset, need: int, log: Log) -> dict:
    """Print the run's peak memory and add it to the file's metadata (appended: the weights are not rewritten)."""
    memory.phase("end")
    record = memory_record(memory, weight_bytes(spec), need)
    log("      " + describe_memory(record))
    append_metadata(path, {MEMORY_KEY: json.dumps(record, sort_keys=True)})
    return record


def _random_weights_note(staged: _Staged) -> str:
    """For a gate that failed on a random initialisation: why, with the median gap between Paddle's top two logits
    on the gate's images ("" for real weights). lvvit_s's random weights: 0.074, the nearest tie 0.0025; the same
    int8 recipe on five calibration sets flipped 1-7 of 76 photographs, whatever its error."""
    import numpy as np

    from lvvit.common.metrics import top2_margin

    if staged.metadata.weights.get("source") != "random-init":
        return ""
    real = [r.logits for r in staged.references if r.kind != "synthetic"] or [r.logits for r in staged.references]
    gap = float(np.median(top2_margin(np.concatenate(real))))
    return (f"\n  note: these weights are a random initialisation (no --weights): Paddle's top two logits are "
            f"close (median gap {gap:.3g}), so int8's rounding flips some images whatever stays in float: measure "
            f"int8 with the trained weights")  # fmt: skip


def _keep_rejected(tmp: Path, target: Path, error: VerificationError, fast: FastPath, note: str = "") -> Int8GateError:
    """Move an int8 file that failed the agreement gate to `<stem>.rejected.onnx`; the error says what next (and
    `note`, why it may have failed)."""
    rejected = target.with_name(target.name.removesuffix(".onnx") + ".rejected.onnx")
    os.replace(tmp, rejected)
    measured = min(check.top1_agreement for check in error.checks)
    images = max(check.batch for check in error.checks)
    if not fast.accuracy_control:
        more_float = (f"--accuracy-control: keeps the stages that lose the most in float until the agreement "
                      f"reaches {fast.min_int8_agreement:.1%} (slower to export: a few calibrations)")  # fmt: skip
    elif fast.max_float_stages is not None:
        more_float = f"a larger --max-float-stages than {fast.max_float_stages}, or none: more stages in float"
    else:
        more_float = "--quantizer ort, or calibration images closer to what the model will see"
    return Int8GateError(
        f"{target}: int8 top-1 agreement with Paddle fp32 is {measured:.1%} on {images} images, below the gate: "
        f"top-1 agreement >= {fast.min_int8_agreement:.1%} (--min-int8-agreement); not written there. "
        f"The rejected file is kept as "
        f"{rejected} for inspection. Two ways forward:\n"
        f"  {more_float}\n"
        f"  --min-int8-agreement {math.floor(measured * 1000) / 1000:g}: accept what was measured{note}",
        error.checks,
        rejected,
    )


def export_paddle_inference(
    preset: str | Preset,
    weights: str | Path | None = None,
    resolution: int | None = None,
    output: str | Path | None = None,
    batch: int | None = None,
    checkpoint_key: str | None = None,
    seed: int = 0,
    log: Log = to_stderr,
    **arch_overrides,
) -> ExportResult:
    """Save Paddle's inference artifact: `<stem>.json` (or `.pdmodel`), `.pdiparams`, `.lvvit.json` (metadata).

    Files are written in a temporary folder beside the target and moved into place only when all exist.
    """
    from lvvit import resolve_preset

    from ..paddle_static import save_inference_model, saved_files

    check_options(batch, DEFAULT_OPSET, resolution)
    started = time.perf_counter()
    spec = resolve_preset(preset, resolution, **arch_overrides)
    target = resolve_output(output, spec.name, spec.resolution, resolve_preset(preset).resolution, ".pdiparams")
    stem = target.name.removesuffix(".pdiparams")
    stale = (f"{stem}.json", f"{stem}.pdmodel")  # an older artifact's program in the other format goes too
    with atomic_files(target.parent, stale) as staging:  # fails early, before any work, when the folder is not writable
        log(f"[1/2] building {spec.name} at {spec.resolution}px")
        model = _build(preset, weights, resolution, checkpoint_key, seed, log, arch_overrides)
        metadata = _metadata(model, batch, DEFAULT_OPSET, seed, graph="paddle-inference")
        log("[2/2] saving the Paddle inference program (paddle.jit.save)")
        save_inference_model(model, staging / stem, batch, in_place=True)
        sidecar = staging / f"{stem}.lvvit.json"
        sidecar.write_text(json.dumps(metadata.to_props(), indent=2, sort_keys=True))
        final = [target.parent / path.name for path in saved_files(staging / stem)]
    return ExportResult(target.parent / f"{stem}.pdiparams", metadata, [], time.perf_counter() - started, final)
