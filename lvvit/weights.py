"""Weights: read `.pdparams`, `.safetensors` and the authors' `.pth.tar`; convert; fit; save.

PyTorch -> Paddle layout: Linear weights are transposed ([out, in] -> [in, out]),
BatchNorm `running_mean` / `running_var` become `_mean` / `_variance`, and
`num_batches_tracked` is dropped. Loading at another resolution resamples the
grid part of `pos_embed` bicubically and keeps the class token's part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import paddle.nn as nn

from .atomic import atomic_output
from .errors import WeightsError, WeightsMismatchError
from .provenance import sha256_of
from .safe_pickle import load_pickle_data, load_torch_checkpoint

StateDict = dict[str, np.ndarray]

TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt")
CHECKPOINT_KEYS = ("state_dict", "model", "state_dict_ema")
_PADDLE_STRUCTURE_KEY = "StructuredToParameterName@@"


@dataclass(frozen=True)
class WeightsInfo:
    """Where the weights came from, for artifacts and reports."""

    file_name: str
    sha256: str
    layout: str  # "torch" or "paddle": the layout the file was stored in
    checkpoint_key: str | None
    resampled_pos_embed: tuple[int, int] | None  # (old grid, new grid) when resampled

    def to_dict(self) -> dict[str, object]:
        return {
            "file_name": self.file_name,
            "sha256": self.sha256,
            "layout": self.layout,
            "checkpoint_key": self.checkpoint_key,
            "resampled_pos_embed": list(self.resampled_pos_embed) if self.resampled_pos_embed else None,
        }


def _as_state_dict(obj: object, path: Path, checkpoint_key: str | None) -> tuple[StateDict, str | None]:
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    if checkpoint_key is not None:
        if checkpoint_key not in obj:
            raise WeightsError(f"{path}: no {checkpoint_key!r} in the checkpoint; it holds {sorted(map(str, obj))}")
        obj, used = obj[checkpoint_key], checkpoint_key
    else:
        used = next((k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if used is not None:
            obj = obj[used]
    state: StateDict = {}
    for key, value in obj.items():
        if key == _PADDLE_STRUCTURE_KEY:
            continue
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array")
        if value.dtype == object:
            raise WeightsError(f"{path}: entry {key!r} is an object array, not numbers")
        state[key.removeprefix("module.")] = value
    if not state:
        raise WeightsError(f"{path}: holds no weights")
    return state, used


def read_state_dict(path: str | Path, checkpoint_key: str | None = None) -> tuple[StateDict, str, str | None]:
    """Read a weights file as data: (name -> array, its layout "torch" | "paddle", the key it was under)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open
        from safetensors.numpy import load_file

        try:
            with safe_open(str(path), framework="np") as handle:
                meta = handle.metadata() or {}
            raw = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
        layout = "torch" if meta.get("format") == "pt" else "paddle"
        state, used = _as_state_dict(raw, path, checkpoint_key)
        return state, layout, used
    if name.endswith(".pdparams"):
        state, used = _as_state_dict(load_pickle_data(path), path, checkpoint_key)
        return state, "paddle", used
    if name.endswith(TORCH_SUFFIXES):
        state, used = _as_state_dict(load_torch_checkpoint(path), path, checkpoint_key)
        return state, "torch", used
    raise WeightsError(
        f"{path}: unknown weights format; expected .pdparams, .safetensors or a PyTorch checkpoint "
        f"({', '.join(TORCH_SUFFIXES)})"
    )


def linear_weight_names(model: nn.Layer) -> set[str]:
    """State-dict names of the model's nn.Linear weights (the ones whose layout differs from PyTorch)."""
    return {
        f"{name}.weight" if name else "weight"
        for name, layer in model.named_sublayers()
        if isinstance(layer, nn.Linear)
    }


def torch_to_paddle(state: StateDict, linear_weights: set[str]) -> StateDict:
    """Rename and transpose a PyTorch-layout state dict into Paddle's layout."""
    out: StateDict = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith(".running_mean"):
            key = key[: -len("running_mean")] + "_mean"
        elif key.endswith(".running_var"):
            key = key[: -len("running_var")] + "_variance"
        if key in linear_weights and value.ndim == 2:
            value = np.ascontiguousarray(value.T)
        out[key] = value
    return out


def resample_pos_embed(pos_embed: np.ndarray, new_grid: int) -> np.ndarray:
    """[1, 1 + g*g, C] -> [1, 1 + new_grid^2, C]: bicubic on the grid, class token kept."""
    cls_part, grid_part = pos_embed[:, :1], pos_embed[:, 1:]
    old_grid = math.isqrt(grid_part.shape[1])
    if old_grid * old_grid != grid_part.shape[1]:
        raise WeightsError(f"pos_embed has {grid_part.shape[1]} grid tokens, not a square grid")
    channels = grid_part.shape[-1]
    grid = paddle.to_tensor(grid_part.reshape(1, old_grid, old_grid, channels).transpose(0, 3, 1, 2).astype(np.float32))
    grid = nn.functional.interpolate(grid, size=[new_grid, new_grid], mode="bicubic", align_corners=False)
    grid_np = grid.numpy().transpose(0, 2, 3, 1).reshape(1, new_grid * new_grid, channels)
    return np.concatenate([cls_part.astype(np.float32), grid_np], axis=1).astype(pos_embed.dtype)


def check_fit(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise `WeightsMismatchError` listing missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or misshaped:
        lines = [f"{source}: the weights do not fit the model"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        raise WeightsMismatchError("\n".join(lines))


def load_weights(model: nn.Layer, path: str | Path, checkpoint_key: str | None = None) -> WeightsInfo:
    """Read, convert, resample and check a weights file, then load it into `model`."""
    path = Path(path)
    state, layout, used_key = read_state_dict(path, checkpoint_key)
    if layout == "torch":
        state = torch_to_paddle(state, linear_weight_names(model))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    resampled = None
    if "pos_embed" in state and "pos_embed" in expected and state["pos_embed"].shape != expected["pos_embed"]:
        old = state["pos_embed"]
        if old.ndim == 3 and old.shape[-1] == expected["pos_embed"][-1]:
            new_grid = math.isqrt(expected["pos_embed"][1] - 1)
            state["pos_embed"] = resample_pos_embed(old, new_grid)
            resampled = (math.isqrt(old.shape[1] - 1), new_grid)
    check_fit(state, expected, str(path))
    model_dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    model.set_state_dict({k: paddle.to_tensor(v, dtype=model_dtypes[k]) for k, v in state.items()})
    return WeightsInfo(path.name, sha256_of(path), layout, used_key, resampled)


def save_state_dict(model: nn.Layer, target: str | Path) -> Path:
    """Write the model's weights as `.pdparams` or `.safetensors` (Paddle layout), atomically."""
    target = Path(target)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    if target.name.endswith(".safetensors"):
        from safetensors.numpy import save_file

        with atomic_output(target) as tmp:
            save_file(state, str(tmp), metadata={"format": "paddle"})
    elif target.name.endswith(".pdparams"):
        with atomic_output(target) as tmp:
            paddle.save(model.state_dict(), str(tmp))
    else:
        raise WeightsError(f"{target}: choose a .pdparams or .safetensors output")
    return target
