"""Read pickled weights as data only: Paddle `.pdparams` and PyTorch zip checkpoints, without torch.

A pickle can import and call anything; these readers resolve only an allow-list
of globals that build arrays and plain containers. Anything else (`os.system`,
`builtins.eval`, a model class, ...) raises `UnsafeWeightsError` before it is
imported, so a malicious file runs nothing.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UnsafeWeightsError, WeightsError

# The pickled header of PyTorch's legacy (pre-1.6, non-zip) format.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}


class _Namespace(argparse.Namespace):
    """Stand-in for `argparse.Namespace` (timm checkpoints pickle their training args)."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


_DATA_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("argparse", "Namespace"): _Namespace,
    **_numpy_globals(),
}
# numpy scalar dtypes pickled by class, e.g. numpy.dtypes.Float32DType
_NUMPY_DTYPE_MODULES = ("numpy.dtypes",)


class _StorageType:
    """What `torch.FloatStorage` and friends stand for here: a numpy dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _TORCH_STORAGE_DTYPES[name]


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_ignored: Any) -> np.ndarray:
    if not size:
        return storage[offset : offset + 1].reshape(()).copy()
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.ascontiguousarray(view)


def _rebuild_parameter(data: np.ndarray, *_ignored: Any) -> np.ndarray:
    return data


_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _TORCH_STORAGE_DTYPES},
}


class _DataUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: Path, extra: dict[tuple[str, str], Any] | None = None):
        super().__init__(file)
        self._source = source
        self._allowed = {**_DATA_GLOBALS, **(extra or {})}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if module in _NUMPY_DTYPE_MODULES and name.endswith("DType"):
            return getattr(np.dtypes, name)
        raise UnsafeWeightsError(
            f"{self._source}: refusing to load: its pickle asks for `{module}.{name}`, which is not plain "
            "array data. Weights files are data, never code; if you trust this file, re-save its state "
            "dict (name -> array) as .safetensors or .pdparams."
        )


class _TorchZipUnpickler(_DataUnpickler):
    def __init__(self, file: io.BufferedIOBase, source: Path, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file, source, _TORCH_GLOBALS)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, np.ndarray] = {}

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafeWeightsError(f"{self._source}: unexpected persistent id {pid!r} in a PyTorch checkpoint")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"{self._source}: unsupported storage type {storage_type!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            if storage_type.dtype == "bfloat16":
                array = _bfloat16_to_float32(np.frombuffer(raw, dtype=np.uint16))
            else:
                array = np.frombuffer(raw, dtype=np.dtype(storage_type.dtype).newbyteorder("<"))
            self._storages[key] = array
        return self._storages[key]


def load_pickle_data(path: Path) -> Any:
    """Unpickle a Paddle `.pdparams` (or any plain pickle of arrays) as data only."""
    with open(path, "rb") as handle:
        try:
            return _DataUnpickler(handle, path).load()
        except UnsafeWeightsError:
            raise
        except Exception as exc:  # a truncated or foreign file: say which and why
            raise WeightsError(f"{path}: not a readable pickle of weights ({type(exc).__name__}: {exc})") from exc


def load_torch_checkpoint(path: Path) -> Any:
    """Read a PyTorch `torch.save` zip checkpoint into numpy arrays, without importing torch."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            try:
                first = _DataUnpickler(handle, path).load()
            except UnsafeWeightsError:
                raise
            except Exception as exc:
                raise WeightsError(f"{path}: neither a PyTorch zip checkpoint nor a pickle ({exc})") from exc
        if first == _TORCH_LEGACY_MAGIC:
            raise WeightsError(
                f"{path}: PyTorch's legacy (pre-1.6) checkpoint format is not supported; "
                "re-save it with torch>=1.6 or as .safetensors"
            )
        return first
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
        if len(pickles) != 1:
            raise WeightsError(f"{path}: a PyTorch checkpoint holds one data.pkl, found {len(pickles)}")
        prefix = pickles[0][: -len("/data.pkl")] if "/" in pickles[0] else ""
        with archive.open(pickles[0]) as handle:
            try:
                return _TorchZipUnpickler(io.BufferedReader(handle), path, archive, prefix).load()
            except (UnsafeWeightsError, WeightsError):
                raise
            except Exception as exc:
                raise WeightsError(f"{path}: corrupt PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
