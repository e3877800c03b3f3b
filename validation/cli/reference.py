"""`python -m validation reference`: compute native Paddle's logits for a data set once (`reference_cache`).

    python -m validation reference --images DATA --preset lvvit_s --weights W --cache CACHE
    python -m validation drift --images DATA --onnx lvvit_s.onnx --weights W --reference-cache CACHE
    python -m validation accuracy --images DATA --onnx lvvit_s.onnx --weights W --reference-cache CACHE

What the cache holds and when it is refused: `validation.engines.reference_cache`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from validation.core.runners import REFERENCE
from validation.engines.reference_cache import ReferenceCache, reference_key

if TYPE_CHECKING:
    from validation.cli.options import EngineOptions, ModelOptions


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import (
        add_engine_options,
        add_images_folder,
        add_limit,
        add_model_options,
        add_progress,
        add_workers,
        positive,
    )

    parser = subparsers.add_parser(
        "reference",
        help="compute native Paddle's logits for a data set once, for drift and accuracy to reuse",
        description="Run native Paddle (eager, the reference) over every image of a folder and store its logits "
        "with the weights' SHA-256, preset, resolution, preprocessing and kit version. drift and accuracy then "
        "take --reference-cache DIR and do not run Paddle. Resumes an interrupted run.",
    )
    add_images_folder(parser, "the folder of images (searched recursively, as drift's --images)")
    parser.add_argument("--cache", type=Path, required=True, metavar="DIR", help="the cache folder to write")
    add_limit(parser)
    add_workers(parser, "threads reading images ahead")
    add_progress(parser)
    add_model_options(parser, exported=False)  # only native Paddle runs: no --onnx, --paddle-inference, --work-dir
    add_engine_options(parser, reference_cache=False)
    parser.add_argument("--batch-size", type=positive, default=16, help="images per Paddle run (default 16)")
    parser.add_argument("--threads", type=positive, default=None, help="Paddle threads (default: Paddle's own)")
    parser.set_defaults(func=main)


@dataclass(frozen=True)
class ReferenceOptions:
    """`reference`'s command line, typed."""

    model: ModelOptions
    engine: EngineOptions
    images: Path
    cache: Path
    limit: int | None
    workers: int
    batch_size: int
    threads: int | None
    progress: bool

    @classmethod
    def from_args(cls, args: Any) -> ReferenceOptions:
        from validation.cli.options import EngineOptions, ModelOptions, images_folder

        return cls(
            ModelOptions.from_args(args),
            EngineOptions.from_args(args),
            images_folder(args),
            args.cache,
            args.limit,
            args.workers,
            args.batch_size,
            args.threads,
            not args.no_progress,
        )


def main(args: Any) -> int:
    return run(ReferenceOptions.from_args(args))


def run(options: ReferenceOptions) -> int:
    from validation.cli.options import log, model_source
    from validation.core.data import image_folder
    from validation.core.runners import RuntimeOptions, runner_specs
    from validation.engines.local import engine_for

    source = model_source(options.model, Path("build/reports"))  # nothing is exported: native Paddle only
    dataset = image_folder(options.images).limited(options.limit)
    runtime = RuntimeOptions(batch_size=options.batch_size, threads=options.threads)
    specs = runner_specs([REFERENCE], source, runtime, log)
    cache = ReferenceCache.create(options.cache, reference_key(source), source.spec.arch.num_classes)
    settings = {"batch_size": options.batch_size, "workers": options.workers}
    engine = options.engine
    with engine_for(specs, engine.engine, ray_address=engine.ray_address, **settings) as (_, _, running):
        computed = cache.build(dataset.samples, engine.shard_size, running, progress=options.progress)
    print(
        f"{options.cache}: native Paddle's logits of {len(dataset.samples)} images ({computed} shard(s) computed now)"
    )
    return 0
