"""Stage what the GPU machine needs and cannot make: exported models, real photographs, CPU reference logits.

The lent GPU machine has no Paddle (so no exporter), no scikit-image photographs of the kit's choosing and
no network. This writes, here, everything `tests/gpu/test_gpu.py` and `gpu/bench.py` read there:

- `tiny.onnx` / `tiny_fp16.onnx`: a tiny LV-ViT (`lvvit.presets.TINY_ARCH` at 64 px), its fixed synthetic inputs
  and the CPU fp32 logits of ONNX Runtime on them (`tiny_inputs.npy`, `tiny_cpu_logits.npy`);
- `<preset>.onnx` / `<preset>_fp16.onnx` (`--optimize --precision fp16`), the bundled photographs and crops
  of them as JPEG (`photos/`), and the CPU fp32 logits of `<preset>.onnx` on them (`<preset>_cpu_logits.npy`);
- `manifest.json`: every file with its SHA-256, the SHA-256 of each preprocessed photo (the GPU test checks
  that its preprocessing saw the same pixels), and what computed the references (versions, CPU).

    python gpu/stage.py OUT [--preset lvvit_s] [--variants 6] [--tiny-only]

Weights are the exporter's deterministic random initialisation (no trained LV-ViT weights are at hand);
the manifest says so. `gpu/prepare.sh` calls this and packs the folder for the device calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from exporters.onnx import FastPath, export_onnx  # noqa: E402
from lvvit.common.provenance import sha256_of  # noqa: E402
from lvvit.preprocess import preprocess_batch  # noqa: E402
from lvvit.presets import TINY_ARCH  # noqa: E402
from lvvit.synthetic import synthetic_batch  # noqa: E402
from runtimes import OrtPredictor  # noqa: E402

TINY_RESOLUTION = 64
TINY_INPUTS = 8
MANIFEST = "manifest.json"


def array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _quiet(_: str) -> None:
    pass


def _export_pair(out: Path, name: str, preset: str, **options) -> dict[str, str]:
    """`name`.onnx (the portable fp32 graph) and `name`_fp16.onnx, each verified against Paddle by the exporter."""
    fp32 = export_onnx(preset, output=out / f"{name}.onnx", log=_quiet, **options).path
    fp16 = export_onnx(preset, output=out / f"{name}_fp16.onnx", fast=FastPath(precision="fp16"), log=_quiet, **options)
    return {"fp32": fp32.name, "fp16": fp16.path.name}


def _cpu_reference(model: Path, inputs: np.ndarray) -> tuple[np.ndarray, dict]:
    with OrtPredictor(model, device="cpu") as predictor:
        return predictor.logits(inputs), predictor.describe()


def stage_tiny(out: Path) -> dict:
    files = _export_pair(out, "tiny", "lvvit_s", resolution=TINY_RESOLUTION, **TINY_ARCH)
    with OrtPredictor(out / files["fp32"]) as probe:
        inputs = synthetic_batch(TINY_INPUTS, probe.preprocess_config)
    logits, described = _cpu_reference(out / files["fp32"], inputs)
    np.save(out / "tiny_inputs.npy", inputs)
    np.save(out / "tiny_cpu_logits.npy", logits)
    return {**files, "inputs": "tiny_inputs.npy", "cpu_logits": "tiny_cpu_logits.npy", "reference": described}


def stage_preset(out: Path, preset: str, variants: int) -> dict:
    from validation.datasets.photos import write_sample_photos

    files = _export_pair(out, preset, preset)
    photos = sorted(write_sample_photos(out / "photos", variants))
    with OrtPredictor(out / files["fp32"]) as probe:
        config = probe.preprocess_config
    inputs = preprocess_batch([str(p) for p in photos], config)
    logits, described = _cpu_reference(out / files["fp32"], inputs)
    np.save(out / f"{preset}_cpu_logits.npy", logits)
    return {
        **files,
        "photos": [p.relative_to(out).as_posix() for p in photos],
        "photo_inputs_sha256": [array_sha256(x) for x in inputs],
        "cpu_logits": f"{preset}_cpu_logits.npy",
        "reference": described,
    }


def stage(out: str | Path, preset: str | None = "lvvit_s", variants: int = 6) -> Path:
    """Write the staged folder `out` (see the module docstring); returns the manifest's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = {"tiny": stage_tiny(out)}
    if preset is not None:
        models[preset] = stage_preset(out, preset, variants)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "models": models,
        "weights": "the exporter's deterministic random initialisation (seed 0)",
        "computed_on": {"machine": platform.machine(), "processor": platform.processor(), "python": sys.version},
        "files": {p.relative_to(out).as_posix(): sha256_of(p) for p in files},
    }
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, default=str))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python gpu/stage.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write (models, photos, reference logits, manifest)")
    parser.add_argument("--preset", default="lvvit_s", help="the preset exported in fp32 and fp16 (default lvvit_s)")
    parser.add_argument("--variants", type=int, default=6, help="images per bundled photo: it and crops (default 6)")
    parser.add_argument("--tiny-only", action="store_true", help="stage the tiny model alone (CPU smoke runs)")
    args = parser.parse_args(argv)
    path = stage(args.out, None if args.tiny_only else args.preset, args.variants)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"staged {path.parent} ({total / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
