"""The runtime registry: one row per runtime, read by everything that names a runtime.

A row says what a runtime is: its name (the one word used everywhere: `ort`,
`openvino`, `paddle-inference`, `paddle`), its predictor class (a module and
class name, imported only when a predictor is opened, so that importing
`runtimes` never imports Paddle or OpenVINO), the kind of model file it loads,
its own options (from which the command-line flags are generated, as
Polygraphy's `runner_select` generates them from its registered runners), the
pip extra and distributions it comes from, and the probe that runs a graph
with extra outputs marked (`runtimes.probe`), when it has one.

A new runtime is two files: its backend (a `Predictor` subclass) and its row:

    register(Runtime("mine", "My runtime on the exported .onnx", "mypkg.backend", "MyPredictor", "onnx",
                     options=(Option("device", default="cpu", help="my device"),), distributions=("mine",)))

after which `PredictorSpec.for_model("mine", path)`, `--runtime mine` and `--mine-device` work.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ort_providers as eps
from .errors import ConfigurationError
from .ov import PRECISIONS as ov_precisions

MODEL_KINDS = ("onnx", "paddle-inference")  # the file kinds a runtime loads; None: built from a preset (eager)


@dataclass(frozen=True)
class Option:
    """One runtime option: the predictor's keyword `name`, and the flag `--<runtime>-<name>` made from it."""

    name: str
    type: Callable[[str], Any] = str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Runtime:
    """One runtime, as data (see the module docstring)."""

    name: str
    description: str
    module: str  # where the predictor class is (imported on first use)
    predictor: str  # the class name in `module`
    model_kind: str | None  # one of MODEL_KINDS; None: the eager model, built from a preset
    options: tuple[Option, ...] = ()
    extra: str | None = None  # the pip extra that installs it (`pip install 'lvvit-deploy[EXTRA]'`)
    distributions: tuple[str, ...] = ()  # its pip distributions, for the versions a report records
    probe: str | None = None  # "module:function" opening a graph with extra outputs marked; None: cannot
    aliases: tuple[str, ...] = field(default=())  # older names, still read from stored reports
    title: str = ""  # how tables name it ("ONNX Runtime"); default: its name

    def __post_init__(self) -> None:
        if self.model_kind is not None and self.model_kind not in MODEL_KINDS:
            raise ConfigurationError(
                f"runtime {self.name!r}: model kind {self.model_kind!r}; valid: {', '.join(MODEL_KINDS)} or None"
            )

    @property
    def label(self) -> str:
        return self.title or self.name

    @property
    def extra_outputs(self) -> bool:
        """Whether it can expose a graph's intermediate tensors as outputs (locate, accuracy control)."""
        return self.probe is not None

    @property
    def install_hint(self) -> str:
        if self.extra:
            return f"pip install 'lvvit-deploy[{self.extra}]'"
        return f"pip install {' '.join(self.distributions)}" if self.distributions else "installed with the kit"

    def predictor_class(self) -> Any:
        """The predictor class (this imports the runtime's module, and so the runtime)."""
        return getattr(importlib.import_module(self.module), self.predictor)

    def flag(self, option: Option) -> str:
        return f"--{self.name}-{option.name.replace('_', '-')}"

    def dest(self, option: Option) -> str:
        return f"{self.name}_{option.name}".replace("-", "_")

    def defaults(self) -> dict[str, Any]:
        return {option.name: option.default for option in self.options}


_ROWS: dict[str, Runtime] = {}


def register(row: Runtime, *, replace: bool = False) -> Runtime:
    """Add a runtime; its name (and each alias) must be new unless `replace`."""
    if not isinstance(row, Runtime):
        raise ConfigurationError(f"register takes a Runtime row, got {type(row).__name__}")
    taken = {row.name, *row.aliases} & ({*_ROWS} | {a for r in _ROWS.values() for a in r.aliases})
    if taken and not (replace and row.name in _ROWS):
        raise ConfigurationError(f"runtime name(s) {sorted(taken)} already registered")
    _ROWS[row.name] = row
    return row


def unregister(name: str) -> Runtime:
    """Remove a runtime (tests add and remove stand-ins); the removed row."""
    return _ROWS.pop(get(name).name)


def names() -> list[str]:
    """Every runtime's name, in registration order (the reference first)."""
    return list(_ROWS)


def rows() -> list[Runtime]:
    return list(_ROWS.values())


def canonical(name: str) -> str:
    """The registered name of `name` or of an older alias of it (`onnxruntime` -> `ort`); unknown names unchanged."""
    for row in _ROWS.values():
        if name in row.aliases:
            return row.name
    return name


def get(name: object) -> Runtime:
    """The row of `name`; `ConfigurationError` listing the valid names otherwise."""
    if isinstance(name, str) and name in _ROWS:
        return _ROWS[name]
    raise ConfigurationError(f"unknown runtime {str(name)[:80]!r}; valid: {', '.join(_ROWS)}")


