"""Paddle model -> ONNX ModelProto: trace, paddle2onnx, constant folding, named I/O, metadata."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from lvvit.metadata import INPUT_NAME, OUTPUT_NAME, ModelMetadata

from ..errors import ConversionError
from ..paddle_static import model_file, save_inference_model

BATCH_DIM = "batch"


@contextlib.contextmanager
def no_dependency_autoinstall() -> Iterator[None]:
    """Keep Polygraphy from pip-installing missing packages; restore the caller's setting after.

    paddle2onnx sets POLYGRAPHY_AUTOINSTALL_DEPS=1 for its own folding; the kit
    declares those packages instead and never lets an export install anything.
    """
    previous = os.environ.get("POLYGRAPHY_AUTOINSTALL_DEPS")
    os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = "0"
    from polygraphy import config as polygraphy_config

    previous_flag = polygraphy_config.AUTOINSTALL_DEPS
    polygraphy_config.AUTOINSTALL_DEPS = False
    try:
        yield
    finally:
        polygraphy_config.AUTOINSTALL_DEPS = previous_flag
        if previous is None:
            os.environ.pop("POLYGRAPHY_AUTOINSTALL_DEPS", None)
        else:
            os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = previous


# paddle2onnx runs in a child process: its C++ core aborts the whole process (SIGABRT) on some inputs
# (opsets it does not support, for one) and prints its reasons straight to file descriptors 1 and 2.
# A child survives the abort, and its pipes capture every line, which the error then shows.
_CONVERTER = """
import sys
import paddle2onnx
raw = paddle2onnx.export(sys.argv[1], sys.argv[2], save_file=None, opset_version=int(sys.argv[3]),
                         auto_upgrade_opset=False, enable_onnx_checker=True, enable_optimize=True, verbose=False)
with open(sys.argv[4], "wb") as out:
    out.write(raw or b"")
"""
_LOG_SHOWN = 3000  # characters of the converter's output kept in an error message


def _convert_in_child(program: Path, params: Path, opset: int, output: Path) -> tuple[int, str]:
    """Run paddle2onnx on `program`/`params` into `output`; returns the child's exit status and its output."""
    run = subprocess.run(
        [sys.executable, "-c", _CONVERTER, str(program), str(params), str(opset), str(output)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return run.returncode, run.stdout.decode("utf-8", "replace")


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _run_paddle2onnx(program: Path, params: Path, opset: int) -> bytes:
    output = program.with_name("model.onnx")
    code, log = _convert_in_child(program, params, opset, output)
    log = log.strip()[-_LOG_SHOWN:] or "(no output)"
    if code != 0:
        raise ConversionError(
            f"paddle2onnx failed on {program} at opset {opset} ({_exit_status(code)}); its output:\n{log}"
        )
    raw = output.read_bytes() if output.exists() else b""
    if not raw:
        raise ConversionError(
            f"paddle2onnx returned an empty model for {program} while reporting success; its output:\n{log}"
        )
    return raw


def _fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    from polygraphy.backend.onnx import fold_constants

    with contextlib.redirect_stdout(io.StringIO()):
        return fold_constants(proto, error_ok=False)


def _name_inputs_and_outputs(proto: onnx.ModelProto, batch: int | None) -> None:
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ConversionError(f"expected one input and one output, got {len(graph.input)} and {len(graph.output)}")
    if graph.input[0].name != INPUT_NAME:
        raise ConversionError(f"input is named {graph.input[0].name!r}, expected {INPUT_NAME!r}")
    old = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = OUTPUT_NAME
    graph.output[0].name = OUTPUT_NAME
    if batch is None:
        for value in (graph.input[0], graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM


def _use_state_dict_names(proto: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename initializers from Paddle's counter-based names to state-dict names (stable, readable)."""
    renamed = {}
    for init in proto.graph.initializer:
        if init.name in names:
            renamed[init.name] = names[init.name]
            init.name = names[init.name]
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]


def paddle_to_onnx(model, metadata: ModelMetadata) -> onnx.ModelProto:
    """Export `model` (an `LVViT` from `create_model`) at `metadata`'s batch and opset (metadata not stamped)."""
    with tempfile.TemporaryDirectory(prefix="lvvit-export-") as workdir:
        prefix = Path(workdir) / "model"
        names = save_inference_model(model, prefix, metadata.batch)
        raw = _run_paddle2onnx(model_file(prefix), prefix.with_name("model.pdiparams"), metadata.opset)
    try:
        proto = onnx.load_from_string(raw)
    except Exception as exc:
        raise ConversionError(f"paddle2onnx produced bytes that are not an ONNX model ({exc})") from exc
    if not proto.graph.node:
        raise ConversionError("paddle2onnx produced an ONNX model with no nodes")
    with no_dependency_autoinstall():
        proto = _fold_constants(proto)
    _name_inputs_and_outputs(proto, metadata.batch)
    _use_state_dict_names(proto, names)
    return proto
