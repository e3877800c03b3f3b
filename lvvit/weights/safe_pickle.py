"""Read pickled weights as data only: Paddle `.pdparams` and PyTorch zip checkpoints, without torch.

A pickle is a program for a small stack machine that may import and call anything,
and even the plain data it builds can be hostile: a dict key made of tuples nested
100 levels, each holding the one below twice, takes 2^100 steps to hash. So these
readers do not use `pickle.Unpickler`. They run the opcodes themselves (decoded by
the standard `pickletools.genops`) and build only what a state dict is made of:
str/bytes/numbers/None, tuples, lists, dicts with scalar keys, sets of scalars,
numpy arrays of plain dtypes, and tensors over a PyTorch checkpoint's storages.
Every bound is a named constant below. A pickle that asks for anything else
raises `UnsafeWeightsError`; one that is malformed or too large raises
`WeightsError`; both name the file, and every value they quote is cut short.
"""

from __future__ import annotations

import io
import math
import mmap
import pickletools
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.errors import UnsafeWeightsError, WeightsError

# Limits. lvvit_l_512 is 603 MB in float32; a training checkpoint with EMA and
# optimizer state is about 4x that, and its pickle runs some 30,000 opcodes.
MAX_WEIGHTS_FILE_BYTES = 4 << 30  # a weights file, and the arrays read from one
MAX_TORCH_PICKLE_BYTES = 64 << 20  # the data.pkl of a torch zip (structure only; tensors are separate entries)
MAX_ZIP_DIRECTORY_BYTES = 16 << 20  # a zip's list of entries (~100 bytes each); zipfile holds ~6x that in memory
MAX_PICKLE_OPCODES = 1_000_000  # about 1.5 s of decoding; lvvit_s.pdparams runs 5,632
MAX_CONTAINER_DEPTH = 32  # a state dict nests 2-5 levels
MAX_INT_BITS = 128  # PyTorch's legacy magic number has 80
MAX_EXPANDED_ELEMENTS = 1 << 20  # a tensor may repeat storage elements (stride 0) only up to this size
MAX_COMPRESSION_RATIO = 200  # torch.save stores tensors uncompressed; deflate reaches ~1000x only on constant data

# The pickled header of PyTorch's legacy (pre-1.6, non-zip) format.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "b1",
    "ComplexFloatStorage": "c8",
    "ComplexDoubleStorage": "c16",
}
_SCALAR_TYPES = (str, bytes, int, float, bool, type(None))
_NUMBER_KINDS = "biufc"


class BFloat16Array(np.ndarray):
    """Raw bfloat16 bits as uint16 (numpy has no bfloat16); `weights` converts them to float32."""


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shifting the bits back is exact."""
    return (np.asarray(bits).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class UnsupportedArray:
    """An array whose dtype is not a number (str, datetime, object, structured): kept as a name and a shape."""

    dtype: str
    shape: tuple[int, ...]


def short_repr(value: Any, limit: int = 80) -> str:
    """A repr of at most `limit` characters that looks at a dozen nodes at most.

    Python's own repr would walk a shared-tuple structure 2^depth times, and
    quote a megabyte key whole.
    """
    budget = [12]

    def walk(item: Any) -> str:
        budget[0] -= 1
        if budget[0] < 0:
            return "..."
        if isinstance(item, str):
            return repr(item[:limit]) + ("..." if len(item) > limit else "")
        if isinstance(item, bytes):
            return f"<{len(item)} bytes>"
        if isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 64:
            return f"<int of {item.bit_length()} bits>"
        if isinstance(item, (bool, int, float, type(None))):
            return repr(item)
        if isinstance(item, np.ndarray):
            return f"<array {item.dtype} {item.shape}>"
        if isinstance(item, _Global):
            return f"<{item.name}>"
        if isinstance(item, dict):
            pairs = [f"{walk(k)}: {walk(v)}" for (k, v), _ in zip(item.items(), range(4), strict=False)]
            return "{" + ", ".join(pairs) + (", ..." if len(item) > 4 else "") + "}"
        if isinstance(item, (tuple, list, set, frozenset)):
            parts = [walk(v) for v, _ in zip(item, range(4), strict=False)]
            opening, closing = {tuple: "()", list: "[]"}.get(type(item), "{}")
            single = "," if len(item) == 1 and isinstance(item, tuple) else ""
            return opening + ", ".join(parts) + single + (", ..." if len(item) > 4 else "") + closing
        return f"<{type(item).__name__}>"

    return clip(walk(value), limit)


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters, for messages that quote what a file holds."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- what the allowed globals build ---------------------------------------------------------------


class _Global:
    """What GLOBAL pushes for an allowed name; REDUCE calls `build` (which checks its arguments)."""

    def __init__(self, name: str, build: Callable[[_PickleMachine, tuple], Any] | None = None) -> None:
        self.name = name
        self.build = build


class _ArrayBuilder:
    """`numpy._reconstruct(...)`: an empty array that the following BUILD fills."""

    result: np.ndarray | UnsupportedArray | None = None


class _DtypeBuilder:
    """`numpy.dtype(spec, ...)`; BUILD may set its byte order or make it structured."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.result: np.dtype | str = _plain_dtype(spec, "|")


