"""`python -m validation reference`: compute native Paddle's logits for a data set once (`reference_cache`).

    python -m validation reference DATA --preset lvvit_s --weights W --cache CACHE
    python -m validation drift --images DATA --onnx lvvit_s.onnx --weights W --reference-cache CACHE
    python -m validation accuracy DATA --onnx lvvit_s.onnx --weights W --reference-cache CACHE

What the cache holds and when it is refused: `validation.engines.reference_cache`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from validation.core.runners import REFERENCE
from validation.engines.reference_cache import ReferenceCache, reference_key


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import add_engine_options, add_model_options, at_most, positive

    parser = subparsers.add_parser(
        "reference",
        help="compute native Paddle's logits for a data set once, for drift and accuracy to reuse",
        description="Run native Paddle (eager, the reference) over every image of a folder and store its logits "
        "with the weights' SHA-256, preset, resolution, preprocessing and kit version. drift and accuracy then "
        "take --reference-cache DIR and do not run Paddle. Resumes an interrupted run.",
    )
    parser.add_argument("data", type=Path, help="the folder of images (searched recursively, as drift --images)")
    parser.add_argument("--cache", type=Path, required=True, metavar="DIR", help="the cache folder to write")
    parser.add_argument("--limit", type=positive, default=None, help="only the first N images")
    parser.add_argument(
        "--workers", type=at_most(64), default=4, help="threads reading images ahead, 1..64 (default 4)"
    )
    add_model_options(parser)
    add_engine_options(parser, reference_cache=False)
    parser.add_argument("--batch-size", type=positive, default=16, help="images per Paddle run (default 16)")
    parser.add_argument("--threads", type=positive, default=None, help="Paddle threads (default: Paddle's own)")
    parser.set_defaults(func=main, report_dir=Path("build/reports"))


def main(args: Any) -> int:
    from validation.cli.options import log, model_source
    from validation.core.data import image_folder
    from validation.core.runners import RuntimeOptions, runner_specs
    from validation.engines.local import engine_for

    source = model_source(args)
    dataset = image_folder(args.data).limited(args.limit)
    specs = runner_specs([REFERENCE], source, RuntimeOptions(batch_size=args.batch_size, threads=args.threads), log)
    cache = ReferenceCache.create(args.cache, reference_key(source), source.spec.arch.num_classes)
    options = {"batch_size": args.batch_size, "workers": args.workers}
    with engine_for(specs, args.engine, ray_address=args.ray_address, **options) as (_, _, engine):
        computed = cache.build(dataset.samples, args.shard_size, engine)
    print(f"{args.cache}: native Paddle's logits of {len(dataset.samples)} images ({computed} shard(s) computed now)")
    return 0
