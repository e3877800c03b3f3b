"""Command-line options shared by the subcommands, and their translation into library arguments."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lvvit.presets import get_preset, list_presets
from runtimes import registry
from runtimes.spec import read_model_metadata
from validation.core.runners import ModelSource, RuntimeOptions, spec_from_metadata
from validation.engines.reference_cache import ReferenceCache, reference_key
from validation.errors import ModelSourceError


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {number}")
    return number


def positive_list(value: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32); every item a positive integer."""
    try:
        return tuple(positive(item) for item in value.split(","))
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {value!r} ({exc})") from None


def non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def resolution(value: str) -> int:
    """An input size within the exporter's limit (a multiple of 16 is checked with the preset)."""
    from exporters.onnx.export import MAX_RESOLUTION

    number = positive(value)
    if number > MAX_RESOLUTION:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_RESOLUTION}, got {number}")
    return number


def at_most(limit: int) -> Callable[[str], int]:
    """A positive integer no larger than `limit` (threads, batches read ahead)."""

    def parse(value: str) -> int:
        number = positive(value)
        if number > limit:
            raise argparse.ArgumentTypeError(f"expected an integer within [1, {limit}], got {number}")
        return number

    return parse


def report_name(value: str) -> str:
    """A file stem inside --report-dir: no path separators, not empty, not '.' or '..'."""
    if not value or value in (".", "..") or any(sep in value for sep in ("/", "\\", "\0")):
        raise argparse.ArgumentTypeError(
            f"expected a file stem without path separators (the reports go into --report-dir), got {value!r}"
        )
    return value


def add_preset_options(group: Any, required: bool = False) -> None:
    """--preset, --resolution and --weights: the model of every command (drift, accuracy, reference, bench)."""
    group.add_argument("--preset", metavar="NAME", required=required, help=f"one of {', '.join(list_presets())}")
    group.add_argument(
        "--resolution", type=resolution, default=None, help="input size other than the preset's (at most 1024)"
    )
    group.add_argument("--weights", type=Path, default=None, help=".pdparams, .safetensors or .pth.tar; none: random")


def add_image_inputs(parser: argparse.ArgumentParser, default_synthetic: int) -> None:
    """The inputs of drift and locate: a folder of images or synthetic images, and how they are read."""
    inputs = parser.add_argument_group("inputs (one of)")
    source = inputs.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, default=None, help="a folder of images (searched recursively)")
    synthetic_help = f"N synthetic images (default {default_synthetic})"
    source.add_argument("--synthetic", type=positive, default=None, metavar="N", help=synthetic_help)
    inputs.add_argument("--limit", type=positive, default=None, help="only the first N images of --images")
    inputs.add_argument("--workers", type=at_most(64), default=4, help="threads reading images, 1..64 (default 4)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (native Paddle is the reference; the runtimes load its exported files)")
    add_preset_options(group)
    group.add_argument(
        "--arch",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="architecture override, e.g. embed_dim=32,depth=2,num_heads=4,num_classes=10 (repeatable)",
    )
    group.add_argument("--checkpoint-key", default=None, help="entry of a wrapped checkpoint")
    group.add_argument("--seed", type=int, default=0, help="seed of a random initialisation and of synthetic inputs")
    group.add_argument(
        "--onnx",
        type=Path,
        default=None,
        help=f"exported .onnx for {'/'.join(registry.with_model_files(['onnx']))} (default: export the preset into "
        "--work-dir); "
        "without --preset, the preset, resolution and architecture come from its metadata",
    )
    group.add_argument(
        "--paddle-inference",
        type=Path,
        default=None,
        metavar="PATH",
        help="Paddle inference artifact (.json/.pdiparams or its stem) for paddle-inference (default: export it)",
    )
    group.add_argument(
        "--work-dir", type=Path, default=None, help="where exported models go (default REPORT_DIR/models)"
    )


