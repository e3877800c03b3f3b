"""Command-line options shared by the subcommands, and their translation into library arguments."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lvvit.common.flags import deprecated_alias, note_deprecated
from lvvit.presets import get_preset, list_presets
from runtimes import registry
from runtimes.spec import read_model_metadata
from validation.core.runners import ModelSource, RuntimeOptions, spec_from_metadata
from validation.engines.reference_cache import ReferenceCache, reference_key
from validation.errors import DatasetError, ModelSourceError

if TYPE_CHECKING:
    from validation.run.drift import DriftInputs


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
    add_limit(
        inputs,
        "only N images of --images, spread evenly over it in path (or label-file) order: a folder sorted by "
        "class keeps every class",
    )
    add_workers(inputs)


def add_images_folder(parser: argparse.ArgumentParser, what: str) -> None:
    """--images DIR, required, for the commands that read a folder (accuracy, reference); the old positional
    DATA still works, with a deprecation note (`images_folder`)."""
    parser.add_argument("--images", type=Path, default=None, metavar="DIR", help=what + " (required)")
    parser.add_argument("data", type=Path, nargs="?", default=None, help=argparse.SUPPRESS)


def images_folder(args: argparse.Namespace) -> Path:
    """--images, or the deprecated positional DATA of accuracy and reference."""
    if args.data is not None:
        if args.images is not None:
            raise DatasetError(f"give the folder once: --images {args.images} (the positional {args.data} is old)")
        note_deprecated(f"python -m validation {args.command}", "the positional DATA", "--images DATA")
        return args.data
    if args.images is None:
        raise DatasetError(f"{args.command} needs --images DIR")
    return args.images


def add_limit(group: Any, what: str = "only N images, spread evenly over the folder") -> argparse.Action:
    return group.add_argument("--limit", type=positive, default=None, metavar="N", help=what)


def add_workers(group: Any, what: str = "threads reading images") -> None:
    group.add_argument("--workers", type=at_most(64), default=4, help=f"{what}, 1..64 (default 4)")


def add_work_dir(
    group: Any,
    default: Path | None = None,
    shown: str = "REPORT_DIR/models",
    what: str = "where exported models go",
    old: tuple[str, ...] = (),
) -> None:
    """--work-dir; `old`: the command's former spellings (--workdir, --work), hidden."""
    action = group.add_argument("--work-dir", type=Path, default=default, help=f"{what} (default {shown})")
    for spelling in old:
        deprecated_alias(group, spelling, action)


def add_progress(group: Any, what: str = "no progress bar on stderr") -> None:
    group.add_argument("--no-progress", action="store_true", help=what)


def add_model_options(parser: argparse.ArgumentParser, exported: bool = True, paddle_inference: bool = True) -> None:
    """The model: --preset (+ --arch ...), or with `exported` the runtimes' files --onnx / --paddle-inference
    and --work-dir where exports go (reference runs native Paddle only, so it has none of those)."""
    title = "the runtimes load its exported files" if exported else "the only one this command runs"
    group = parser.add_argument_group(f"model (native Paddle is the reference; {title})")
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
    if not exported:
        return
    group.add_argument(
        "--onnx",
        type=Path,
        default=None,
        help=f"exported .onnx for {'/'.join(registry.with_model_files(['onnx']))} (default: export the preset into "
        "--work-dir); "
        "without --preset, the preset, resolution and architecture come from its metadata",
    )
    if paddle_inference:
        _add_paddle_inference(group)
    add_work_dir(group)


