"""`python -m validation ov-layers FILE [FILE ...]`: each runtime's time per layer (`validation.checks.ov_layers`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    from validation.checks import ov_layers
    from validation.cli.options import deprecated_alias, positive

    parser = subparsers.add_parser(
        "ov-layers",
        help="OpenVINO's (or ONNX Runtime's) per-layer kernels and times of exported files",
        description=ov_layers.__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("files", nargs="+", type=Path, help="ONNX files to profile (e.g. the fp32 and int8 exports)")
    parser.add_argument("--runtime", action="append", choices=sorted(ov_layers.RUNTIMES), default=None,
                        help="openvino (default) and/or ort; repeatable")  # fmt: skip
    batch = parser.add_argument("--batch-size", type=positive, default=8, help="images per run (default 8)")
    deprecated_alias(parser, "--batch", batch)
    parser.add_argument("--threads", type=positive, default=2, help="threads (default 2)")
    repeats = parser.add_argument(
        "--repeats", type=positive, default=3, help="profiled runs after one warm-up (default 3)"
    )
    deprecated_alias(parser, "--runs", repeats)
    parser.add_argument("--openvino-precision", choices=("f32", "bf16"), default="f32",
                        help="openvino: the math of what a file leaves in float (default f32; bf16 needs a CPU with "
                        "avx512_bf16 or amx_bf16)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write every layer and the summaries here")
    parser.add_argument("--top", type=positive, default=12, help="node types listed per file (default 12)")
    parser.set_defaults(func=main)


@dataclass(frozen=True)
class LayersOptions:
    files: tuple[Path, ...]
    runtimes: tuple[str, ...]
    batch_size: int
    threads: int
    repeats: int
    json: Path | None
    top: int
    openvino_precision: str = "f32"


def main(args: Any) -> int:
    runtimes = tuple(args.runtime or ["openvino"])
    options = LayersOptions(
        tuple(args.files), runtimes, args.batch_size, args.threads, args.repeats, args.json, args.top,
        args.openvino_precision,
    )  # fmt: skip
    return run(options)


def run(options: LayersOptions) -> int:
    from validation.checks.ov_layers import profile, render
    from validation.errors import DatasetError

    missing = [str(f) for f in options.files if not f.is_file()]
    if missing:
        raise DatasetError(f"no such file: {', '.join(missing)}")
    o = options
    summaries, layers = profile(o.files, o.runtimes, o.batch_size, o.threads, o.repeats, o.openvino_precision)
    print(render(summaries, o.top))
    if o.json is not None:
        o.json.write_text(json.dumps({"summaries": [s.to_dict() for s in summaries], "layers": layers}, indent=1))
        print(f"wrote {o.json}")
    return 0
