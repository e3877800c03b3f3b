"""Paddle's own inference artifact (`paddle.jit.save`), also the input of paddle2onnx."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import paddle

from lvvit.metadata import INPUT_NAME


def save_inference_model(
    model: paddle.nn.Layer, prefix: Path, batch: int | None, in_place: bool = False
) -> dict[str, str]:
    """Trace `model` at its input size and save `prefix.json` / `prefix.pdmodel` + `prefix.pdiparams`.

    Returns Paddle's internal tensor names (which depend on a process-wide
    counter) mapped to the stable state-dict names, e.g. `linear_3.w_0` ->
    `blocks.0.attn.qkv.weight`, so that exported files can use the latter.
    `in_place=True` traces `model` itself (it is then static, not for eager use): no second copy of the weights.
    """
    size = model.preset.resolution
    spec = [paddle.static.InputSpec([batch, 3, size, size], "float32", INPUT_NAME)]
    # to_static converts a Layer in place; unless told otherwise, trace a copy so `model` stays eager.
    traced = model if in_place else copy.deepcopy(model)
    names = {tensor.name: key for key, tensor in traced.state_dict().items()}
    static = paddle.jit.to_static(traced, input_spec=spec, full_graph=True)
    with contextlib.redirect_stdout(io.StringIO()):
        paddle.jit.save(static, str(prefix))
    return names


def saved_files(prefix: Path) -> list[Path]:
    """The files paddle.jit.save wrote for `prefix`."""
    return sorted(p for p in prefix.parent.iterdir() if p.name.startswith(prefix.name + "."))


def model_file(prefix: Path) -> Path:
    """The program file paddle.jit.save wrote: `.json` (PIR, Paddle 3) or `.pdmodel` (legacy IR)."""
    for suffix in (".json", ".pdmodel"):
        candidate = prefix.with_name(prefix.name + suffix)
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{prefix}: paddle.jit.save wrote no .json or .pdmodel program")