def _add_paddle_inference(group: Any) -> None:
    group.add_argument(
        "--paddle-inference",
        type=Path,
        default=None,
        metavar="PATH",
        help="Paddle inference artifact (.json/.pdiparams or its stem) for paddle-inference (default: export it)",
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


def add_report_dir(group: Any, default: str = "build/reports", old: tuple[str, ...] = ()) -> None:
    """--report-dir, the folder of the reports of every command; `old`: the command's former spellings, hidden.

    A `default` that is not a path ("the work dir", "beside the JSON") leaves it None for the command to fill.
    """
    default_path = Path(default) if default == "build/reports" else None
    action = group.add_argument(
        "--report-dir", type=Path, default=default_path, help=f"folder of the reports (default {default})"
    )
    for spelling in old:
        deprecated_alias(group, spelling, action)


def add_report_name(group: Any, default: str) -> None:
    group.add_argument(
        "--name", type=report_name, default=None, help=f"file stem of the reports, without path separators ({default})"
    )


def add_report_options(parser: argparse.ArgumentParser, tolerance_help: str) -> None:
    group = parser.add_argument_group("report")
    add_report_dir(group)
    add_report_name(
        group,
        "default: <command>_<preset>_<res>, then the export's precision and graph kind where not fp32 / exported, "
        "e.g. drift_lvvit_s_224_int8",
    )
    group.add_argument(
        "--tolerance", action="append", default=[], metavar="NAME=VALUE", help=tolerance_help + " (repeatable)"
    )
    add_progress(group)


def add_engine_options(parser: argparse.ArgumentParser, reference_cache: bool = True) -> None:
    """--engine (the engine registry's names), --ray-address, --shard-size; and --reference-cache for the commands
    that compare with Paddle."""
    from validation.engines.local import ENGINES

    group = parser.add_argument_group("engine (validation at scale)")
    group.add_argument(
        "--engine",
        choices=list(ENGINES),
        default="local",
        help="; ".join(f"{kind.name}: {kind.help}" for kind in ENGINES.values()) + " (default local)",
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


# -- the typed options: the command line read once, in `<Kind>Options.from_args`; nothing below reads `args` --


@dataclass(frozen=True)
class ModelOptions:
    """The model of a command line: a preset (+ overrides) or the metadata of an exported file."""

    preset: str | None = None
    resolution: int | None = None
    weights: Path | None = None
    arch: tuple[str, ...] = ()
    checkpoint_key: str | None = None
    seed: int = 0
    onnx: Path | None = None
    paddle_inference: Path | None = None
    work_dir: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        given = vars(args)
        return cls(
            preset=args.preset,
            resolution=args.resolution,
            weights=args.weights,
            arch=tuple(given.get("arch", ())),
            checkpoint_key=given.get("checkpoint_key"),
            seed=given.get("seed", 0),
            onnx=given.get("onnx"),
            paddle_inference=given.get("paddle_inference"),
            work_dir=given.get("work_dir"),
        )


@dataclass(frozen=True)
class ImageOptions:
    """drift's and locate's inputs: --images or --synthetic, --limit, --workers."""

    images: Path | None
    synthetic: int | None
    limit: int | None
    workers: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ImageOptions:
        return cls(args.images, args.synthetic, args.limit, args.workers)

    def inputs(self, seed: int, default_synthetic: int) -> DriftInputs:
        from validation.run.drift import DriftInputs

        if self.limit is not None and self.images is None:
            raise DatasetError("--limit applies to --images")
        synthetic = self.synthetic if self.images is not None or self.synthetic is not None else default_synthetic
        return DriftInputs(self.images, None if self.images else synthetic, seed, self.limit)


@dataclass(frozen=True)
class ReportOptions:
    """Where the reports go and what they are called, the tolerance items, progress, and the command line."""

    report_dir: Path
    name: str | None = None
    tolerance: tuple[str, ...] = ()
    progress: bool = True
    command: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReportOptions:
        given = vars(args)
        return cls(
            report_dir=args.report_dir,
            name=given.get("name"),
            tolerance=tuple(given.get("tolerance", ())),
            progress=not given.get("no_progress", False),
            command=tuple(args.argv),
        )

    def stem(self, command: str, source: ModelSource) -> str:
        """--name, or `<command>_<preset>_<res>` and what sets the export apart: its precision and graph kind where
        they are not fp32 and "exported" (`drift_lvvit_s_224_int8`), so runs on an fp32 and an int8 file of one
        model in one report folder keep apart."""
        return self.name or "_".join(
            [command, source.spec.name, str(source.spec.resolution), *export_tags(source.onnx)]
        )


@dataclass(frozen=True)
class EngineOptions:
    """--engine, --ray-address, --shard-size and --reference-cache."""

    engine: str = "local"
    ray_address: str | None = None
    shard_size: int = 1000
    reference_cache: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineOptions:
        return cls(args.engine, args.ray_address, args.shard_size, vars(args).get("reference_cache"))


@dataclass(frozen=True)
class RunOptions:
    """drift's and accuracy's command line, typed: the model, the runtimes, the engine and the report."""

    model: ModelOptions
    runtimes: tuple[str, ...]
    runtime: RuntimeOptions
    engine: EngineOptions
    report: ReportOptions

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        return cls(
            ModelOptions.from_args(args),
            tuple(args.runtime or ["ort"]),
            runtime_options(args),
            EngineOptions.from_args(args),
            ReportOptions.from_args(args),
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


def model_source(model: ModelOptions, report_dir: Path) -> ModelSource:
    """The model the arguments describe: `--preset` (+ overrides), or the metadata of `--onnx`/`--paddle-inference`."""
    arch = parse_arch(list(model.arch))
    if model.preset:
        from lvvit import resolve_preset

        _check_arch_types(model.preset, arch)
        try:
            spec = resolve_preset(model.preset, model.resolution, **arch)
        except TypeError as exc:  # an unknown architecture field
            raise ModelSourceError(f"--arch: {exc}") from None
    else:
        exported = model.onnx or model.paddle_inference
        if exported is None:
            raise ModelSourceError(
                "say which model: --preset NAME (with --weights), or an exported --onnx / --paddle-inference file "
                "whose metadata names it"
            )
        if model.resolution is not None or arch:
            raise ModelSourceError("--resolution and --arch need --preset (an exported file's metadata has its own)")
        metadata = read_model_metadata(exported)
        if metadata is None:
            raise ModelSourceError(f"{exported}: has no LV-ViT kit metadata; pass --preset (and --resolution/--arch)")
        spec = spec_from_metadata(metadata)
    return ModelSource(
        spec=spec,
        weights=model.weights,
        checkpoint_key=model.checkpoint_key,
        seed=model.seed,
        onnx=model.onnx,
        paddle_inference=model.paddle_inference,
        work_dir=model.work_dir or report_dir / "models",
    )


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    own = {name: registry.options_from(vars(args), name) for name in registry.names()}
    return RuntimeOptions(batch_size=args.batch_size, threads=args.threads, own=own)


def export_tags(onnx: Path | None) -> list[str]:
    """The precision and graph kind of an exported file, where not the default, as safe file-name parts."""
    if onnx is None:  # the kit exports the portable fp32 graph itself
        return []
    from runtimes.onnx_file import graph_precision

    metadata = read_model_metadata(onnx)
    tags = [graph_precision(metadata)] + ([metadata.graph] if metadata is not None else [])
    # the metadata comes from the file, maybe a stranger's: only name characters reach the file name
    return [re.sub(r"[^A-Za-z0-9.-]", "-", tag)[:32] for tag in tags if tag not in ("fp32", "exported")]


@dataclass
class Kept:
    """What a run has put on disk so far, for the line an interrupt prints: the reports, the shards' folder."""

    written: dict[str, Path] = field(default_factory=dict)
    shards: Path | None = None


def interruptible(run: Callable[[Kept], int], report_dir: Path, work_dir: Path | None) -> int:
    """`run(kept)`, ended cleanly by SIGINT or SIGTERM with one line saying what was kept.

    `run` fills `kept.written` once the report set is in place (it is written as a unit, so it is all there or not)
    and `kept.shards` once it runs in shards.
    """
    from lvvit.common.interrupt import interrupts_exit, written

    kept = Kept()

    def line() -> str:
        # the set is renamed in before `run` can note it: the renames themselves are noted, with signals held
        placed = [path for path in written() if path.parent == report_dir and path.suffix == ".json"]
        if kept.written or placed:
            return f"the reports were written ({kept.written.get('json') or placed[0]})"
        shards = kept.shards
        return (
            f"no report written (older reports in {report_dir} are untouched); "
            f"models exported before the interrupt stay in {work_dir or report_dir / 'models'}"
            + (f"; finished shards stay in {shards}, for the same command to resume" if shards else "")
        )

    with interrupts_exit(line):
        return run(kept)


def print_written(written: dict[str, Path]) -> None:
    for kind, path in written.items():
        if not kind.startswith("png:"):
            print(f"wrote {path}")


def specs_and_cache(
    options: RunOptions, source: ModelSource, log: Callable[[str], None]
) -> tuple[dict[str, Any], ReferenceCache | None]:
    """The runtimes' specs of a drift/accuracy command line, and its `--reference-cache` (then without Paddle)."""
    from validation.core.runners import runner_specs

    names = list(options.runtimes)
    cache_dir = options.engine.reference_cache
    if cache_dir is None:
        return runner_specs(names, source, options.runtime, log), None
    cache = ReferenceCache.open(cache_dir, reference_key(source))
    return runner_specs(names, source, options.runtime, log, reference=False), cache