def _plain_dtype(spec: str, byteorder: str) -> np.dtype | str:
    """A numeric numpy dtype, or (for str, datetime, object, void, ...) its name as a string."""
    try:
        dtype = np.dtype(spec)  # a short string (checked by the caller); only a number dtype is used for data
    except (TypeError, ValueError, SyntaxError):
        return spec
    if dtype.kind not in _NUMBER_KINDS:  # records and subarrays are kind "V"
        return str(dtype)
    return dtype.newbyteorder(byteorder) if byteorder in "<>" else dtype


@dataclass
class _Storage:
    """A torch storage named by a persistent id: a zip entry, checked when named, read when a tensor uses it."""

    name: str
    dtype: np.dtype
    bfloat16: bool
    numel: int
    data: np.ndarray | None = None


def _ints(value: Any, what: str, max_len: int = 32) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > max_len:
        raise WeightsError(f"{what} is {short_repr(value)}, not a tuple of at most {max_len} integers")
    if not all(type(v) is int and v >= 0 for v in value):
        raise WeightsError(f"{what} {short_repr(value)} holds something other than integers >= 0")
    return value


def _reconstruct(machine: _PickleMachine, args: tuple) -> _ArrayBuilder:
    if not args or args[0] is not _NDARRAY:
        raise UnsafeWeightsError(f"numpy _reconstruct of {short_repr(args)}: only numpy.ndarray is allowed")
    return _ArrayBuilder()


def _dtype(machine: _PickleMachine, args: tuple) -> _DtypeBuilder:
    if not args or not isinstance(args[0], str) or len(args[0]) > 16:
        raise WeightsError(f"numpy.dtype{short_repr(args)}: expected a short type code such as 'f4'")
    return _DtypeBuilder(args[0])


def _scalar(machine: _PickleMachine, args: tuple) -> Any:
    dtype, data = (args + (None, None))[:2]
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise WeightsError(f"numpy scalar{short_repr(args)}: expected a numeric dtype and its bytes")
    return np.frombuffer(data, dtype=dtype)[0]


def _build_array(builder: _ArrayBuilder, state: Any) -> None:
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise WeightsError(f"numpy array state {short_repr(state)}: expected (version, shape, dtype, fortran, data)")
    shape, dtype, fortran, raw = state[-4:]
    if isinstance(raw, str):  # a Python 2 pickle's data, read as latin-1 (what numpy itself does)
        raw = raw.encode("latin1")
    shape = _ints(shape, "numpy array shape")
    if isinstance(dtype, str) or not isinstance(dtype, np.dtype) or dtype.kind not in _NUMBER_KINDS:
        builder.result = UnsupportedArray(str(dtype), shape)  # refused by name in `weights`, with its key
        return
    if not isinstance(raw, bytes) or type(fortran) is not bool:
        raise WeightsError(f"numpy array state {short_repr(state)}: expected raw bytes for a {dtype} array")
    count = math.prod(shape)
    if count * dtype.itemsize != len(raw):
        raise WeightsError(
            f"numpy array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} bytes, "
            f"its data has {len(raw)}"
        )
    builder.result = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")


def _build_dtype(builder: _DtypeBuilder, state: Any) -> None:
    # numpy's dtype state: (version, byteorder, subarray, names, fields, itemsize, alignment, flags[, metadata])
    if not isinstance(state, tuple) or len(state) < 5:
        raise WeightsError(f"numpy dtype state {short_repr(state)}: expected numpy's 8-tuple")
    byteorder, subarray, names, fields = state[1:5]
    if subarray is not None or names is not None or fields is not None:
        builder.result = f"structured {builder.spec} (record fields or subarrays)"
    elif not isinstance(byteorder, str) or byteorder not in ("<", ">", "|", "="):
        raise WeightsError(f"numpy dtype {builder.spec!r}: byte order {short_repr(byteorder)} is not <, >, | or =")
    else:
        builder.result = _plain_dtype(builder.spec, byteorder)


