"""The command line of `python -m serving`: parse, call one library function, print. A bad option exits 2 with
one line naming it; a typed kit error exits 1 with its message."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lvvit.errors import LvvitError
from runtimes import PredictorSpec, registry

from .config import Limits
from .errors import ServingSetupError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """The model and the predictor's own options (those of `OrtPredictor`, `OpenVinoPredictor`...)."""
    if positional:
        parser.add_argument("model", type=Path, help=".onnx file, or a Paddle inference artifact's .pdiparams")
    else:
        parser.add_argument("--model", type=Path, required=True, help=".onnx file or Paddle inference .pdiparams")
    # read when the parser is built, so a runtime registered after import is served too
    parser.add_argument(
        "--runtime", choices=registry.with_model_files(), default="ort", help="default: ort (ONNX Runtime)"
    )
    parser.add_argument("--device", help="the predictor's device (ort: cpu|cuda|tensorrt|auto; openvino: CPU|GPU)")
    parser.add_argument("--threads", type=_positive, help="the predictor's threads (default: the runtime's)")


def spec_from(args: argparse.Namespace, **extra: Any) -> PredictorSpec:
    options = {k: v for k, v in (("device", args.device), ("threads", args.threads)) if v is not None}
    return PredictorSpec.for_model(args.runtime, args.model, **options, **extra)


# flag, type, default, help: the server's limits (serve, bench)
_DEFAULTS = Limits()
LIMIT_FLAGS = (
    ("--max-batch", _positive, _DEFAULTS.max_batch, "images per predictor call, and per request"),
    ("--max-wait-ms", _non_negative_float, _DEFAULTS.max_wait_ms, "how long a batch waits to fill"),
    ("--max-queue", _positive, _DEFAULTS.max_queue, "images waiting at most; beyond: 503 + Retry-After"),
    ("--max-body-mb", _non_negative_float, _DEFAULTS.max_body_bytes / 2**20, "request body limit in MiB"),
)


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, kind, default, help_text in LIMIT_FLAGS:
        parser.add_argument(flag, type=kind, default=default, help=f"{help_text} (default {default:g})")


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 2**20),
    )


def _serve(args: argparse.Namespace) -> int:
    from .server import Endpoint, default_name

    name = args.name or default_name(args.model)
    endpoint = Endpoint(args.host, args.port, "debug" if args.debug else "info")
    if args.ray or args.ray_address:
        try:
            from .ray_host import RayOptions, serve_on_ray
        except ImportError as exc:
            raise ServingSetupError(f"--ray needs Ray Serve: pip install 'lvvit-deploy[serve-ray]' ({exc})") from None
        ray = RayOptions(args.ray_address, args.replicas, args.max_replicas)
        return serve_on_ray(spec_from(args), name, limits_from(args), endpoint, ray)
    from .server import serve

    return serve(spec_from(args), name, limits_from(args), endpoint)


def _serve_parser(sub: Any) -> None:
    parser = sub.add_parser("serve", help="serve a model over the Open Inference Protocol (HTTP)")
    add_model_arguments(parser)
    parser.add_argument("--name", help="the model's name in URLs (default: the file stem)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free one")
    add_limit_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="one log line per request")
    parser.add_argument("--ray", action="store_true", help="host the app on Ray Serve, Ray embedded here")
    parser.add_argument("--ray-address", help="join this Ray cluster (auto, HOST:6379) instead; implies --ray")
    parser.add_argument("--replicas", type=_positive, default=1, help="Ray Serve replicas (default 1)")
    parser.add_argument("--max-replicas", type=_positive, help="Ray Serve: autoscale from --replicas up to this")
    parser.set_defaults(run=_serve)


def _triton(args: argparse.Namespace) -> int:
    from .triton import TritonOptions, write_triton_repository

    options = TritonOptions(args.backend, args.instance, args.instances, args.max_batch, args.max_queue_delay_us)
    folder = write_triton_repository(args.model, args.repo, args.name, options)
    print(f"wrote {folder / 'config.pbtxt'} and {folder / '1' / 'model.onnx'}")
    return 0


