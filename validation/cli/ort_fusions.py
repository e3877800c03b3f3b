"""`python -m validation ort-fusions`: ONNX Runtime's fused kernels against plain ops (`validation.checks`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def add_parser(subparsers: Any) -> None:
    from validation.checks import ort_fusions
    from validation.cli.options import deprecated_alias, positive

    parser = subparsers.add_parser(
        "ort-fusions",
        help="ONNX Runtime's fused CPU kernels against the plain ops they replace",
        description=ort_fusions.__doc__.split("\n\n", 1)[1],
    )
    batch = parser.add_argument("--batch-size", type=positive, default=8, help="images per run (default 8)")
    deprecated_alias(parser, "--batch", batch)
    parser.add_argument("--tokens", type=positive, default=197, help="sequence length (default 197: lvvit_s at 224)")
    parser.add_argument("--dim", type=positive, default=384, help="embedding width (default 384: lvvit_s)")
    parser.add_argument("--hidden", type=positive, default=1152, help="MLP width (default 1152: lvvit_s)")
    parser.add_argument("--threads", type=positive, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--repeats", type=positive, default=50, help="timed runs of each (default 50)")
    parser.set_defaults(func=main)


@dataclass(frozen=True)
class FusionsOptions:
    batch_size: int = 8
    tokens: int = 197
    dim: int = 384
    hidden: int = 1152
    threads: int = 2
    repeats: int = 50


def main(args: Any) -> int:
    return run(FusionsOptions(args.batch_size, args.tokens, args.dim, args.hidden, args.threads, args.repeats))


def run(o: FusionsOptions) -> int:
    import onnxruntime

    from validation.checks.ort_fusions import compare_fusions, render

    timings = compare_fusions(o.batch_size, o.tokens, o.dim, o.hidden, o.threads, o.repeats)
    print(f"ONNX Runtime {onnxruntime.__version__}, CPU, {o.threads} threads, median of {o.repeats} runs")
    print("\n".join(render(timings)))
    return 0
