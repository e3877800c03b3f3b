"""Probes: an ONNX graph whose extra outputs are already marked, run on one runtime, outputs by name.

Polygraphy's loader/runner split: the caller builds the graph (marks the
intermediate tensors it wants as outputs, cuts it, adds inputs: see
`exporters.onnx.stage_map.with_outputs`), and a probe only opens and runs it,
with the same session settings as the runtime's predictor (`ort.ort_session`,
`ov.compile_config`). Locate's stage comparison, accuracy control's
measurements and the per-layer timing tools run their graphs through here, so
that every session of the kit is opened in `runtimes/`.

    with open_probe(graph, "ort", threads=2) as probe:
        values = probe.run(batch)  # output name -> array, for every output of the graph

Which runtimes have a probe is the registry's `probe` field (`registry.with_extra_outputs()`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .errors import ConfigurationError, ModelFileError, PredictorClosedError

Graph = Any  # an onnx.ModelProto, its serialized bytes, or the path of an .onnx file


def _source(graph: Graph) -> str | Path | bytes:
    if isinstance(graph, (str, Path, bytes)):
        return graph
    if hasattr(graph, "SerializeToString"):
        return graph.SerializeToString()
    raise ConfigurationError(f"a probe takes an onnx.ModelProto, its bytes or a path, got {type(graph).__name__}")


class Probe:
    """An opened graph: `run(feed)` -> output name -> array. Use as a context manager, or call `close()`."""

    runtime = "abstract"

    def __init__(self, inputs: Mapping[str, list[Any]], outputs: Sequence[str], details: dict[str, Any]) -> None:
        self.inputs = list(inputs)
        self.input_shapes = dict(inputs)  # input name -> dims (an int, or a name/None where dynamic)
        self.outputs = list(outputs)
        self._details = details
        self._closed = False

    def run(self, feed: np.ndarray | Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, Any]:
        """The values of `outputs` (default: every output) for `feed` (one batch for the first input, or name ->
        array for several inputs)."""
        if self._closed:
            raise PredictorClosedError(f"this {self.runtime} probe is closed")
        values = dict(feed) if isinstance(feed, Mapping) else {self.inputs[0]: feed}
        wanted = list(outputs) if outputs is not None else self.outputs
        unknown = [name for name in wanted if not self.has(name)]
        if unknown:
            raise ConfigurationError(
                f"{self.runtime} probe: no output(s) {unknown[:5]}; the graph has {self.outputs[:10]}"
            )
        return self._run(values, wanted)

    def has(self, name: str) -> bool:
        """Whether the opened graph has an output called `name` (a runtime may fold a marked tensor away)."""
        return name in self.outputs

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, **self._details}

    def _run(self, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the session; later runs raise `PredictorClosedError`."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OrtProbe(Probe):
    """A graph on ONNX Runtime (the CPU provider unless `device` says otherwise), as `OrtPredictor` opens it."""

    runtime = "ort"

    def __init__(self, session: Any, ort: Any) -> None:
        self._session = session
        super().__init__(
            {i.name: list(i.shape) for i in session.get_inputs()},
            [o.name for o in session.get_outputs()],
            {"providers": session.get_providers(), "versions": {"onnxruntime": ort.__version__}},
        )

    def _run(self, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, Any]:
        return dict(zip(outputs, self._session.run(outputs, feed), strict=True))

    def end_profiling(self) -> Path:
        """The profile file of a probe opened with `profile_prefix` (ONNX Runtime's JSON trace)."""
        return Path(self._session.end_profiling())

    def _release(self) -> None:
        self._session = None


def ort_probe(
    graph: Graph,
    *,
    threads: int | None = None,
    device: str = "cpu",
    profile_prefix: str | Path | None = None,
    optimize: bool = True,
) -> OrtProbe:
    """`graph` on ONNX Runtime with the kit's session settings (`runtimes.ort.ort_session`)."""
    from .ort import import_onnxruntime, ort_session

    ort = import_onnxruntime()
    session = ort_session(
        _source(graph), device, threads=threads, profile_prefix=profile_prefix, optimize=optimize, name="the graph"
    )
    return OrtProbe(session, ort)


class OpenVinoProbe(Probe):
    """A graph compiled by OpenVINO (one infer request, so one caller at a time)."""

    runtime = "openvino"

    def __init__(self, compiled: Any, ov: Any, device: str, precision: str, onnx_outputs: Sequence[str] = ()) -> None:
        self._request = compiled.create_infer_request()
        # each output by every name its tensor has (OpenVINO keeps the ONNX names of a marked output, beside its own)
        self._ports = {name: port for port in compiled.outputs for name in port.get_names()}
        inputs = {
            port.get_any_name(): [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            for port in compiled.inputs
        }
        outputs = [_onnx_name(port, onnx_outputs) for port in compiled.outputs]
        details = {"device": device, "inference_precision_hint": precision, "versions": {"openvino": ov.__version__}}
        super().__init__(inputs, outputs, details)

    def has(self, name: str) -> bool:
        return name in self._ports

    def _run(self, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, Any]:
        self._request.infer(feed)
        return {name: np.array(self._request.get_tensor(self._ports[name]).data) for name in outputs}

    def profiling_info(self) -> list[Any]:
        """OpenVINO's per-layer counters of the last run (a probe opened with `perf_counters=True`)."""
        return list(self._request.get_profiling_info())

    def _release(self) -> None:
        self._request = None


def _onnx_name(port: Any, onnx_outputs: Sequence[str]) -> str:
    """The graph's own (ONNX) name of an OpenVINO output, when known; else OpenVINO's."""
    names = port.get_names()
    return next((name for name in onnx_outputs if name in names), port.get_any_name())


def openvino_probe(
    graph: Graph,
    *,
    threads: int | None = None,
    device: str = "CPU",
    precision: str = "f32",
    streams: int = 1,
    perf_counters: bool = False,
) -> OpenVinoProbe:
    """`graph` compiled by OpenVINO with the kit's settings (`runtimes.ov.compile_config`), precision checked."""
    from .ov import _import_openvino, compile_checked, compile_config

    ov = _import_openvino()
    core = ov.Core()
    source = _source(graph)
    try:
        model = core.read_model(source, b"") if isinstance(source, bytes) else core.read_model(str(source))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses from C++
        raise ModelFileError(f"OpenVINO cannot read this graph ({type(exc).__name__}: {str(exc)[:500]})") from exc
    config = compile_config(device, precision, threads, streams, perf_counters=perf_counters)
    compiled = compile_checked(core, model, device, config, "the graph")
    onnx_outputs = [o.name for o in graph.graph.output] if hasattr(graph, "graph") else []
    return OpenVinoProbe(compiled, ov, device, config["INFERENCE_PRECISION_HINT"], onnx_outputs)


def open_probe(graph: Graph, runtime: str = "ort", **options: Any) -> Probe:
    """`graph` (its extra outputs already marked) opened on `runtime`, with that runtime's probe `options`."""
    row = registry.get(runtime)
    if row.probe is None:
        raise ConfigurationError(
            f"runtime {runtime!r} cannot expose a graph's tensors; valid: {', '.join(registry.with_extra_outputs())}"
        )
    module, _, function = row.probe.partition(":")
    return getattr(importlib.import_module(module), function)(graph, **options)
