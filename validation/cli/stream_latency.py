"""`python -m validation stream-latency MODEL.onnx`: streams=N against streams=1 (`validation.perf.stream_latency`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_RUNTIMES = "ort,openvino"


def stream_runtimes() -> list[str]:
    """The runtimes that load an .onnx file, from the runtime registry."""
    from runtimes import registry

    return registry.with_model_files(["onnx"])


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import positive
    from validation.perf import stream_latency

    parser = subparsers.add_parser(
        "stream-latency",
        help="one image and a batch through predictors opened with streams=1 and streams=N",
        description=stream_latency.__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("model", type=Path, help="an exported .onnx file (e.g. build/lvvit_s.onnx from `make run`)")
    parser.add_argument(
        "--runtimes",
        default=DEFAULT_RUNTIMES,
        help=f"comma-separated: {', '.join(stream_runtimes())} (default {DEFAULT_RUNTIMES})",
    )
    parser.add_argument("--threads", type=positive, default=None, help="threads in all (default: all cores)")
    parser.add_argument("--streams", type=positive, default=None, help="N (default: the thread count)")
    parser.add_argument("--repeats", type=positive, default=15, help="timed runs per predictor and batch (default 15)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.set_defaults(func=main)


@dataclass(frozen=True)
class StreamOptions:
    model: Path
    runtimes: tuple[str, ...]
    threads: int
    streams: int
    repeats: int = 15
    json: Path | None = None


def main(args: Any) -> int:
    from runtimes import registry
    from validation.errors import ValidationError

    runtimes = tuple(registry.canonical(name) for name in args.runtimes.split(","))  # onnxruntime: ort's old name
    valid = stream_runtimes()
    unknown = set(runtimes) - set(valid)
    if unknown:
        raise ValidationError(f"--runtimes: unknown {sorted(unknown)}; valid: {', '.join(valid)}")
    threads = args.threads or len(os.sched_getaffinity(0))
    streams = args.streams or threads
    if streams < 2:
        raise ValidationError(
            f"--streams must be at least 2 to compare with streams=1 (got {streams} on {threads} threads)"
        )
    return run(StreamOptions(args.model, runtimes, threads, streams, args.repeats, args.json))


def run(o: StreamOptions) -> int:
    from validation.perf.stream_latency import compare_streams, render

    report = compare_streams(o.model, list(o.runtimes), o.threads, o.streams, repeats=o.repeats)
    if o.json:
        o.json.write_text(json.dumps(report, indent=2))
    print(render(report))
    return 0