def add_runtime_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """--runtime (the registered runtimes), --batch-size, --threads, and each runtime's own flags (generated from
    its `runtimes.registry` row: `--ort-device`, `--openvino-precision`, ...)."""
    group = parser.add_argument_group("runtimes")
    group.add_argument(
        "--runtime",
        action="append",
        choices=registry.names(),
        default=None,
        help="runtime to validate, repeatable (default: ort); "
        + "; ".join(f"{row.name}: {row.description}" for row in registry.rows()),
    )
    group.add_argument("--batch-size", type=positive, default=batch_size, help=f"images per run (default {batch_size})")
    group.add_argument("--threads", type=positive, default=None, help="runtime threads (default: each runtime's own)")
    registry.add_runtime_arguments(group)


def add_report_options(parser: argparse.ArgumentParser, tolerance_help: str) -> None:
    group = parser.add_argument_group("report")
    group.add_argument(
        "--report-dir", type=Path, default=Path("build/reports"), help="folder of the reports (default build/reports)"
    )
    group.add_argument(
        "--name",
        type=report_name,
        default=None,
        help="file stem of the reports, without path separators (default: <command>_<preset>_<res>, then the "
        "export's precision and graph kind where not fp32 / exported, e.g. drift_lvvit_s_224_int8)",
    )
    group.add_argument(
        "--tolerance", action="append", default=[], metavar="NAME=VALUE", help=tolerance_help + " (repeatable)"
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def add_engine_options(parser: argparse.ArgumentParser, reference_cache: bool = True) -> None:
    """--engine, --ray-address, --shard-size; and --reference-cache for the commands that compare with Paddle."""
    group = parser.add_argument_group("engine (validation at scale)")
    group.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: threads in this process; ray: Ray Data with an actor pool per runtime (pip install "
        "'lvvit-deploy[ray]'), embedded on this machine unless --ray-address (default local)",
    )
    group.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster instead of starting Ray here: 'auto' (the cluster this machine is a node of, "
        "started with ray start) or HOST:6379; Ray Client (ray://) is refused, Ray Data does not run through it",
    )
    group.add_argument(
        "--shard-size",
        type=positive,
        default=1000,
        help="images per shard (default 1000); finished shards are kept in REPORT_DIR/NAME.shards, and the same "
        "command resumes an interrupted run from them",
    )
    if reference_cache:
        group.add_argument(
            "--reference-cache",
            type=Path,
            default=None,
            metavar="DIR",
            help="native Paddle's logits stored by 'python -m validation reference': Paddle is not run; a cache made "
            "with other weights or preprocessing is refused",
        )


def parse_arch(items: list[str]) -> dict[str, Any]:
    """`["embed_dim=32,depth=2", "mlp_ratio=3.0"]` -> typed values (int, float, bool, or a string)."""
    overrides: dict[str, Any] = {}
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            key, sep, raw = pair.partition("=")
            if not sep:
                raise ModelSourceError(f"--arch {pair!r}: expected KEY=VALUE")
            overrides[key.strip()] = _typed(raw.strip())
    return overrides


def _typed(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if "_" in raw:  # int("4_2") is 42 in Python; a stem name is not a number
        return raw
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _check_arch_types(preset: str, arch: dict[str, Any]) -> None:
    """Each override has the type of the preset's own value (an int is a fine float)."""
    base = get_preset(preset).arch
    for key, value in arch.items():
        current = getattr(base, key, None)
        if current is None:
            continue  # unknown names (and `order`) are reported by resolve_preset / the model
        expected = type(current)
        fits = isinstance(value, expected) or (expected is float and type(value) is int)
        if not fits or (expected is int and isinstance(value, bool)):
            raise ModelSourceError(f"--arch {key}={value!r}: expected {expected.__name__}, like {current!r}")


def model_source(args: argparse.Namespace) -> ModelSource:
    """The model the arguments describe: `--preset` (+ overrides), or the metadata of `--onnx`/`--paddle-inference`."""
    arch = parse_arch(args.arch)
    if args.preset:
        from lvvit import resolve_preset

        _check_arch_types(args.preset, arch)
        try:
            spec = resolve_preset(args.preset, args.resolution, **arch)
        except TypeError as exc:  # an unknown architecture field
            raise ModelSourceError(f"--arch: {exc}") from None
    else:
        exported = args.onnx or args.paddle_inference
        if exported is None:
            raise ModelSourceError(
                "say which model: --preset NAME (with --weights), or an exported --onnx / --paddle-inference file "
                "whose metadata names it"
            )
        if args.resolution is not None or arch:
            raise ModelSourceError("--resolution and --arch need --preset (an exported file's metadata has its own)")
        metadata = read_model_metadata(exported)
        if metadata is None:
            raise ModelSourceError(f"{exported}: has no LV-ViT kit metadata; pass --preset (and --resolution/--arch)")
        spec = spec_from_metadata(metadata)
    return ModelSource(
        spec=spec,
        weights=args.weights,
        checkpoint_key=args.checkpoint_key,
        seed=args.seed,
        onnx=args.onnx,
        paddle_inference=args.paddle_inference,
        work_dir=args.work_dir or args.report_dir / "models",
    )


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    own = {name: registry.options_from(args, name) for name in registry.names()}
    return RuntimeOptions(batch_size=args.batch_size, threads=args.threads, own=own)


def report_stem(args: argparse.Namespace, command: str, source: ModelSource) -> str:
    """--name, or `<command>_<preset>_<res>` and what sets the export apart: its precision and graph kind where
    they are not fp32 and "exported" (`drift_lvvit_s_224_int8`), so runs on an fp32 and an int8 file of one model
    in one report folder keep apart."""
    return args.name or "_".join([command, source.spec.name, str(source.spec.resolution), *export_tags(source.onnx)])


def export_tags(onnx: Path | None) -> list[str]:
    """The precision and graph kind of an exported file, where not the default, as safe file-name parts."""
    if onnx is None:  # the kit exports the portable fp32 graph itself
        return []
    from runtimes.onnx_file import graph_precision

    metadata = read_model_metadata(onnx)
    tags = [graph_precision(metadata)] + ([metadata.graph] if metadata is not None else [])
    # the metadata comes from the file, maybe a stranger's: only name characters reach the file name
    return [re.sub(r"[^A-Za-z0-9.-]", "-", tag)[:32] for tag in tags if tag not in ("fp32", "exported")]


def interruptible(run: Callable[[argparse.Namespace, dict[str, Path]], int], args: argparse.Namespace) -> int:
    """`run(args, written)`, ended cleanly by SIGINT or SIGTERM with one line saying what was kept.

    `run` fills `written` once the report set is in place (it is written as a unit, so it is all there or not).
    """
    from lvvit.common.interrupt import interrupts_exit

    written: dict[str, Path] = {}

    def kept() -> str:
        if written:
            return f"the reports were written ({written['json']})"
        work_dir = args.work_dir or args.report_dir / "models"
        shards = getattr(args, "shard_dir", None)  # set by commands that run in shards
        return (
            f"no report written (older reports in {args.report_dir} are untouched); "
            f"models exported before the interrupt stay in {work_dir}"
            + (f"; finished shards stay in {shards}, for the same command to resume" if shards else "")
        )

    with interrupts_exit(kept):
        return run(args, written)


def print_written(written: dict[str, Path]) -> None:
    for kind, path in written.items():
        if not kind.startswith("png:"):
            print(f"wrote {path}")


def specs_and_cache(args: Any, source: ModelSource, log: Any) -> tuple[dict[str, Any], ReferenceCache | None]:
    """The runtimes' specs of a drift/accuracy command line, and its `--reference-cache` (then without Paddle)."""
    from validation.core.runners import runner_specs

    names = args.runtime or ["ort"]
    if args.reference_cache is None:
        return runner_specs(names, source, runtime_options(args), log), None
    cache = ReferenceCache.open(args.reference_cache, reference_key(source))
    return runner_specs(names, source, runtime_options(args), log, reference=False), cache
