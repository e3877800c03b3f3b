"""Paddle model -> ONNX ModelProto: trace, paddle2onnx, constant folding, named I/O, metadata."""

from __future__ import annotations

import contextlib
import io
import os
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


@contextlib.contextmanager
def _captured_output() -> Iterator[io.StringIO]:
    """Capture stdout/stderr at the file-descriptor level: paddle2onnx's C++ core prints there directly."""
    captured = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.write(sink.read().decode("utf-8", "replace"))


def _run_paddle2onnx(program: Path, params: Path, opset: int) -> bytes:
    import paddle2onnx

    try:
        with _captured_output() as captured:
            raw = paddle2onnx.export(
                str(program),
                str(params),
                save_file=None,  # return the bytes; the kit folds, checks and writes itself
                opset_version=opset,
                auto_upgrade_opset=False,
                enable_onnx_checker=True,
                enable_optimize=True,
                verbose=False,
            )
    except Exception as exc:  # paddle2onnx raises bare errors from its C++ core
        raise ConversionError(f"paddle2onnx failed on {program}: {exc}\n{captured.getvalue()[-2000:]}") from exc
    if not raw:
        raise ConversionError(
            f"paddle2onnx returned an empty model for {program} while reporting success; its log:\n"
            f"{captured.getvalue()[-2000:]}"
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