def _ordered_dict(machine: _PickleMachine, args: tuple) -> dict:
    if args != ():
        raise WeightsError(f"OrderedDict{short_repr(args)}: expected no arguments (items come after)")
    return machine.new_container({})


def _set_of(kind: type) -> Callable[[_PickleMachine, tuple], Any]:
    def build(machine: _PickleMachine, args: tuple) -> Any:
        items = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else None
        if items is None:
            raise WeightsError(f"{kind.__name__}{short_repr(args)}: expected one list of items")
        return machine.new_container(kind(machine.key(item) for item in items))

    return build


def _latin1_bytes(machine: _PickleMachine, args: tuple) -> bytes:
    # Protocol 2 writes bytes as `_codecs.encode(text, "latin1")` (Paddle's protocol=2 files): allow that call only.
    if len(args) != 2 or not isinstance(args[0], str) or args[1] != "latin1":
        raise UnsafeWeightsError(f"`_codecs.encode{short_repr(args)}`: only (text, 'latin1'), which makes bytes")
    return args[0].encode("latin1")


def _namespace(machine: _PickleMachine, args: tuple) -> dict:
    if args != ():
        raise WeightsError(f"argparse.Namespace{short_repr(args)}: expected no arguments")
    return machine.new_container({})  # its fields (a training run's arguments) are not weights


def _rebuild_tensor(machine: _PickleMachine, args: tuple) -> np.ndarray:
    if len(args) < 4 or not isinstance(args[0], _Storage):
        raise WeightsError(f"torch tensor{short_repr(args)}: expected (storage, offset, size, stride, ...)")
    return machine.tensor(args[0], args[1], args[2], args[3])


def _rebuild_parameter(machine: _PickleMachine, args: tuple) -> Any:
    if not args or not isinstance(args[0], np.ndarray):
        raise WeightsError(f"torch parameter{short_repr(args)}: expected a tensor first")
    return args[0]


_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1 and 2 names
_NDARRAY = _Global("numpy.ndarray")
_NAMESPACE = _Global("argparse.Namespace", _namespace)

_DATA_GLOBALS: dict[tuple[str, str], _Global] = {
    ("collections", "OrderedDict"): _Global("collections.OrderedDict", _ordered_dict),
    # protocol 2 names builtins by their Python 2 module, __builtin__
    **{(module, "set"): _Global("set", _set_of(set)) for module in ("builtins", "__builtin__")},
    **{(module, "frozenset"): _Global("frozenset", _set_of(frozenset)) for module in ("builtins", "__builtin__")},
    ("_codecs", "encode"): _Global("_codecs.encode", _latin1_bytes),
    ("argparse", "Namespace"): _NAMESPACE,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global("numpy.dtype", _dtype),
    **{(module, "_reconstruct"): _Global("numpy._reconstruct", _reconstruct) for module in _NUMPY_MULTIARRAY},
    **{(module, "scalar"): _Global("numpy scalar", _scalar) for module in _NUMPY_MULTIARRAY},
}

