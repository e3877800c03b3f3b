"""Weights: read `.pdparams`, `.safetensors` and the authors' `.pth.tar`; convert; fit; save.

PyTorch -> Paddle layout: Linear weights are transposed ([out, in] -> [in, out]),
BatchNorm `running_mean` / `running_var` become `_mean` / `_variance`, and
`num_batches_tracked` is dropped. Loading at another resolution resamples the
grid part of `pos_embed` bicubically and keeps the class token's part.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lvvit.common.atomic import OutputPathError, atomic_output
from lvvit.common.provenance import sha256_of
from lvvit.errors import WeightsError, WeightsMismatchError
from lvvit.weights.safe_pickle import (
    MAX_WEIGHTS_FILE_BYTES,
    BFloat16Array,
    UnsupportedArray,
    bfloat16_to_float32,
    check_file_size,
    clip,
    load_pickle_data,
    load_torch_checkpoint,
    short_repr,
)

StateDict = dict[str, np.ndarray]

TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt")
CHECKPOINT_KEYS = ("state_dict", "model", "state_dict_ema")
_PADDLE_STRUCTURE_KEY = "StructuredToParameterName@@"
# safetensors' own limit is 100 MB; the header of a checkpoint with a thousand tensors is ~100 KB.
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20
# safetensors dtypes that numpy reads; BF16 is read as raw bits, the rest (F8_*, ...) are refused by name.
_SAFETENSORS_NUMPY_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32", "F64", "C64"}

_log = logging.getLogger(__name__)

# Paddle is imported where a model is touched: reading and checking a file needs only numpy, so the
# hostile-input tests run the readers in small, memory-capped processes.
if TYPE_CHECKING:
    import paddle.nn as nn


@dataclass(frozen=True)
class WeightsInfo:
    """Where the weights came from, for artifacts and reports."""

    file_name: str
    sha256: str
    layout: str  # "torch" or "paddle": the layout the file was stored in
    checkpoint_key: str | None
    resampled_pos_embed: tuple[int, int] | None  # (old grid, new grid) when resampled
    converted_to_float32: tuple[tuple[str, int], ...] = ()  # (stored dtype, number of tensors) converted on load
    tensors_sha256: str = ""  # the weights' identity (`tensors_sha256`); `sha256` is the file's, as provenance

    def to_dict(self) -> dict[str, object]:
        return {
            "file_name": self.file_name,
            "sha256": self.sha256,
            "tensors_sha256": self.tensors_sha256,
            "layout": self.layout,
            "checkpoint_key": self.checkpoint_key,
            "resampled_pos_embed": list(self.resampled_pos_embed) if self.resampled_pos_embed else None,
            "converted_to_float32": dict(self.converted_to_float32),
        }


def _as_state_dict(obj: object, path: Path, checkpoint_key: str | None) -> tuple[dict[str, object], str | None]:
    """The name -> array mapping inside a checkpoint: names are checked, arrays counted, nothing converted yet."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    if checkpoint_key is not None:
        if checkpoint_key not in obj:
            held = _listed([short_repr(key) for key in obj], 20)
            raise WeightsError(f"{path}: no {checkpoint_key!r} in the checkpoint; it holds {held}")
        obj, used = obj[checkpoint_key], checkpoint_key
        if not isinstance(obj, Mapping):
            raise WeightsError(f"{path}: {checkpoint_key!r} is a {type(obj).__name__}, not a dict of weights")
    else:
        used = next((k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if used is not None:
            obj = obj[used]
    state: dict[str, object] = {}
    total_bytes = 0
    for key, value in obj.items():
        if not isinstance(key, str):
            raise WeightsError(f"{path}: a key {short_repr(key)} is a {type(key).__name__}; weight names are strings")
        if key == _PADDLE_STRUCTURE_KEY:
            continue
        if not isinstance(value, (np.ndarray, UnsupportedArray)):
            raise WeightsError(f"{path}: entry {clip(key)!r} is a {type(value).__name__}, not an array")
        name = key.removeprefix("module.")
        if name in state:
            raise WeightsError(f"{path}: {clip(name)!r} appears twice (with and without the 'module.' prefix)")
        # One array can sit under many names (a pickle's memo): count each time, as each is converted and copied.
        total_bytes += value.nbytes if isinstance(value, np.ndarray) else 0
        if total_bytes > MAX_WEIGHTS_FILE_BYTES:
            raise WeightsError(f"{path}: its arrays take more than {MAX_WEIGHTS_FILE_BYTES:,} bytes in all")
        state[name] = value
    if not state:
        raise WeightsError(f"{path}: holds no weights")
    return state, used


def _listed(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _is_float_weight(value: object) -> bool:
    if isinstance(value, BFloat16Array):
        return True
    return isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.dtype.itemsize in (2, 4, 8)


def _is_batch_counter(name: str, value: object) -> bool:
    """PyTorch BatchNorm's integer `num_batches_tracked`: it passes here, and the conversion to Paddle drops it."""
    return name.endswith("num_batches_tracked") and isinstance(value, np.ndarray) and value.dtype.kind in "iu"


def _as_float32(state: Mapping[str, object], path: Path) -> tuple[StateDict, tuple[tuple[str, int], ...]]:
    """The dtype policy: float32 kept, float16/bfloat16/float64 converted (and logged), anything else refused.

    Non-finite values are refused, naming the tensors: a NaN weight makes every output NaN.
    """
    refused = [
        f"{clip(name)} ({value.dtype})"
        for name, value in state.items()
        if not (_is_float_weight(value) or _is_batch_counter(name, value))
    ]
    if refused:
        raise WeightsError(
            f"{path}: {len(refused)} entries are not floating-point weights: {_listed(refused)}. LV-ViT's weights "
            "are float32 (float16, bfloat16 and float64 are converted); integer, bool, complex, text, date and "
            "record arrays are refused rather than cast"
        )
    out: StateDict = {}
    converted: Counter[str] = Counter()
    for name, value in state.items():
        if isinstance(value, BFloat16Array):
            out[name], stored = bfloat16_to_float32(value), "bfloat16"
        elif value.dtype.kind == "f":
            out[name], stored = value.astype(np.float32, copy=False), str(value.dtype)
        else:
            out[name], stored = value, "float32"  # an int counter, dropped on conversion
        if stored != "float32":
            converted[stored] += 1
    non_finite = [
        f"{clip(name)} ({int(np.count_nonzero(~np.isfinite(value))):,} of {value.size:,})"
        for name, value in out.items()
        if value.dtype.kind == "f" and not np.isfinite(value).all()
    ]
    if non_finite:
        raise WeightsError(
            f"{path}: {len(non_finite)} tensors hold NaN or inf values: {_listed(non_finite)}"
            + (" (float64 values beyond float32's range become inf)" if converted["float64"] else "")
        )
    if converted:
        counts = ", ".join(f"{count} {dtype}" for dtype, count in sorted(converted.items()))
        _log.warning("%s: converted to float32 on load: %s tensors", path, counts)
    return out, tuple(sorted(converted.items()))


def _read_safetensors(path: Path) -> tuple[dict[str, object], dict[str, str]]:
    """(name -> array, metadata), with the header's size checked before safetensors parses it."""
    from safetensors import SafetensorError, safe_open

    size = check_file_size(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    header_bytes = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < header_bytes <= min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
        raise WeightsError(
            f"{path}: not a safetensors file: its header length {header_bytes:,} is not between 1 and "
            f"{min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):,} bytes"
        )
    state: dict[str, object] = {}
    header: dict | None = None
    try:
        with safe_open(str(path), framework="np") as handle:
            meta = handle.metadata() or {}
            for name in handle.keys():
                view = handle.get_slice(name)
                dtype, shape = view.get_dtype(), tuple(view.get_shape())
                if dtype == "BF16":
                    header = header or _read_header(path, header_bytes)
                    state[name] = _read_bfloat16(path, header_bytes, header[name]["data_offsets"][0], shape)
                elif dtype in _SAFETENSORS_NUMPY_DTYPES:
                    state[name] = handle.get_tensor(name)
                else:
                    state[name] = UnsupportedArray(dtype, shape)
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({clip(str(exc), 200)})") from exc
    return state, meta


def _read_header(path: Path, header_bytes: int) -> dict:
    """A safetensors header, already validated by `safe_open` (offsets inside the file, sizes matching shapes)."""
    with open(path, "rb") as handle:
        handle.seek(8)
        return json.loads(handle.read(header_bytes))


def _read_bfloat16(path: Path, header_bytes: int, start: int, shape: tuple[int, ...]) -> BFloat16Array:
    # safetensors' numpy reader has no bfloat16: read the raw bits where the header puts them.
    bits = np.fromfile(path, dtype="<u2", count=math.prod(shape), offset=8 + header_bytes + start)
    return bits.reshape(shape).view(BFloat16Array)


def _read_state_dict(
    path: str | Path, checkpoint_key: str | None = None
) -> tuple[StateDict, str, str | None, tuple[tuple[str, int], ...]]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        raw, meta = _read_safetensors(path)
        layout = "torch" if meta.get("format") == "pt" else "paddle"
    elif name.endswith(".pdparams"):
        raw, layout = load_pickle_data(path), "paddle"
    elif name.endswith(TORCH_SUFFIXES):
        raw, layout = load_torch_checkpoint(path), "torch"
    else:
        raise WeightsError(
            f"{path}: unknown weights format; expected .pdparams, .safetensors or a PyTorch checkpoint "
            f"({', '.join(TORCH_SUFFIXES)})"
        )
    state, used = _as_state_dict(raw, path, checkpoint_key)
    state32, converted = _as_float32(state, path)
    return state32, layout, used, converted


def read_state_dict(path: str | Path, checkpoint_key: str | None = None) -> tuple[StateDict, str, str | None]:
    """Read a weights file as data: (name -> float32 array, its layout "torch" | "paddle", the key it was under).

    Bounded and checked: see `lvvit.weights.safe_pickle` for the pickle limits; every format gets the same dtype
    policy (float16/bfloat16/float64 converted and logged, other dtypes refused) and refuses NaN and inf.
    """
    state, layout, used, _converted = _read_state_dict(path, checkpoint_key)
    return state, layout, used


def linear_weight_names(model: nn.Layer) -> set[str]:
    """State-dict names of the model's nn.Linear weights (the ones whose layout differs from PyTorch)."""
    import paddle.nn as nn

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


def tensors_sha256(state: Mapping[str, np.ndarray]) -> str:
    """The weights' identity: SHA-256 over each tensor's name, dtype, shape and little-endian bytes, in name order.

    Taken on the Paddle-layout state dict (the kit's names and layout after conversion, before any resampling),
    so the authors' `.pth.tar` and the `.pdparams` or `.safetensors` that `python -m lvvit.convert` writes from
    it are the same weights, whatever the file format, its pickle framing or its key order.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        value = np.ascontiguousarray(state[name], dtype=state[name].dtype.newbyteorder("<"))
        header = json.dumps([name, value.dtype.str, list(value.shape)]).encode()
        digest.update(len(header).to_bytes(8, "little") + header)
        digest.update(memoryview(value).cast("B"))
    return digest.hexdigest()


def _lvvit_linear_weights(state: Mapping[str, np.ndarray]) -> set[str]:
    """The nn.Linear weights of an LV-ViT state dict without building the model: its only 2-D `.weight` tensors
    (convolutions are 4-D, norms 1-D, tokens 3-D); `linear_weight_names` of a built model gives the same set."""
    return {name for name, value in state.items() if name.endswith(".weight") and value.ndim == 2}


def weights_identity(path: str | Path, checkpoint_key: str | None = None) -> str:
    """`tensors_sha256` of a weights file, read and converted to the Paddle layout as `load_weights` does."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read the weights file ({exc.strerror or exc})") from None
    return _identity(str(path.resolve()), stat.st_size, stat.st_mtime_ns, checkpoint_key)


@functools.lru_cache(maxsize=8)
def _identity(path: str, _size: int, _mtime_ns: int, checkpoint_key: str | None) -> str:
    # keyed by size and mtime too: a file rewritten in place is read again
    state, layout, _used = read_state_dict(path, checkpoint_key)
    if layout == "torch":
        state = torch_to_paddle(state, _lvvit_linear_weights(state))
    return tensors_sha256(state)


def resample_pos_embed(pos_embed: np.ndarray, new_grid: int) -> np.ndarray:
    """[1, 1 + g*g, C] -> [1, 1 + new_grid^2, C]: bicubic on the grid, class token kept."""
    cls_part, grid_part = pos_embed[:, :1], pos_embed[:, 1:]
    old_grid = math.isqrt(grid_part.shape[1])
    if old_grid * old_grid != grid_part.shape[1]:
        raise WeightsError(f"pos_embed has {grid_part.shape[1]} grid tokens, not a square grid")
    channels = grid_part.shape[-1]
    import paddle
    import paddle.nn as nn

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
                shown = [clip(item, 200) for item in items[:20]]
                shown += [f"... and {len(items) - 20} more"] if len(items) > 20 else []
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        raise WeightsMismatchError("\n".join(lines))


def load_weights(model: nn.Layer, path: str | Path, checkpoint_key: str | None = None) -> WeightsInfo:
    """Read, convert, resample and check a weights file, then load it into `model`."""
    import paddle

    path = Path(path)
    state, layout, used_key, converted = _read_state_dict(path, checkpoint_key)
    if layout == "torch":
        state = torch_to_paddle(state, linear_weight_names(model))
    identity = tensors_sha256(state)  # before resampling: the weights, not the model at one resolution
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
    return WeightsInfo(path.name, sha256_of(path), layout, used_key, resampled, converted, identity)


def save_state_dict(model: nn.Layer, target: str | Path) -> Path:
    """Write the model's weights as `.pdparams` or `.safetensors` (Paddle layout), atomically."""
    import paddle

    target = Path(target)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    if target.name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import save_file

        try:
            with atomic_output(target) as tmp:
                save_file(state, str(tmp), metadata={"format": "paddle"})
        except SafetensorError as exc:  # its I/O errors (a full disk, a quota) are not OSError
            raise OutputPathError(f"{target}: cannot write the weights ({clip(str(exc), 300)})") from exc
    elif target.name.endswith(".pdparams"):
        with atomic_output(target) as tmp:
            paddle.save(model.state_dict(), str(tmp))
    else:
        raise WeightsError(f"{target}: choose a .pdparams or .safetensors output")
    return target
