"""`python -m validation ort-fusions`: ONNX Runtime's fused CPU kernels against the plain ops they replace.

The kit's CPU sessions disable SkipLayerNormFusion and BiasGeluFusion
(`runtimes.ort_providers.CPU_DISABLED_FUSIONS`) because these kernels measured
slower than the plain ops. That is a property of an ONNX Runtime version: run
this after upgrading it. Each pair runs the same inputs, interleaved, and must
give the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FusionTiming:
    fused: str
    plain: str
    shape: tuple[int, ...]
    fused_ms: float
    plain_ms: float
    max_abs_diff: float

    @property
    def plain_speedup(self) -> float:
        return self.fused_ms / self.plain_ms


def _session(nodes, inputs: dict[str, tuple[int, ...]], weights: dict[str, np.ndarray], threads: int):
    """A probe of a graph of `nodes`, on the CPU as the kit's sessions run (the slow fusions off: otherwise the plain
    graph would be fused again)."""
    from onnx import TensorProto, helper, numpy_helper

    from runtimes.probe import ort_probe

    graph = helper.make_graph(
        nodes,
        "pair",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return ort_probe(helper.make_model(graph, opset_imports=opsets), threads=threads)


def _pairs(tokens: int, dim: int, hidden: int):
    """(fused name, plain name, fused nodes, plain nodes, inputs, weights) for each fusion the kit avoids."""
    from onnx import helper

    rng = np.random.default_rng(0)
    vec = {n: rng.standard_normal(dim).astype(np.float32) for n in ("gamma", "beta", "bias")}
    skip_inputs = {"x": (tokens, dim), "skip": (tokens, dim)}
    yield (
        "SkipLayerNormalization",
        "Add+Add+LayerNormalization",
        [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"],
                          domain="com.microsoft", epsilon=1e-5)],
        [helper.make_node("Add", ["x", "bias"], ["biased"]), helper.make_node("Add", ["biased", "skip"], ["sum"]),
         helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)],
        skip_inputs,
        vec,
    )  # fmt: skip
    gelu_bias = {"bias": rng.standard_normal(hidden).astype(np.float32)}
    yield (
        "BiasGelu",
        "Add+Gelu",
        [helper.make_node("BiasGelu", ["h", "bias"], ["y"], domain="com.microsoft")],
        [helper.make_node("Add", ["h", "bias"], ["biased"]),
         helper.make_node("Gelu", ["biased"], ["y"], domain="com.microsoft")],
        {"h": (tokens, hidden)},
        gelu_bias,
    )  # fmt: skip


def compare_fusions(
    batch: int = 8, tokens: int = 197, dim: int = 384, hidden: int = 1152, threads: int = 2, repeats: int = 50
) -> list[FusionTiming]:
    """Median milliseconds of each fused kernel and its plain expansion, timed alternately on the same input."""
    rng = np.random.default_rng(1)
    results = []
    for fused_name, plain_name, fused_nodes, plain_nodes, inputs, weights in _pairs(tokens, dim, hidden):
        shapes = {name: (batch, *shape) for name, shape in inputs.items()}
        feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
        fused = _session(fused_nodes, shapes, weights, threads)
        plain = _session(plain_nodes, shapes, weights, threads)
        diff = float(np.abs(fused.run(feeds)["y"] - plain.run(feeds)["y"]).max())
        seconds: dict[str, list[float]] = {"fused": [], "plain": []}
        for _ in range(repeats):
            for name, session in (("fused", fused), ("plain", plain)):
                start = time.perf_counter()
                session.run(feeds)
                seconds[name].append(time.perf_counter() - start)
        ms = {name: float(np.median(s)) * 1e3 for name, s in seconds.items()}
        results.append(
            FusionTiming(fused_name, plain_name, tuple(shapes[next(iter(shapes))]), ms["fused"], ms["plain"], diff)
        )
    return results


def render(timings: list[FusionTiming]) -> list[str]:
    """The Markdown table of `compare_fusions`'s pairs."""
    lines = ["| fused kernel | ms | plain ops | ms | plain is faster by | max abs diff |", "|---|---|---|---|---|---|"]
    for t in timings:
        lines.append(
            f"| {t.fused} {list(t.shape)} | {t.fused_ms:.3f} | {t.plain} | {t.plain_ms:.3f} | "
            f"{t.plain_speedup:.2f}x | {t.max_abs_diff:.1e} |"
        )
    return lines