_TORCH_GLOBALS: dict[tuple[str, str], _Global] = {
    ("torch._utils", "_rebuild_tensor_v2"): _Global("torch._utils._rebuild_tensor_v2", _rebuild_tensor),
    ("torch._utils", "_rebuild_tensor"): _Global("torch._utils._rebuild_tensor", _rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Global("torch._utils._rebuild_parameter", _rebuild_parameter),
    **{("torch", name): _Global(f"torch.{name}") for name in _TORCH_STORAGE_DTYPES},
}


# --- the machine ----------------------------------------------------------------------------------


class _PickleMachine:
    """Runs a pickle's opcodes, building plain data under the limits above."""

    def __init__(self, source: Path, allowed: dict[tuple[str, str], _Global]) -> None:
        self.source = source
        self.allowed = allowed
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.depth: dict[int, int] = {}  # id(container) -> nesting depth
        self.sealed: set[int] = set()  # containers already placed inside another
        self.alive: list[Any] = []  # keeps every container alive, so that ids stay unique

    def error(self, message: str) -> WeightsError:
        return WeightsError(f"{self.source}: {message}")

    def run(self, stream: Any) -> Any:
        handlers = _HANDLERS
        for count, (opcode, arg, _pos) in enumerate(pickletools.genops(stream)):
            if count >= MAX_PICKLE_OPCODES:
                raise self.error(f"the pickle runs more than {MAX_PICKLE_OPCODES:,} opcodes; weights need far fewer")
            if opcode.name == "STOP":
                return self.value(self.pop())
            handler = handlers.get(opcode.name)
            if handler is None:
                raise UnsafeWeightsError(
                    f"{self.source}: refusing to load: its pickle uses opcode {opcode.name}, which plain "
                    "weights never need. Weights files are data, never code."
                )
            handler(self, arg)
        raise self.error("the pickle ends without STOP")

    # stack
    def push(self, value: Any) -> None:
        self.stack.append(value)

    def pop(self) -> Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise self.error("malformed pickle (stack underflow)")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise self.error("malformed pickle (no mark)")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    # values
    def value(self, item: Any) -> Any:
        """What an item stands for once it is used: the array or dtype a builder made."""
        if isinstance(item, (_ArrayBuilder, _DtypeBuilder)):
            if item.result is None:
                raise self.error("malformed pickle (an array is used before its data is set)")
            return item.result
        return item

    def new_container(self, container: Any, depth: int = 1) -> Any:
        if depth > MAX_CONTAINER_DEPTH:
            raise self.error(f"containers nest deeper than {MAX_CONTAINER_DEPTH} levels; a state dict needs a few")
        self.alive.append(container)
        self.depth[id(container)] = depth
        return container

    def child(self, item: Any) -> tuple[Any, int]:
        """Prepare an item to go inside a container: (its value, its depth). From now on it may not change."""
        item = self.value(item)
        if isinstance(item, (list, dict, set, tuple, frozenset)):
            self.sealed.add(id(item))
            return item, self.depth.get(id(item), 1)
        return item, 0

    def grow(self, container: Any, kind: type, depth: int) -> None:
        if not isinstance(container, kind):
            raise self.error(f"malformed pickle (adds items to a {type(container).__name__}, not a {kind.__name__})")
        if id(container) in self.sealed:
            # Only a cycle or a deliberate trick changes a container after placing it elsewhere.
            raise self.error("the pickle changes a container after placing it inside another (a cycle?)")
        if depth + 1 > MAX_CONTAINER_DEPTH:
            raise self.error(f"containers nest deeper than {MAX_CONTAINER_DEPTH} levels; a state dict needs a few")
        self.depth[id(container)] = max(self.depth.get(id(container), 1), depth + 1)

    def key(self, item: Any) -> Any:
        """A dict key or set item: a scalar, so that hashing it is cheap."""
        item, _ = self.child(item)
        if type(item) not in _SCALAR_TYPES:
            raise self.error(
                f"a dict key or set item is a {type(item).__name__} ({short_repr(item)}); weights files use "
                "str and number keys only"
            )
        return item

    def tuple_of(self, items: list[Any]) -> tuple:
        values, depths = zip(*(self.child(item) for item in items), strict=True) if items else ((), ())
        return self.new_container(tuple(values), 1 + max(depths, default=0))

    def number(self, value: int) -> None:
        if value.bit_length() > MAX_INT_BITS:
            raise self.error(f"an integer of {value.bit_length():,} bits; weights files use at most {MAX_INT_BITS}")
        self.push(value)

    # torch tensors (used by the zip reader's persistent ids)
    def tensor(self, storage: _Storage, offset: Any, size: Any, stride: Any) -> np.ndarray:
        raise self.error("a torch tensor outside a PyTorch zip checkpoint")

    def persistent(self, pid: Any) -> Any:
        raise UnsafeWeightsError(
            f"{self.source}: refusing to load: a persistent id {short_repr(pid)} in a plain pickle"
        )


def _op_global(machine: _PickleMachine, module: str, name: str) -> None:
    found = machine.allowed.get((module, name))
    if found is None:
        raise UnsafeWeightsError(
            f"{machine.source}: refusing to load: its pickle asks for `{clip(module, 60)}.{clip(name, 60)}`"
            f", which is not plain array data. Weights files are data, never code; "
            "if you trust this file, re-save its state dict (name -> array) as .safetensors or .pdparams."
        )
    machine.push(found)


def _op_stack_global(machine: _PickleMachine, _arg: Any) -> None:
    name, module = machine.value(machine.pop()), machine.value(machine.pop())
    if not isinstance(module, str) or not isinstance(name, str):
        raise machine.error("malformed pickle (STACK_GLOBAL of non-strings)")
    _op_global(machine, module, name)


def _op_reduce(machine: _PickleMachine, _arg: Any) -> None:
    args, func = machine.value(machine.pop()), machine.pop()
    if not isinstance(func, _Global) or func.build is None or not isinstance(args, tuple):
        raise UnsafeWeightsError(f"{machine.source}: refusing to load: its pickle calls {short_repr(func)}")
    machine.push(func.build(machine, args))


def _op_newobj(machine: _PickleMachine, _arg: Any) -> None:
    args, cls = machine.value(machine.pop()), machine.pop()
    if cls is not _NAMESPACE or not isinstance(args, tuple):
        raise UnsafeWeightsError(f"{machine.source}: refusing to load: its pickle creates {short_repr(cls)}")
    machine.push(_namespace(machine, args))


def _op_build(machine: _PickleMachine, _arg: Any) -> None:
    state, _ = machine.child(machine.pop())
    target = machine.pop()
    if isinstance(target, _ArrayBuilder) and target.result is None:
        _build_array(target, state)
    elif isinstance(target, _DtypeBuilder):
        _build_dtype(target, state)
    elif not isinstance(target, dict):  # a dict's attributes (OrderedDict._metadata, Namespace fields) are dropped
        raise UnsafeWeightsError(
            f"{machine.source}: refusing to load: its pickle sets the state of {short_repr(target)}"
        )
    machine.push(target)


def _op_setitems(machine: _PickleMachine, items: list[Any]) -> None:
    if len(items) % 2:
        raise machine.error("malformed pickle (odd SETITEMS)")
    target = machine.stack[-1] if machine.stack else None
    pairs = [(machine.key(items[i]), machine.child(items[i + 1])) for i in range(0, len(items), 2)]
    machine.grow(target, dict, max((d for _, (_, d) in pairs), default=0))
    for key, (value, _) in pairs:
        target[key] = value


def _op_appends(machine: _PickleMachine, items: list[Any]) -> None:
    target = machine.stack[-1] if machine.stack else None
    values = [machine.child(item) for item in items]
    machine.grow(target, list, max((d for _, d in values), default=0))
    target.extend(value for value, _ in values)


def _op_additems(machine: _PickleMachine, items: list[Any]) -> None:
    target = machine.stack[-1] if machine.stack else None
    keys = [machine.key(item) for item in items]
    machine.grow(target, set, 0)
    target.update(keys)


def _op_dict(machine: _PickleMachine, items: list[Any]) -> None:
    machine.push(machine.new_container({}))
    _op_setitems(machine, items)


def _op_list(machine: _PickleMachine, items: list[Any]) -> None:
    machine.push(machine.new_container([]))
    _op_appends(machine, items)


def _op_dup(machine: _PickleMachine, _arg: Any) -> None:
    top = machine.pop()
    machine.push(top)
    machine.push(top)


def _op_memo_get(machine: _PickleMachine, index: Any) -> None:
    if index not in machine.memo:
        raise machine.error(f"malformed pickle (memo {short_repr(index)} was never stored)")
    machine.push(machine.memo[index])


def _op_memo_put(machine: _PickleMachine, index: Any) -> None:
    if not machine.stack:
        raise machine.error("malformed pickle (PUT on an empty stack)")
    machine.memo[index] = machine.stack[-1]


def _op_pop(machine: _PickleMachine, _arg: Any) -> None:
    if machine.stack and len(machine.stack) > (machine.marks[-1] if machine.marks else 0):
        machine.stack.pop()
    else:
        machine.pop_mark()


def _op_proto(machine: _PickleMachine, version: int) -> None:
    if not 0 <= version <= 5:
        raise machine.error(f"unknown pickle protocol {version}")


_M = _PickleMachine
_HANDLERS: dict[str, Callable[[_PickleMachine, Any], None]] = {
    "PROTO": _op_proto,
    "FRAME": lambda m, a: None,
    "NONE": lambda m, a: m.push(None),
    "NEWTRUE": lambda m, a: m.push(True),
    "NEWFALSE": lambda m, a: m.push(False),
    **{name: _M.push for name in ("FLOAT", "BINFLOAT", "BININT", "BININT1", "BININT2")},
    **{name: _M.number for name in ("INT", "LONG", "LONG1", "LONG4")},
    **{name: _M.push for name in ("UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8")},
    # Python 2's str, which pickletools decodes as latin-1 (numpy arrays pickled by Python 2 hold their data so)
    **{name: _M.push for name in ("STRING", "BINSTRING", "SHORT_BINSTRING")},
    **{name: _M.push for name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8")},
    "BYTEARRAY8": lambda m, a: m.push(bytes(a)),
    "EMPTY_TUPLE": lambda m, a: m.push(m.tuple_of([])),
    "TUPLE1": lambda m, a: m.push(m.tuple_of([m.pop()])),
    "TUPLE2": lambda m, a: m.push(m.tuple_of([m.pop() for _ in range(2)][::-1])),
    "TUPLE3": lambda m, a: m.push(m.tuple_of([m.pop() for _ in range(3)][::-1])),
    "TUPLE": lambda m, a: m.push(m.tuple_of(m.pop_mark())),
    "EMPTY_LIST": lambda m, a: m.push(m.new_container([])),
    "LIST": lambda m, a: _op_list(m, m.pop_mark()),
    "APPEND": lambda m, a: _op_appends(m, [m.pop()]),
    "APPENDS": lambda m, a: _op_appends(m, m.pop_mark()),
    "EMPTY_DICT": lambda m, a: m.push(m.new_container({})),
    "DICT": lambda m, a: _op_dict(m, m.pop_mark()),
    "SETITEM": lambda m, a: _op_setitems(m, [m.pop() for _ in range(2)][::-1]),
    "SETITEMS": lambda m, a: _op_setitems(m, m.pop_mark()),
    "EMPTY_SET": lambda m, a: m.push(m.new_container(set())),
    "ADDITEMS": lambda m, a: _op_additems(m, m.pop_mark()),
    "FROZENSET": lambda m, a: m.push(m.new_container(frozenset(m.key(i) for i in m.pop_mark()))),
    "MARK": lambda m, a: m.marks.append(len(m.stack)),
    "POP": _op_pop,
    "POP_MARK": lambda m, a: m.pop_mark(),
    "DUP": _op_dup,
    **{name: _op_memo_put for name in ("PUT", "BINPUT", "LONG_BINPUT")},
    "MEMOIZE": lambda m, a: _op_memo_put(m, len(m.memo)),
    **{name: _op_memo_get for name in ("GET", "BINGET", "LONG_BINGET")},
    "GLOBAL": lambda m, a: _op_global(m, *(a.split(" ", 1) if " " in a else (a, ""))),
    "STACK_GLOBAL": _op_stack_global,
    "REDUCE": _op_reduce,
    "NEWOBJ": _op_newobj,
    "BUILD": _op_build,
    "PERSID": lambda m, a: m.push(m.persistent(a)),
    "BINPERSID": lambda m, a: m.push(m.persistent(m.value(m.pop()))),
}


# --- PyTorch zip checkpoints ----------------------------------------------------------------------


class _TorchZipMachine(_PickleMachine):
    """The machine plus PyTorch's persistent ids: each names a storage, a zip entry of raw little-endian data."""

    def __init__(self, source: Path, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(source, {**_DATA_GLOBALS, **_TORCH_GLOBALS})
        self.archive = archive
        self.prefix = prefix
        self.archive_bytes = source.stat().st_size
        self.storages: dict[str, _Storage] = {}
        self.storage_bytes = 0  # declared by the storages used, each once
        self.tensor_bytes = 0  # built into tensors (views of one storage count each time)

    def persistent(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeWeightsError(
                f"{self.source}: unexpected persistent id {short_repr(pid)} in a PyTorch checkpoint"
            )
        storage_type, key, _location, numel = pid[1:]
        kind = storage_type.name.removeprefix("torch.") if isinstance(storage_type, _Global) else None
        if kind not in _TORCH_STORAGE_DTYPES:
            raise self.error(f"unsupported storage type {short_repr(storage_type)}")
        if not isinstance(key, str) or len(key) > 64 or type(numel) is not int or numel < 0:
            raise self.error(f"malformed storage record {short_repr(pid)}")
        bfloat16 = _TORCH_STORAGE_DTYPES[kind] == "bfloat16"
        dtype = np.dtype("<u2" if bfloat16 else "<" + _TORCH_STORAGE_DTYPES[kind])
        if key in self.storages:
            known = self.storages[key]
            if (known.dtype, known.bfloat16, known.numel) != (dtype, bfloat16, numel):
                raise self.error(f"storage {key!r} is recorded twice with different types or sizes")
            return known
        name = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise self.error(f"the checkpoint has no entry {short_repr(name)} for one of its tensors") from None
        # Check what the entry declares against what its record says, before reading a byte of it.
        expected = numel * dtype.itemsize
        if info.file_size != expected:
            raise self.error(
                f"storage {name} declares {info.file_size:,} bytes, but its record says {numel:,} elements "
                f"x {dtype.itemsize} bytes = {expected:,}"
            )
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise self.error(f"storage {name} declares {info.file_size:,} bytes but stores {info.compress_size:,}")
        if info.compress_size > self.archive_bytes:
            raise self.error(
                f"storage {name} declares {info.compress_size:,} stored bytes; the file has {self.archive_bytes:,}"
            )
        if (
            info.compress_type != zipfile.ZIP_STORED
            and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + 4096
        ):
            raise self.error(
                f"storage {name} expands {info.compress_size:,} compressed bytes to {info.file_size:,} "
                f"(more than {MAX_COMPRESSION_RATIO}x; torch.save stores tensors uncompressed)"
            )
        self.storage_bytes += expected
        if self.storage_bytes > MAX_WEIGHTS_FILE_BYTES:
            raise self.error(f"its storages declare more than {MAX_WEIGHTS_FILE_BYTES:,} bytes in all")
        self.storages[key] = _Storage(name, dtype, bfloat16, numel)
        return self.storages[key]

    def storage_data(self, storage: _Storage, elements: int) -> np.ndarray:
        """At least the first `elements` of a storage: an entry is read only as far as its tensors reach.

        A later tensor that reaches further re-reads the entry, at least doubling what is held, so that
        the bytes read stay within twice the storage.
        """
        held = 0 if storage.data is None else len(storage.data)
        if elements > held:
            count = min(storage.numel, max(elements, 2 * held))
            wanted = count * storage.dtype.itemsize
            with self.archive.open(storage.name) as handle:
                # reading the whole entry goes one byte past it, to its end, where zipfile checks the CRC
                raw = handle.read(wanted + 1 if count == storage.numel else wanted)
            if len(raw) != wanted:
                raise self.error(f"storage {storage.name} holds {len(raw):,} bytes, not the declared {wanted:,}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
        return storage.data

    def tensor(self, storage: _Storage, offset: Any, size: Any, stride: Any) -> np.ndarray:
        what = f"tensor over storage {storage.name}"
        size = _ints(size, f"{what}: size")
        stride = _ints(stride, f"{what}: stride")
        if type(offset) is not int or offset < 0 or len(stride) != len(size):
            raise self.error(f"{what}: offset {short_repr(offset)} and {len(size)} sizes / {len(stride)} strides")
        numel = math.prod(size)
        if numel == 0:
            array = np.zeros(size, dtype=storage.dtype)
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
            if last >= storage.numel:
                raise self.error(
                    f"{what}: size {size}, stride {stride} and offset {offset} reach element {last:,} "
                    f"of a storage of {storage.numel:,}"
                )
            if numel > storage.numel and numel > MAX_EXPANDED_ELEMENTS:
                raise self.error(
                    f"{what}: {numel:,} elements repeat a storage of {storage.numel:,} (stride 0); "
                    f"refusing to expand beyond {MAX_EXPANDED_ELEMENTS:,}"
                )
            self.tensor_bytes += numel * storage.dtype.itemsize
            if self.tensor_bytes > MAX_WEIGHTS_FILE_BYTES:
                raise self.error(f"its tensors take more than {MAX_WEIGHTS_FILE_BYTES:,} bytes in all")
            data = self.storage_data(storage, last + 1)
            itemsize = storage.dtype.itemsize
            view = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=[s * itemsize for s in stride])
            array = np.ascontiguousarray(view)
        return array.view(BFloat16Array) if storage.bfloat16 else array


# --- files ----------------------------------------------------------------------------------------


def check_file_size(path: Path) -> int:
    """The size of a weights file, refused above `MAX_WEIGHTS_FILE_BYTES` or when empty."""
    size = path.stat().st_size
    if size > MAX_WEIGHTS_FILE_BYTES:
        raise WeightsError(f"{path}: {size:,} bytes, more than the {MAX_WEIGHTS_FILE_BYTES:,} a weights file may have")
    if size == 0:
        raise WeightsError(f"{path}: the file is empty")
    return size


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap]:
    """The file's bytes without copying them all: the machine copies only the strings and arrays it builds."""
    check_file_size(path)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        yield data


def _run(machine: _PickleMachine, stream: Any, what: str) -> Any:
    try:
        return machine.run(stream)
    except WeightsError as exc:
        if str(exc).startswith(f"{machine.source}: "):
            raise
        raise type(exc)(f"{machine.source}: {exc}") from None  # raised by a builder that does not know the file
    except Exception as exc:  # a truncated or foreign file, or memory that ran out: say which file and why
        raise WeightsError(f"{machine.source}: {what} ({type(exc).__name__}: {clip(str(exc), 200)})") from exc


def _check_zip_directory(path: Path) -> None:
    """Refuse a zip whose central directory is too large, before `zipfile` parses all of it into memory."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - (22 + 65535)))  # the end record and its longest comment
        tail = handle.read()
        end = tail.rfind(b"PK\x05\x06")
        if end < 0:
            return  # not found here: zipfile says what is wrong
        directory = int.from_bytes(tail[end + 12 : end + 16], "little")
        locator = tail[end - 20 : end] if end >= 20 else b""
        if directory == 0xFFFFFFFF and locator[:4] == b"PK\x06\x07":  # zip64: the size is in another record
            handle.seek(int.from_bytes(locator[8:16], "little"))
            directory = int.from_bytes(handle.read(56)[40:48], "little")
    if directory > MAX_ZIP_DIRECTORY_BYTES:
        raise WeightsError(
            f"{path}: its zip directory takes {directory:,} bytes; a checkpoint's takes far less than "
            f"{MAX_ZIP_DIRECTORY_BYTES:,}"
        )


def load_pickle_data(path: Path) -> Any:
    """Unpickle a Paddle `.pdparams` (or any plain pickle of arrays) as data only."""
    path = Path(path)
    with _mapped(path) as data:
        return _run(_PickleMachine(path, _DATA_GLOBALS), data, "not a readable pickle of weights")


def load_torch_checkpoint(path: Path) -> Any:
    """Read a PyTorch `torch.save` zip checkpoint into numpy arrays, without importing torch."""
    path = Path(path)
    check_file_size(path)
    if not zipfile.is_zipfile(path):
        with _mapped(path) as data:
            first = _run(_PickleMachine(path, _DATA_GLOBALS), data, "neither a PyTorch zip checkpoint nor a pickle")
        if type(first) is int and first == _TORCH_LEGACY_MAGIC:
            raise WeightsError(
                f"{path}: PyTorch's legacy (pre-1.6) checkpoint format is not supported; "
                "re-save it with torch>=1.6 or as .safetensors"
            )
        return first
    _check_zip_directory(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [info for info in archive.infolist() if info.filename.rpartition("/")[2] == "data.pkl"]
            if len(pickles) != 1:
                raise WeightsError(f"{path}: a PyTorch checkpoint holds one data.pkl, found {len(pickles)}")
            info = pickles[0]
            if info.file_size > MAX_TORCH_PICKLE_BYTES:
                raise WeightsError(
                    f"{path}: its data.pkl declares {info.file_size:,} bytes; a checkpoint's structure takes "
                    f"far less than {MAX_TORCH_PICKLE_BYTES:,} (its tensors are separate entries)"
                )
            with archive.open(info) as handle:
                structure = handle.read(MAX_TORCH_PICKLE_BYTES + 1)
            if len(structure) > MAX_TORCH_PICKLE_BYTES:
                raise WeightsError(f"{path}: its data.pkl holds more than {MAX_TORCH_PICKLE_BYTES:,} bytes")
            prefix = info.filename[: -len("data.pkl")]
            machine = _TorchZipMachine(path, archive, prefix)
            return _run(machine, io.BytesIO(structure), "corrupt PyTorch checkpoint")
    except WeightsError:
        raise
    except Exception as exc:  # the zip's own structure: bad offsets, CRC, truncation
        raise WeightsError(f"{path}: corrupt PyTorch checkpoint ({type(exc).__name__}: {clip(str(exc), 200)})") from exc