def precision_note(name: str, precision: str = "f32") -> str:
    """How messages add a precision to a runtime's name: " at bf16" on OpenVINO, whose float parts run at the
    precision asked for; "" at f32 and on the runtimes that have no such option."""
    return f" at {precision}" if canonical(name) == "openvino" and precision != "f32" else ""


def described() -> dict[str, str]:
    """name -> description, now."""
    return {row.name: row.description for row in _ROWS.values()}


class _Descriptions(Mapping[str, str]):
    """`runtimes.RUNTIMES`: name -> description, a live view of the registry (a runtime registered later shows)."""

    def __getitem__(self, name: str) -> str:
        if name not in _ROWS:
            raise KeyError(name)
        return _ROWS[name].description

    def __iter__(self) -> Iterator[str]:
        return iter(list(_ROWS))

    def __len__(self) -> int:
        return len(_ROWS)

    def __repr__(self) -> str:
        return repr(described())


RUNTIMES: Mapping[str, str] = _Descriptions()


def with_model_files(kinds: Iterable[str] | None = None) -> list[str]:
    """The runtimes that load an exported model file (of one of `kinds`, when given)."""
    wanted = set(kinds) if kinds is not None else set(MODEL_KINDS)
    return [row.name for row in _ROWS.values() if row.model_kind in wanted]


def with_extra_outputs() -> list[str]:
    """The runtimes whose probe can expose intermediate tensors (locate, accuracy control)."""
    return [row.name for row in _ROWS.values() if row.extra_outputs]


def distributions() -> list[str]:
    """Every runtime's pip distributions, each once, in registration order."""
    return list(dict.fromkeys(d for row in _ROWS.values() for d in row.distributions))


# -- the command line: flags generated from the rows ---------------------------------------------------------------


def add_runtime_arguments(group: Any, only: Iterable[str] | None = None) -> None:
    """Add `--<runtime>-<option>` for every option of every runtime (or of `only`) to an argparse group."""
    for row in (get(name) for name in only) if only is not None else rows():
        for option in row.options:
            group.add_argument(
                row.flag(option),
                dest=row.dest(option),
                type=option.type,
                default=option.default,
                choices=option.choices,
                help=f"{option.help} (default {option.default})",
            )


def options_from(values: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The options of runtime `name` (predictor keyword -> value) from parsed flag values keyed by `dest`
    (the CLI passes `vars(args)`: no Namespace travels below it).

    A value that is missing takes the option's default.
    """
    row = get(name)
    return {o.name: values.get(row.dest(o), o.default) for o in row.options}


def model_files(name: str, path: str | Path) -> list[Path]:
    """The files runtime `name` loads for the model at `path`, the one to open first."""
    row = get(name)
    if row.model_kind == "onnx":
        from .onnx_file import read_onnx_file

        return [read_onnx_file(path)[0]]
    if row.model_kind == "paddle-inference":
        from .paddle_native import find_artifact

        program, params, sidecar = find_artifact(path)
        return [params, program] + ([sidecar] if sidecar.is_file() else [])
    raise ConfigurationError(f"runtime {name!r} takes no model file; valid: {', '.join(with_model_files())}")


# -- the kit's runtimes ----------------------------------------------------------------------------------------------

_THE_KITS = (
    Runtime(
        "paddle", "native Paddle, eager (the reference)", "runtimes.paddle_native", "PaddlePredictor", None,
        distributions=("paddlepaddle",), title="Paddle (eager)",
    ),
    Runtime(
        "ort", "ONNX Runtime on the exported .onnx", "runtimes.ort", "OrtPredictor", "onnx",
        options=(Option("device", default="cpu", help="ONNX Runtime device", choices=eps.DEVICES),),
        extra="cpu", distributions=("onnxruntime", "onnxruntime-gpu"), probe="runtimes.probe:ort_probe",
        aliases=("onnxruntime",), title="ONNX Runtime",
    ),
    Runtime(
        "openvino", "OpenVINO on the exported .onnx", "runtimes.ov", "OpenVinoPredictor", "onnx",
        options=(
            Option("device", default="CPU", help="OpenVINO device: CPU, GPU, GPU.1, NPU or AUTO"),
            Option("precision", default="f32", help="OpenVINO inference precision", choices=tuple(ov_precisions)),
        ),
        extra="openvino", distributions=("openvino",), probe="runtimes.probe:openvino_probe", title="OpenVINO",
    ),
    Runtime(
        "paddle-inference", "paddle.inference on the exported Paddle inference artifact", "runtimes.paddle_native",
        "PaddlePredictor", "paddle-inference", distributions=("paddlepaddle",), title="Paddle Inference",
    ),
)  # fmt: skip
for _row in _THE_KITS:
    register(_row)
REFERENCE = "paddle"  # native Paddle, eager: what every other runtime is measured against
