"""Paddle program -> ONNX graph: paddle2onnx on the program alone, constant folding, named I/O and weights.

paddle2onnx holds about five copies of the weights at its peak (805 MiB for lvvit_s's 100 MiB, measured;
290 of them Paddle's import), so it converts the program without them: the weights stay graph inputs named
after Paddle's parameters, renamed to state-dict names here; the export then writes them into the file one
tensor at a time (`exporters.onnx.stream`). The few weights that only feed constant subgraphs (a bias
reshaped) are attached before a second folding pass, and the others are declared with their shapes while
folding, so the graph (nodes, initializers, inferred shapes) is the one a conversion with the weights gives.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from lvvit.common.interrupt import child_process
from lvvit.metadata import INPUT_NAME, OUTPUT_NAME

from ..errors import ConversionError

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
# An empty params file name: the program alone is converted (see the module's docstring).
_CONVERTER = """
import sys
import paddle2onnx
raw = paddle2onnx.export(sys.argv[1], "", save_file=None, opset_version=int(sys.argv[2]),
                         auto_upgrade_opset=False, enable_onnx_checker=True, enable_optimize=True, verbose=False)
with open(sys.argv[3], "wb") as out:
    out.write(raw or b"")
"""
_LOG_SHOWN = 3000  # characters of the converter's output kept in an error message


def _convert_in_child(program: Path, opset: int, output: Path) -> tuple[int, str]:
    """Run paddle2onnx on `program` into `output`; returns the child's exit status and its output."""
    process = subprocess.Popen(
        [sys.executable, "-c", _CONVERTER, str(program), str(opset), str(output)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    with process, child_process(process):  # killed if the export is interrupted
        try:
            out = process.communicate()[0]
        except BaseException:
            process.kill()
            raise
    return process.returncode, out.decode("utf-8", "replace")


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _run_paddle2onnx(program: Path, opset: int) -> bytes:
    output = program.with_name("model.onnx")
    code, log = _convert_in_child(program, opset, output)
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

    # ONNX Runtime's symbolic shape inference fails on these graphs (Polygraphy then falls back to ONNX's, which
    # is what folds them) after taking 730 MiB, measured: asking for ONNX's directly gives the same graph.
    with contextlib.redirect_stdout(io.StringIO()), no_dependency_autoinstall():
        return fold_constants(proto, error_ok=False, allow_onnxruntime_shape_inference=False)


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


def _unbound(proto: onnx.ModelProto) -> list[str]:
    """Names that nodes read but nothing defines (no input, initializer or node output): the weights, in order."""
    graph = proto.graph
    defined = {v.name for v in graph.input} | {i.name for i in graph.initializer} | {""}
    seen: dict[str, None] = {}
    for node in graph.node:
        seen.update((name, None) for name in node.input if name not in defined)
        defined.update(node.output)
    return list(seen)


def _weight_only_inputs(proto: onnx.ModelProto, weights: set[str]) -> set[str]:
    """The weights read by nodes whose every input is a weight or a constant (folding would compute them)."""
    constants = {i.name for i in proto.graph.initializer} | {""}
    found: set[str] = set()
    for node in proto.graph.node:
        if all(name in constants or name in weights for name in node.input):
            found.update(name for name in node.input if name in weights)
    return found


def _rename(proto: onnx.ModelProto, names: dict[str, str]) -> None:
    for init in proto.graph.initializer:
        init.name = names.get(init.name, init.name)
    for node in proto.graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]


@dataclass
class ConvertedGraph:
    """The ONNX graph of a Paddle program; `weights` (state-dict names, in order of use) are still to be bound."""

    proto: onnx.ModelProto
    weights: list[str]


def convert_program(
    program: Path,
    names: dict[str, str],
    shapes: dict[str, list[int]],
    value: Callable[[str], np.ndarray],
    opset: int,
    batch: int | None,
) -> ConvertedGraph:
    """Convert a saved Paddle program (`paddle_static.model_file`) without its parameters.

    `names` maps Paddle's parameter names to state-dict names (`save_inference_model`), `shapes` gives each
    state-dict entry's shape (float32), `value(state_dict_name)` a weight's array: called only for the few
    weights that feed constant subgraphs.
    """
    raw = _run_paddle2onnx(program, opset)
    try:
        proto = onnx.load_from_string(raw)
    except Exception as exc:
        raise ConversionError(f"paddle2onnx produced bytes that are not an ONNX model ({exc})") from exc
    if not proto.graph.node:
        raise ConversionError("paddle2onnx produced an ONNX model with no nodes")
    unbound = _unbound(proto)
    unknown = [name for name in unbound if name not in names]
    if unknown:
        raise ConversionError(f"the converted graph reads {len(unknown)} tensors that are neither weights nor "
                              f"computed: {', '.join(unknown[:8])}")  # fmt: skip
    _rename(proto, names)
    weights = [names[name] for name in unbound]
    # Declared as inputs while folding: shape inference then knows their shapes (and so every tensor's), and
    # folding leaves them alone, as it leaves the real input.
    proto.graph.input.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shapes[name]) for name in weights
    )
    proto = _fold_constants(proto)
    folded = _weight_only_inputs(proto, set(weights))
    if folded:  # attach them and fold again: the graph a conversion with the weights gives
        _drop_inputs(proto, folded)
        proto.graph.initializer.extend(numpy_helper.from_array(value(name), name) for name in sorted(folded))
        proto = _fold_constants(proto)
    _drop_inputs(proto, set(weights))
    weights = [name for name in _unbound(proto) if name in set(weights)]
    _name_inputs_and_outputs(proto, batch)
    return ConvertedGraph(proto, weights)


def _drop_inputs(proto: onnx.ModelProto, names: set[str]) -> None:
    kept = [value for value in proto.graph.input if value.name not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
