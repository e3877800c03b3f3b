"""The export library functions: build the model, convert, verify, write atomically."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from lvvit.atomic import atomic_files, atomic_output
from lvvit.metadata import ModelMetadata
from lvvit.presets import Preset
from lvvit.progress import Log, to_stderr

from ..errors import ExportError
from ..provenance import tool_versions, weights_provenance
from .fast_path import FastPath, apply_fast_path, tolerance_for
from .verify import DriftCheck, verify_export

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
    log: Log = to_stderr,
    **arch_overrides,
) -> ExportResult:
    """Export `preset` to one ONNX file and (unless `verify=False`) prove it matches Paddle.

    Args:
        batch: None for a dynamic batch axis named "batch", or a fixed size.
        output: a file, or a folder for `<preset>.onnx`; default `./<preset>.onnx`.
        atol: the verification's max abs error allowed against Paddle (fp32 graphs).
        fast: fused graph, fp16 or int8 (see `FastPath`); default the portable fp32 graph.
        arch_overrides: architecture fields to replace (tiny models in tests).

    The file appears at the output path only when conversion and verification
    succeeded; an older file there is otherwise left untouched.
    """
    import onnx

    from lvvit import resolve_preset

    fast = fast or FastPath()
    check_options(batch, opset, resolution)
    tolerance = tolerance_for(fast, atol)  # refuses a non-finite or negative atol before any work
    started = time.perf_counter()
    spec = resolve_preset(preset, resolution, **arch_overrides)
    suffix = f"{fast.tag}.onnx"
    target = resolve_output(output, spec.name, spec.resolution, resolve_preset(preset).resolution, suffix)
    with atomic_output(target) as tmp:  # fails early, before any work, when the folder is not writable
        log(f"[1/3] building {spec.name} at {spec.resolution}px")
        model = _build(preset, weights, resolution, checkpoint_key, seed, log, arch_overrides)
        precision = "int8" if fast.quantize else fast.precision
        metadata = _metadata(model, batch, opset, seed, graph=fast.graph, precision=precision)
        log(f"[2/3] converting to ONNX (opset {opset}, batch {batch or 'dynamic'}, {fast.graph} graph, {precision})")
        from ..fusable import fusable_copy
        from .convert import paddle_to_onnx

        proto = paddle_to_onnx(fusable_copy(model) if fast.rewrite else model, metadata)
        proto, images, float_stages = apply_fast_path(proto, model, fast, log)
        metadata = replace(metadata, float_stages=float_stages)
        _stamp(proto, metadata)
        onnx.save(proto, str(tmp))
        checks: list[DriftCheck] = []
        if verify:
            batches = [batch] if batch is not None else [1, 3]
            log(f"[3/3] verifying: onnx.checker, then ONNX Runtime vs Paddle ({tolerance.describe()})")
            checks = verify_export(tmp, model, batches, tolerance, seed, images, name=str(target))
            for check in checks:
                log("      " + check.line())
        else:
            log("[3/3] verification skipped (--no-verify)")
    return ExportResult(target, metadata, checks, time.perf_counter() - started, [target])


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
        save_inference_model(model, staging / stem, batch)
        sidecar = staging / f"{stem}.lvvit.json"
        sidecar.write_text(json.dumps(metadata.to_props(), indent=2, sort_keys=True))
        final = [target.parent / path.name for path in saved_files(staging / stem)]
    return ExportResult(target.parent / f"{stem}.pdiparams", metadata, [], time.perf_counter() - started, final)
