"""`python -m validation engine-bench`: one accuracy job on the local and the Ray engine (`validation.perf`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import add_work_dir, deprecated_alias, positive
    from validation.perf import engine_bench

    parser = subparsers.add_parser(
        "engine-bench",
        help="images/s of the same accuracy job on the local and the Ray engine",
        description=engine_bench.__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--preset", default="lvvit_s", help="model (random weights; default lvvit_s)")
    count = parser.add_argument(
        "--count", type=positive, default=64, metavar="N", help="images per engine (default 64)"
    )
    deprecated_alias(parser, "--images", count)
    parser.add_argument("--batch-size", type=positive, default=8, help="images per predictor call (default 8)")
    parser.add_argument("--shard-size", type=positive, default=32, help="images per shard (default 32)")
    parser.add_argument("--threads", type=positive, default=None, help="ONNX Runtime threads (default: its own)")
    add_work_dir(
        parser,
        Path("build/engine_bench"),
        "build/engine_bench",
        "where the photos and engine_bench.json go",
        ("--workdir",),
    )
    parser.set_defaults(func=main)


@dataclass(frozen=True)
class EngineBenchOptions:
    preset: str
    count: int
    batch_size: int
    shard_size: int
    work_dir: Path
    threads: int | None


def main(args: Any) -> int:
    return run(
        EngineBenchOptions(args.preset, args.count, args.batch_size, args.shard_size, args.work_dir, args.threads)
    )


def run(o: EngineBenchOptions) -> int:
    from validation.perf.engine_bench import run_engine_bench

    result = run_engine_bench(o.preset, o.count, o.batch_size, o.shard_size, o.work_dir, o.threads)
    text = json.dumps(result, indent=2)
    (o.work_dir / "engine_bench.json").write_text(text + "\n")
    print(text)
    return 0