def _triton_parser(sub: Any) -> None:
    from .triton import BACKENDS, INSTANCE_KINDS, TritonOptions

    defaults = TritonOptions()
    parser = sub.add_parser("triton-repo", help="write a Triton model repository entry for an .onnx export")
    parser.add_argument("model", type=Path, help="the .onnx file")
    parser.add_argument("--repo", type=Path, required=True, help="the repository folder (REPO/<name>/...)")
    parser.add_argument("--name", help="the model's name in Triton (default: the file stem)")
    parser.add_argument("--backend", choices=BACKENDS, default=defaults.backend, help="default onnxruntime")
    parser.add_argument("--instance", choices=sorted(INSTANCE_KINDS), default=defaults.instance, help="default cpu")
    parser.add_argument("--instances", type=_positive, default=defaults.instances, help="instances (default 1)")
    parser.add_argument(
        "--max-batch",
        type=_positive,
        default=defaults.max_batch_size,
        help=f"max_batch_size for a dynamic-batch graph (default {defaults.max_batch_size})",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=defaults.max_queue_delay_us,
        help=f"dynamic batching's wait (default {defaults.max_queue_delay_us})",
    )
    parser.set_defaults(run=_triton)


def _predict(args: argparse.Namespace) -> int:
    from .folder import predict_folder

    if (args.images is None) == (args.source is None):
        args.parser.error("name the images once: --images DIR (a folder, or a text file listing image paths)")
    source = args.images if args.images is not None else args.source
    with spec_from(args, batch_size=args.batch_size).open() as predictor:
        summary = predict_folder(
            predictor,
            source,
            args.out,
            topk=args.topk,
            resume=args.resume,
            limit=args.limit,
            progress=not args.no_progress,
        )
    return 1 if summary.failed and len(summary.failed) == summary.written else 0


def _predict_parser(sub: Any) -> None:
    parser = sub.add_parser("predict", help="predict a folder (or a list of images) into JSON Lines or CSV")
    parser.add_argument(
        "--images", type=Path, help="a folder of images (recursive), or a text file listing image paths"
    )
    parser.add_argument("source", type=Path, nargs="?", help=argparse.SUPPRESS)  # the old spelling of --images
    add_model_arguments(parser, positional=False)
    parser.add_argument("--out", type=Path, required=True, help="preds.jsonl or preds.csv")
    parser.add_argument("--topk", type=_positive, default=5, help="classes per image (default 5)")
    parser.add_argument("--batch-size", type=_positive, default=8, help="images per predictor call (default 8)")
    parser.add_argument("--resume", action="store_true", help="continue an existing output, skipping its images")
    parser.add_argument("--limit", type=_positive, help="only the first N images (in path order)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_predict, parser=parser)


def _bench(args: argparse.Namespace) -> int:
    import json

    from .bench import markdown, run_bench
    from .server import default_name

    limits = limits_from(args)
    server_args = [str(args.model), "--runtime", args.runtime, "--max-batch", str(limits.max_batch)]
    server_args += ["--max-wait-ms", str(limits.max_wait_ms), "--max-queue", str(limits.max_queue)]
    server_args += [f"--{k}={v}" for k, v in (("device", args.device), ("threads", args.threads)) if v is not None]
    result = run_bench(
        default_name(args.model), spec_from(args), server_args, limits, args.concurrency, args.requests, args.seconds
    )
    print(markdown(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0 if result.server_exit == 0 and all(not level.errors for level in result.levels) else 1


def _bench_parser(sub: Any) -> None:
    parser = sub.add_parser("bench", help="load benchmark on 127.0.0.1: the server against the in-process predictor")
    add_model_arguments(parser)
    add_limit_arguments(parser)
    parser.add_argument("--concurrency", type=_positive, nargs="+", default=[1, 4, 16], help="default 1 4 16")
    parser.add_argument("--requests", type=_positive, default=400, help="requests per level at most (default 400)")
    parser.add_argument("--seconds", type=_positive, default=60, help="seconds per level at most (default 60)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.set_defaults(run=_bench)


PARSERS: list[Callable[[Any], None]] = [_serve_parser, _predict_parser, _triton_parser, _bench_parser]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.split(".")[0] + ".")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except LvvitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
