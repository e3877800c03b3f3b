"""The files a benchmark compares: one export per path, made once and reused from a work folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lvvit.common.provenance import sha256_of
from lvvit.common.versions import package_version


@dataclass(frozen=True)
class Artifacts:
    onnx: Path  # portable fp32
    fused: Path  # ONNX Runtime fused fp32 (--optimize)
    int8: Path  # static QDQ int8 from NNCF (what OpenVINO runs best)
    int8_ort: Path  # static QDQ int8 from ONNX Runtime's quantizer (what ONNX Runtime runs best)
    paddle: Path  # Paddle inference artifact (.pdiparams; .json beside it)
    images: Path  # the real images: calibration and drift
    int8_ac: Path | None = None  # NNCF int8 with accuracy control (exported only when a path asks for it)
    int8_unfolded: Path | None = None  # NNCF int8 with SmoothQuant's Multiply nodes left (only when asked for)
    int8_ac_whole: Path | None = None  # accuracy control with whole stages (only when asked for)
    int8_vnni: Path | None = None  # NNCF int8 with every linear layer quantized (only when asked for)
    int8_ort_ac: Path | None = None  # ONNX Runtime's quantizer with accuracy control (only when asked for)
    int8_ac_bf16: Path | None = None  # accuracy control measured on OpenVINO at bf16 (only when asked for)


# The exports made only when a bench path asks for them: FastPath options on top of NNCF int8. Accuracy control
# measures its agreement on the runtime of its bench row (OpenVINO for NNCF's files, ONNX Runtime for its own).
EXTRA_INT8 = {
    "int8_ort_ac": {"quantizer": "ort", "accuracy_control": True, "control_runtime": "ort"},
    "int8_ac": {"accuracy_control": True, "control_runtime": "openvino"},
    "int8_ac_whole": {"accuracy_control": True, "control_runtime": "openvino", "control_stages": "whole"},
    "int8_ac_bf16": {"accuracy_control": True, "control_runtime": "openvino", "control_precision": "bf16"},
    "int8_unfolded": {"fold_smooth_quant": False},
    "int8_vnni": {"int8_target": "vnni"},
}

CONTROLLED = {name for name, options in EXTRA_INT8.items() if options.get("accuracy_control")}


def source_fingerprint(*packages: Path) -> str:
    """SHA-256 over the Python sources of `packages` (folders), names included."""
    digest = hashlib.sha256()
    for root in packages:
        for source in sorted(root.rglob("*.py")):
            digest.update(str(source.relative_to(root.parent)).encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()


def exporter_fingerprint() -> str:
    """The model's and exporters' sources: a changed export rewrite invalidates the reused files."""
    import exporters
    import lvvit

    return source_fingerprint(*(Path(p.__file__).parent for p in (lvvit, exporters)))


def prepare_artifacts(
    preset: str,
    weights: Path | None,
    resolution: int | None,
    workdir: Path,
    images: Path | None,
    log,
    calibration_count: int = 32,
    extras: tuple[str, ...] = (),
    max_float_stages: int | None = None,
    progress: bool = True,
) -> Artifacts:
    """Export every path's file under `workdir` (and the `EXTRA_INT8` files named in `extras`), or reuse them
    when made from the same inputs."""
    from exporters.onnx import FastPath, export_onnx, export_paddle_inference
    from lvvit import resolve_preset
    from validation.datasets.photos import write_sample_photos

    workdir.mkdir(parents=True, exist_ok=True)
    if images is None:
        images = workdir / "photos"
        if not any(images.glob("*.jpg")):
            write_sample_photos(images, variants=4)
            log(f"wrote scikit-image's sample photographs (and crops) to {images}")
    spec = resolve_preset(preset, resolution)
    key = {
        "preset": preset,
        "resolution": spec.resolution,
        "weights": sha256_of(weights) if weights else None,
        "images": str(images),
        "calibration_count": calibration_count,
        "extras": sorted(extras),
        "max_float_stages": max_float_stages if CONTROLLED & set(extras) else None,
        "kit": package_version("lvvit-deploy"),
        "exporter_sources": exporter_fingerprint(),
    }
    stamp = workdir / "artifacts.json"
    names = ("onnx", "fused", "int8", "int8_ort", "paddle", *sorted(extras))
    reused = _reusable(stamp, key, images, names)
    if reused is not None:
        log(f"reusing the exports in {workdir}")
        return reused
    common = dict(preset=preset, weights=weights, resolution=resolution, output=workdir, log=log, verify=False)
    log("exporting: portable fp32, ONNX Runtime fused fp32, int8 QDQ (nncf and ort quantizers), Paddle inference")
    files = {"onnx": export_onnx(**common).path, "fused": export_onnx(**common, fast=FastPath(optimize=True)).path}
    for name, quantizer in (("int8", "nncf"), ("int8_ort", "ort")):
        int8 = FastPath(quantize="int8", calibration=images, calibration_count=calibration_count, quantizer=quantizer,
                        progress=progress)  # fmt: skip
        files[name] = export_onnx(**common, fast=int8).path
    for name in sorted(extras):  # accuracy control's images are the calibration folder's, as for the exporter's
        control = EXTRA_INT8[name].get("accuracy_control")
        options = {**EXTRA_INT8[name], **({"max_float_stages": max_float_stages} if control else {})}
        extra = FastPath(quantize="int8", calibration=images, calibration_count=calibration_count, progress=progress,
                         **options)  # fmt: skip
        files[name] = export_onnx(**common, fast=extra).path
    del common["verify"]
    files["paddle"] = export_paddle_inference(**common).path
    # the exporters name the files; the stamp records their names, so a rerun finds them without guessing
    stamp.write_text(json.dumps({"key": key, "files": {k: str(v) for k, v in files.items()}}))
    return Artifacts(**files, images=images)


def _reusable(stamp: Path, key: dict, images: Path, names: tuple[str, ...]) -> Artifacts | None:
    """The files of an earlier run with the same inputs, when its stamp says so and they are all still there."""
    try:
        stored = json.loads(stamp.read_text())
        files = {name: Path(stored["files"][name]) for name in names}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no stamp, or one from an older kit: export again
    if stored.get("key") != key or not all(p.exists() for p in files.values()):
        return None
    return Artifacts(**files, images=images)
