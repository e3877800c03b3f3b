"""Local against Ray, side by side: images/s of the same accuracy run on each engine, and per-runtime throughput.

    python -m validation engine-bench --preset lvvit_s --count 64 --batch-size 8

Both engines run the same shards of the same images (scikit-image's sample
photographs and crops, random labels: throughput does not depend on them) with
native Paddle (the reference) and ONNX Runtime. It reports each engine's
wall-clock images/s, their ratio (Ray's overhead on one machine), and each
runtime's images/s inside the predictor: the per-node throughput that the
projection for 50,000 images on N nodes starts from. Not a test: a measurement,
printed and written as JSON.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def _images(folder: Path, count: int) -> Path:
    """`count` photographs in the ImageNet layout (`val_list.txt`), labels drawn at random (seed 0)."""
    from validation.datasets.photos import write_sample_photos

    photos = folder / "photos"
    if not any(photos.glob("*.jpg")):
        write_sample_photos(photos, variants=4)
    files = sorted(photos.glob("*.jpg"))
    labels = np.random.default_rng(0).integers(0, 1000, count)
    lines = [f"photos/{files[i % len(files)].name} {labels[i]}" for i in range(count)]
    (folder / "val_list.txt").write_text("\n".join(lines) + "\n")
    return folder


def run_engine_bench(
    preset: str, images: int, batch_size: int, shard_size: int, workdir: Path, threads: int | None
) -> dict[str, Any]:
    from lvvit import resolve_preset
    from validation.core.data import labelled_folder
    from validation.core.runners import ModelSource, RuntimeOptions, runner_specs
    from validation.engines.local import engine_for
    from validation.run.accuracy import run_accuracy

    spec = resolve_preset(preset)
    source = ModelSource(spec=spec, work_dir=workdir / "models")
    specs = runner_specs(["ort"], source, RuntimeOptions(batch_size=batch_size, threads=threads), print)
    dataset = labelled_folder(_images(workdir / "data", images), num_classes=spec.arch.num_classes)
    results: dict[str, Any] = {}
    for kind in ("local", "ray"):
        started = time.perf_counter()
        with engine_for(specs, kind, batch_size=batch_size) as (reference, others, engine):
            opened = time.perf_counter() - started
            report = run_accuracy(
                reference, others, dataset, batch_size=batch_size, engine=engine, shard_size=shard_size, progress=False
            )
        wall = report.wall_seconds
        results[kind] = {
            "start_seconds": opened,  # Ray: start, ship the models, open each runtime once on a worker
            "run_seconds": wall,
            "images_per_second": len(dataset.samples) / wall,
            "runtime_images_per_second": {
                report.reference.name: report.reference.images_per_second,
                **{name: entry.images_per_second for name, entry in report.runtimes.items()},
            },
            "top1_agreement_with_reference": report.runtimes["ort"].agreement,
        }
    return {
        "preset": spec.name,
        "resolution": spec.resolution,
        "images": len(dataset.samples),
        "batch_size": batch_size,
        "shard_size": shard_size,
        "threads": threads,
        "cores": len(os.sched_getaffinity(0)),
        "engines": results,
        "ray_over_local": results["ray"]["images_per_second"] / results["local"]["images_per_second"],
    }
