"""The files a benchmark compares: one export per path, made once and reused from a work folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lvvit.versions import package_version
from lvvit.weights import sha256_of


@dataclass(frozen=True)
class Artifacts:
    onnx: Path  # portable fp32
    fused: Path  # ONNX Runtime fused fp32 (--optimize)
    int8: Path  # static QDQ int8 from NNCF (what OpenVINO runs best)
    int8_ort: Path  # static QDQ int8 from ONNX Runtime's quantizer (what ONNX Runtime runs best)
    paddle: Path  # Paddle inference artifact (.pdiparams; .json beside it)
    images: Path  # the real images: calibration and drift
    int8_ac: Path | None = None  # NNCF int8 with accuracy control (exported only when a path asks for it)


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
    accuracy_control: bool = False,
) -> Artifacts:
    """Export every path's file under `workdir`, or reuse them when made from the same inputs."""
    from exporters.onnx import FastPath, export_onnx, export_paddle_inference
    from lvvit import resolve_preset

    from .photos import write_sample_photos

    workdir.mkdir(parents=True, exist_ok=True)
    if images is None:
        images = workdir / "photos"
        if not any(images.glob("*.jpg")):
            write_sample_photos(images, variants=4)
            log(f"wrote scikit-image's sample photographs (and crops) to {images}")
    spec = resolve_preset(preset, resolution)
    stem = spec.name if spec.resolution == resolve_preset(preset).resolution else f"{spec.name}_{spec.resolution}"
    expected = Artifacts(
        workdir / f"{stem}.onnx",
        workdir / f"{stem}_ort.onnx",
        workdir / f"{stem}_int8.onnx",
        workdir / f"{stem}_int8_ortq.onnx",
        workdir / f"{stem}.pdiparams",
        images,
        workdir / f"{stem}_int8_ac.onnx" if accuracy_control else None,
    )
    key = {
        "preset": preset,
        "resolution": spec.resolution,
        "weights": sha256_of(weights) if weights else None,
        "images": str(images),
        "calibration_count": calibration_count,
        "accuracy_control": accuracy_control,
        "kit": package_version("lvvit-deploy"),
        "exporter_sources": exporter_fingerprint(),
    }
    stamp = workdir / "artifacts.json"
    files = [expected.onnx, expected.fused, expected.int8, expected.int8_ort, expected.paddle]
    files += [expected.int8_ac] if expected.int8_ac else []
    if stamp.exists() and json.loads(stamp.read_text()) == key and all(p.exists() for p in files):
        log(f"reusing the exports in {workdir}")
        return expected
    common = dict(preset=preset, weights=weights, resolution=resolution, output=workdir, log=log, verify=False)
    log("exporting: portable fp32, ONNX Runtime fused fp32, int8 QDQ (nncf and ort quantizers), Paddle inference")
    export_onnx(**common)
    export_onnx(**common, fast=FastPath(optimize=True))
    for quantizer in ("nncf", "ort"):
        int8 = FastPath(quantize="int8", calibration=images, calibration_count=calibration_count, quantizer=quantizer)
        export_onnx(**common, fast=int8)
    if accuracy_control:  # the gate's images are the calibration folder's, as for the exporter's own option
        controlled = FastPath(quantize="int8", calibration=images, calibration_count=calibration_count,
                              accuracy_control=True)  # fmt: skip
        export_onnx(**common, fast=controlled)
    del common["verify"]
    export_paddle_inference(**common)
    stamp.write_text(json.dumps(key))
    return expected
