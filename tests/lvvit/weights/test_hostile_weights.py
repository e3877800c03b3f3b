"""Hostile weights files: each class of crafted file gets a typed error that names it, in bounded time and memory.

The files are written here, small: a pickle emitter (below) writes what `pickle`
itself cannot (a dict key that would take 2^100 steps to hash cannot even be
built in this process). Each reader runs in a child process under RLIMIT_AS
(`tests.bounded`), so a reader that allocated what a file declares would fail
with MemoryError, and one that hung would time out, instead of passing.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
import signal
import struct
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvvit import LvvitError, UnsafeWeightsError, WeightsError
from lvvit.weights.safe_pickle import MAX_CONTAINER_DEPTH, load_pickle_data, load_torch_checkpoint
from lvvit.weights.state_dict import read_state_dict
from tests.bounded import run_bounded

# numpy, safetensors and the readers fit in well under this; no reader may need more for a small file.
MEMORY_LIMIT = 1 << 30
SECONDS = 10.0


# --- a pickle emitter for crafted files --------------------------------------------------------------


class Call:
    """`module.name(*args)`: GLOBAL, the args tuple, REDUCE."""

    def __init__(self, module: str, name: str, *args: object) -> None:
        self.module, self.name, self.args = module, name, args


class Pairs:
    """A dict given as pairs, so that its keys are never hashed here."""

    def __init__(self, pairs: list[tuple[object, object]]) -> None:
        self.pairs = pairs


class Frozen:
    """A frozenset given as items (FROZENSET opcode), never hashed here."""

    def __init__(self, items: list[object]) -> None:
        self.items = items


class Build:
    """`target` then BUILD with `state` (how numpy restores an array or a dtype)."""

    def __init__(self, target: object, state: object) -> None:
        self.target, self.state = target, state


class Py2Str(bytes):
    """Python 2's str (BINSTRING), as Python 2 pickled an array's data."""


class Global:
    """A bare GLOBAL `module.name`, not called (a storage type, numpy.ndarray)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Pid:
    """A persistent id (BINPERSID), as PyTorch's storages are referenced."""

    def __init__(self, value: tuple) -> None:
        self.value = value


def dumps(obj: object) -> bytes:
    """A protocol-2 pickle of `obj` in which every shared tuple is written once and referenced (memo)."""
    out = bytearray(b"\x80\x02")
    memo: dict[int, int] = {}

    def memoize(item: object) -> None:
        memo[id(item)] = len(memo)
        out.extend(b"r" + struct.pack("<I", memo[id(item)]))

    def emit(item: object) -> None:
        if id(item) in memo:
            out.extend(b"j" + struct.pack("<I", memo[id(item)]))
        elif item is None:
            out.extend(b"N")
        elif isinstance(item, bool):
            out.extend(b"\x88" if item else b"\x89")
        elif isinstance(item, int):
            raw = item.to_bytes((item.bit_length() + 8) // 8, "little", signed=True)
            out.extend(b"\x8b" + struct.pack("<I", len(raw)) + raw)  # LONG4
        elif isinstance(item, float):
            out.extend(b"G" + struct.pack(">d", item))
        elif isinstance(item, str):
            data = item.encode()
            out.extend(b"X" + struct.pack("<I", len(data)) + data)
        elif isinstance(item, Py2Str):
            out.extend(b"T" + struct.pack("<I", len(item)) + item)
        elif isinstance(item, bytes):
            out.extend(b"B" + struct.pack("<I", len(item)) + item)
        elif isinstance(item, tuple):
            out.extend(b"(")
            for value in item:
                emit(value)
            out.extend(b"t")
            memoize(item)
        elif isinstance(item, list):
            out.extend(b"]")
            memoize(item)
            out.extend(b"(")
            for value in item:
                emit(value)
            out.extend(b"e")  # APPENDS
        elif isinstance(item, (Pairs, dict)):
            out.extend(b"}")
            memoize(item)
            out.extend(b"(")
            for key, value in item.pairs if isinstance(item, Pairs) else item.items():
                emit(key)
                emit(value)
            out.extend(b"u")  # SETITEMS
        elif isinstance(item, Frozen):
            out.extend(b"(")
            for value in item.items:
                emit(value)
            out.extend(b"\x91")
        elif isinstance(item, Call):
            out.extend(f"c{item.module}\n{item.name}\n".encode())
            emit(item.args)
            out.extend(b"R")
            memoize(item)
        elif isinstance(item, Build):
            emit(item.target)
            emit(item.state)
            out.extend(b"b")
        elif isinstance(item, Global):
            out.extend(f"c{item.module}\n{item.name}\n".encode())
        elif isinstance(item, Pid):
            emit(item.value)
            out.extend(b"Q")
        else:
            raise TypeError(item)

    emit(obj)
    return bytes(out + b".")


def doubling_tuple(levels: int) -> tuple:
    """A tuple nested `levels` deep, each level holding the one below twice: 2^levels steps to hash or repr."""
    item: tuple = ()
    for _ in range(levels):
        item = (item, item)
    return item


def torch_tensor(key: str, numel: int, offset: int, size: tuple, stride: tuple, storage: str = "FloatStorage") -> Call:
    """What torch.save writes for a tensor: `_rebuild_tensor_v2(storage record, offset, size, stride, ...)`."""
    record = Pid(("storage", Global("torch", storage), key, "cpu", numel))
    hooks = Call("collections", "OrderedDict")
    return Call("torch._utils", "_rebuild_tensor_v2", record, offset, size, stride, False, hooks)


def write_torch_zip(
    path: Path | io.BytesIO, structure: bytes, storages: dict[str, bytes], compress: bool = False
) -> Path:
    """A `torch.save`-shaped zip: archive/data.pkl and one archive/data/<key> entry per storage."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", structure)
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", "3\n")
    return path


def declare_size(path: Path, entry: str, declared: int, stored: int | None = None) -> None:
    """Patch the uncompressed (and optionally the stored) size that the zip's headers declare for `entry`."""
    data = bytearray(path.read_bytes())
    name = entry.encode()
    # (signature, header length, offset of the stored size; the uncompressed size follows it)
    for signature, header, field in ((b"PK\x03\x04", 30, 18), (b"PK\x01\x02", 46, 20)):
        start = data.find(signature)
        while start >= 0:
            if data[start + header : start + header + len(name)] == name:
                data[start + field + 4 : start + field + 8] = struct.pack("<I", declared)
                if stored is not None:
                    data[start + field : start + field + 4] = struct.pack("<I", stored)
            start = data.find(signature, start + 1)
    path.write_bytes(bytes(data))


# --- running a reader under limits -------------------------------------------------------------------


def read_bounded(path: Path, reader: str = "read_state_dict"):
    module = "lvvit.weights" if reader == "read_state_dict" else "lvvit.weights.safe_pickle"
    code = f"from pathlib import Path\nfrom {module} import {reader}\n{reader}(Path({str(path)!r}))"
    return run_bounded(code, memory_limit=MEMORY_LIMIT, timeout_s=60)


def assert_refused(path: Path, pattern: str, error: type = WeightsError, reader: str = "read_state_dict") -> str:
    """The reader fails with `error`, a message naming the file and matching `pattern`, fast, under the cap."""
    result = read_bounded(path, reader)
    assert result.raised(error), f"{result.outcome} {result.error_type}: {result.message}\n{result.output[-3000:]}"
    assert path.name in result.message and re.search(pattern, result.message), result.message
    assert result.seconds < SECONDS, f"took {result.seconds:.1f} s"
    assert len(result.message) < 1200, f"a message of {len(result.message)} characters"
    return result.message


# --- as_strided: a tensor must lie inside its storage ------------------------------------------------


@pytest.mark.parametrize(
    ("numel", "offset", "size", "stride", "pattern"),
    [
        (4, 0, (10,), (1,), r"reach element 9 of a storage of 4"),
        (6, 0, (2, 3), (4, 1), r"size \(2, 3\), stride \(4, 1\) and offset 0 reach element 6 of a storage of 6"),
        (4, 3, (2,), (1,), r"reach element 4 of a storage of 4"),
        (4, -2, (2,), (1,), r"offset -2"),
        (4, 0, (2,), (-1,), r"stride \(-1,\) holds something other than integers >= 0"),
        (1, 0, (1 << 21,), (0,), r"2,097,152 elements repeat a storage of 1 \(stride 0\)"),
    ],
)
def test_tensor_outside_its_storage_is_refused(tmp_path, numel, offset, size, stride, pattern):
    structure = dumps({"head.weight": torch_tensor("0", numel, offset, size, stride)})
    path = write_torch_zip(tmp_path / "strided.pth.tar", structure, {"0": np.arange(numel, dtype="<f4").tobytes()})
    assert_refused(path, pattern)


def test_tensor_views_inside_their_storage_still_load(tmp_path):
    storage = np.arange(1000, dtype="<f4")
    structure = dumps(
        {
            "a": torch_tensor("0", 1000, 0, (2,), (1,)),  # the storage is read only this far, first
            "b": torch_tensor("0", 1000, 1, (2, 2), (997, 1)),  # a strided view reaching the last element
            "c": torch_tensor("0", 1000, 2, (3,), (0,)),  # a small stride-0 expansion (torch's expand)
        }
    )
    for compress in (False, True):
        path = write_torch_zip(tmp_path / f"views{compress}.pth.tar", structure, {"0": storage.tobytes()}, compress)
        state, layout, _ = read_state_dict(path)
        np.testing.assert_array_equal(state["a"], [0, 1])
        np.testing.assert_array_equal(state["b"], [[1, 2], [998, 999]])
        np.testing.assert_array_equal(state["c"], [2, 2, 2])
        assert layout == "torch"


def test_a_storage_is_read_only_as_far_as_its_tensors_reach(tmp_path):
    # A 1 GiB storage (as declared: 6 MB of deflated data, within the 200x bound) under a 10-float tensor.
    # Reading the whole entry would fail (it holds 6 MB); reading the 40 bytes the tensor needs succeeds.
    numel = 1 << 28
    data = np.random.default_rng(0).integers(0, 256, 6 << 20, dtype=np.uint8).tobytes()
    structure = dumps({"head.weight": torch_tensor("0", numel, 0, (10,), (1,))})
    path = write_torch_zip(tmp_path / "prefix.pth.tar", structure, {"0": data}, compress=True)
    declare_size(path, "archive/data/0", numel * 4)
    read = f"read_state_dict({str(path)!r})[0]['head.weight'].tolist()"
    code = f"from lvvit.weights import read_state_dict\nprint({read})"
    result = run_bounded(code, memory_limit=MEMORY_LIMIT, timeout_s=60)
    assert result.outcome == "returned", result.output[-3000:]
    assert str(np.frombuffer(data[:40], dtype="<f4").tolist()) in result.output


# --- hash bombs, deep nesting and reprs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("levels", "pattern"),
    [
        (100, rf"containers nest deeper than {MAX_CONTAINER_DEPTH} levels"),  # 2^100 steps to hash
        (30, r"a dict key or set item is a tuple \(\(\(\(\("),  # within the depth bound, still 2^30 steps
    ],
)
@pytest.mark.parametrize("container", [".pdparams", ".pth.tar"])
def test_dict_key_that_takes_exponential_time_to_hash_is_refused(tmp_path, levels, pattern, container):
    bomb = Pairs([(doubling_tuple(levels), 1.0)])
    path = tmp_path / f"hashbomb{container}"
    if container == ".pdparams":
        path.write_bytes(dumps(bomb))
    else:
        write_torch_zip(path, dumps(Pairs([("state_dict", bomb)])), {})
    assert path.stat().st_size < 2000
    assert_refused(path, pattern)


@pytest.mark.parametrize("build", ["opcode", "call"])
def test_frozenset_of_nested_tuples_is_refused(tmp_path, build):
    items = [doubling_tuple(27), doubling_tuple(28)]
    payload = Frozen(items) if build == "opcode" else Call("builtins", "frozenset", items)
    path = tmp_path / "frozen.pdparams"
    path.write_bytes(dumps({"head.weight": payload}))
    assert_refused(path, r"a dict key or set item is a tuple")


def test_containers_nested_beyond_the_limit_are_refused(tmp_path):
    nested: list = []
    for _ in range(200):  # the emitter recurses: Python's stack allows a few hundred levels here
        nested = [nested]
    path = tmp_path / "deep.pdparams"
    path.write_bytes(dumps({"head.weight": nested}))
    assert_refused(path, rf"containers nest deeper than {MAX_CONTAINER_DEPTH} levels")


def test_names_and_values_in_messages_are_cut_short(tmp_path):
    path = tmp_path / "quoted.pdparams"
    path.write_bytes(dumps({"x" * 1_000_000: doubling_tuple(30)}))  # a megabyte name; repr() of the value: 2^30 steps
    assert_refused(path, r"entry 'x{77}\.\.\.' is a tuple, not an array")


def test_a_pickle_that_runs_too_many_opcodes_is_refused(tmp_path):
    path = tmp_path / "long.pdparams"
    path.write_bytes(b"\x80\x02]" + b"(" + b"K\x01" * 1_100_000 + b"e.")
    assert_refused(path, r"runs more than 1,000,000 opcodes")


def test_huge_integers_are_refused(tmp_path):
    path = tmp_path / "bigint.pdparams"
    path.write_bytes(dumps({"head.weight": 1 << 100_000}))
    assert_refused(path, r"an integer of 100,001 bits")


def test_cycles_are_refused(tmp_path):
    # a list that contains itself: EMPTY_LIST, PUT 0, GET 0, APPEND ... then places it in a dict and appends more
    path = tmp_path / "cycle.pdparams"
    path.write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00a]q\x01sh\x01h\x01a.")
    assert_refused(path, r"changes a container after placing it inside another")


# --- declared sizes: storages are checked against their records before a byte is read ------------------


def test_storage_declaring_3_gib_for_a_10_float_tensor_is_refused_before_reading(tmp_path):
    structure = dumps({"head.weight": torch_tensor("0", 10, 0, (10,), (1,))})
    path = write_torch_zip(tmp_path / "bomb.pth.tar", structure, {"0": bytes(1 << 20)}, compress=True)
    declare_size(path, "archive/data/0", 3 << 30)
    assert path.stat().st_size < 10_000
    assert_refused(path, r"storage archive/data/0 declares 3,221,225,472 bytes, but its record says 10 elements x 4")


def test_compressed_storage_expanding_beyond_the_ratio_is_refused(tmp_path):
    numel = (3 << 30) // 4
    structure = dumps({"head.weight": torch_tensor("0", numel, 0, (10,), (1,))})
    path = write_torch_zip(tmp_path / "ratio.pth.tar", structure, {"0": bytes(1 << 20)}, compress=True)
    declare_size(path, "archive/data/0", 3 << 30)
    assert_refused(path, r"expands [\d,]+ compressed bytes to 3,221,225,472 \(more than 200x")


def test_stored_entry_declaring_more_than_the_file_holds_is_refused(tmp_path):
    numel = 1 << 28
    structure = dumps({"head.weight": torch_tensor("0", numel, 0, (numel,), (1,))})
    path = write_torch_zip(tmp_path / "short.pth.tar", structure, {"0": bytes(64)})
    declare_size(path, "archive/data/0", numel * 4)
    assert_refused(path, r"storage archive/data/0 declares 1,073,741,824 bytes but stores 64")
    declare_size(path, "archive/data/0", numel * 4, stored=numel * 4)
    assert_refused(path, r"storage archive/data/0 declares 1,073,741,824 stored bytes; the file has \d")


def test_data_pkl_declaring_a_huge_size_is_refused(tmp_path):
    path = write_torch_zip(tmp_path / "pkl.pth.tar", dumps({}) + bytes(1 << 20), {}, compress=True)
    declare_size(path, "archive/data.pkl", 3 << 30)
    assert_refused(path, r"its data.pkl declares 3,221,225,472 bytes")


def test_zip_directory_declaring_a_huge_size_is_refused_before_parsing(tmp_path):
    path = write_torch_zip(tmp_path / "directory.pth.tar", dumps({}), {})
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 12 : end + 16] = struct.pack("<I", 1 << 30)
    path.write_bytes(bytes(data))
    assert_refused(path, r"its zip directory takes 1,073,741,824 bytes")


def test_safetensors_header_length_is_bounded(tmp_path):
    path = tmp_path / "header.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    assert_refused(path, r"not a safetensors file: its header length 1,099,511,627,776 is not between 1 and 2")


# --- the dtype policy: float32 kept, float16/bfloat16/float64 converted, anything else refused ----------


def _pdparams(path: Path, state: dict) -> Path:
    path.write_bytes(pickle.dumps(state, protocol=4))
    return path


def _safetensors(path: Path, state: dict) -> Path:
    from safetensors.numpy import save_file

    save_file(state, str(path))
    return path


def _torch(path: Path, state: dict) -> Path:
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, str(path))
    return path


WRITERS = {".pdparams": _pdparams, ".safetensors": _safetensors, ".pth.tar": _torch}


@pytest.mark.parametrize("suffix", list(WRITERS))
@pytest.mark.parametrize("dtype", ["int8", "bool", "int64", "complex64"])
def test_non_float_weights_are_refused_naming_the_keys(tmp_path, suffix, dtype):
    state = {"head.weight": np.ones((2, 3), dtype=dtype), "head.bias": np.zeros(3, dtype=np.float32)}
    path = WRITERS[suffix](tmp_path / f"w{suffix}", state)
    message = assert_refused(path, r"1 entries are not floating-point weights: head\.weight \(")
    assert dtype in message and "head.bias" not in message


@pytest.mark.parametrize(
    ("array", "shown"),
    [
        (np.array(["abc", "de"]), "<U3"),
        (np.array(["2024-01-01"], dtype="datetime64[D]"), "datetime64"),
        (np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]), "structured"),
        (np.array([{"x": 1}, None], dtype=object), "object"),
        (np.zeros(2, dtype=np.longdouble), "float128"),
    ],
)
def test_text_date_record_and_object_arrays_are_refused_naming_the_keys(tmp_path, array, shown):
    path = _pdparams(tmp_path / "w.pdparams", {"blocks.0.norm1.weight": array})
    message = assert_refused(path, r"entries are not floating-point weights: blocks\.0\.norm1\.weight \(")
    assert shown in message


def test_only_an_integer_batch_counter_passes_the_policy(tmp_path):
    counter = {"bn.num_batches_tracked": np.array(7, dtype=np.int64), "bn.weight": np.ones(2, dtype=np.float32)}
    state, _, _ = read_state_dict(_torch(tmp_path / "w.pth.tar", counter))
    assert state["bn.num_batches_tracked"] == 7
    text = {"bn.num_batches_tracked": np.array(["x"]), "bn.weight": np.ones(2, dtype=np.float32)}
    assert_refused(_pdparams(tmp_path / "w.pdparams", text), r"bn\.num_batches_tracked \(<U1\)")


def test_non_string_keys_are_refused(tmp_path):
    path = _pdparams(tmp_path / "w.pdparams", {3: np.zeros(2, dtype=np.float32)})
    assert_refused(path, r"a key 3 is a int; weight names are strings")


@pytest.mark.parametrize(
    ("suffix", "dtype"),
    [(suffix, dtype) for suffix in WRITERS for dtype in ("float16", "float64")]
    + [(".safetensors", "bfloat16"), (".pth.tar", "bfloat16")],  # numpy, and so a .pdparams, has no bfloat16
)
def test_float16_bfloat16_and_float64_are_converted_and_logged(tmp_path, caplog, suffix, dtype):
    values = np.array([[0.5, -1.25, 3.0]], dtype=np.float32)
    if dtype == "bfloat16":
        path = _bfloat16_file(tmp_path / f"w{suffix}", values)
    else:
        path = WRITERS[suffix](tmp_path / f"w{suffix}", {"head.weight": values.astype(dtype)})
    with caplog.at_level(logging.WARNING, logger="lvvit.weights"):
        state, _, _ = read_state_dict(path)
    assert state["head.weight"].dtype == np.float32
    np.testing.assert_array_equal(state["head.weight"], values)
    assert f"converted to float32 on load: 1 {dtype} tensors" in caplog.text


def _raw_safetensors(path: Path, name: str, dtype: str, shape: tuple[int, ...], data: bytes) -> Path:
    """A safetensors file written by hand, for the dtypes numpy cannot hold."""
    header = json.dumps({name: {"dtype": dtype, "shape": list(shape), "data_offsets": [0, len(data)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _bfloat16_file(path: Path, values: np.ndarray) -> Path:
    if path.name.endswith(".safetensors"):
        bits = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
        return _raw_safetensors(path, "head.weight", "BF16", values.shape, bits)
    torch = pytest.importorskip("torch")
    torch.save({"head.weight": torch.from_numpy(values).to(torch.bfloat16)}, str(path))
    return path


def test_float8_safetensors_are_refused_naming_the_keys(tmp_path):
    path = _raw_safetensors(tmp_path / "w.safetensors", "head.weight", "F8_E4M3", (2, 2), bytes(4))
    assert_refused(path, r"1 entries are not floating-point weights: head\.weight \(F8_E4M3\)")


@pytest.mark.parametrize("suffix", list(WRITERS))
def test_nan_and_inf_weights_are_refused_naming_the_tensors(tmp_path, suffix):
    bad = np.ones((4, 4), dtype=np.float32)
    bad[0, 1], bad[2, 2] = np.nan, -np.inf
    state = {"blocks.0.attn.qkv.weight": bad, "head.bias": np.zeros(3, dtype=np.float32)}
    path = WRITERS[suffix](tmp_path / f"w{suffix}", state)
    message = assert_refused(path, r"1 tensors hold NaN or inf values: blocks\.0\.attn\.qkv\.weight \(2 of 16\)")
    assert "head.bias" not in message


def test_float64_beyond_float32_range_is_refused_as_inf(tmp_path):
    path = _pdparams(tmp_path / "w.pdparams", {"head.weight": np.array([1e300, 1.0])})
    assert_refused(path, r"head\.weight \(1 of 2\).*float64 values beyond float32's range become inf")


# --- Paddle's protocol-2 files: exactly what plain bytes need -------------------------------------------


def test_paddle_protocol_2_file_loads(tmp_path):
    import paddle

    from lvvit import create_model
    from tests.conftest import TINY

    model = create_model("lvvit_s", resolution=64, seed=5, **TINY)
    paddle.save(model.state_dict(), str(tmp_path / "p2.pdparams"), protocol=2)
    assert b"_codecs\nencode" in (tmp_path / "p2.pdparams").read_bytes()
    loaded = create_model("lvvit_s", weights=tmp_path / "p2.pdparams", resolution=64, **TINY)
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32))
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (Call("_codecs", "encode", "abc", "utf-16"), r"`_codecs.encode\('abc', 'utf-16'\)`: only \(text, 'latin1'\)"),
        (Call("_codecs", "encode", ["x"], "latin1"), r"only \(text, 'latin1'\)"),
        (Call("_codecs", "decode", b"abc", "hex"), r"asks for `_codecs.decode`"),
        (Call("codecs", "encode", "abc", "latin1"), r"asks for `codecs.encode`"),
    ],
)
def test_codecs_beyond_latin1_bytes_are_refused(tmp_path, call, pattern):
    path = tmp_path / "codecs.pdparams"
    path.write_bytes(dumps({"head.weight": call}))
    assert_refused(path, pattern, UnsafeWeightsError)


def test_python_2_array_data_loads(tmp_path):
    # Python 2 pickled an array's bytes as its str; numpy reads them back as latin-1, and so does the reader.
    values = np.array([0.5, -2.0, 3.25], dtype="<f4")
    dtype = Build(Call("numpy", "dtype", "f4", False, True), (3, "<", None, None, None, -1, -1, 0))
    array = Build(
        Call("numpy.core.multiarray", "_reconstruct", Global("numpy", "ndarray"), (0,), Py2Str(b"b")),
        (1, (3,), dtype, False, Py2Str(values.tobytes())),
    )
    path = tmp_path / "py2.pdparams"
    path.write_bytes(dumps({"head.bias": array}))
    state, _, _ = read_state_dict(path)
    np.testing.assert_array_equal(state["head.bias"], values)


# --- fuzz: mutated and generated files raise the kit's errors only, and never hang ------------------------

# What a reader bug would raise: the readers wrap foreign-file failures (ValueError from the opcode decoder,
# zipfile's BadZipFile, EOFError, ...) in WeightsError; these, as a cause, mean the reader itself is wrong.
_BUG_TYPES = (AttributeError, TypeError, NameError, IndexError, KeyError, RecursionError, AssertionError)


class _Hang(BaseException):
    """Raised by the alarm: a BaseException, so that no reader's `except Exception` can swallow it."""


@contextmanager
def _no_hang(seconds: int = 10):
    def stop(_signum, _frame):
        raise _Hang(f"a reader ran more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _read_only_kit_errors(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with _no_hang():
        try:
            read_state_dict(path)
        except LvvitError as error:
            assert not isinstance(error.__cause__, _BUG_TYPES), repr(error.__cause__)


def _seeds() -> dict[str, bytes]:
    state = {
        "head.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "head.bias": np.array([0.5, -1.5], dtype=np.float16),
    }
    seeds = {f"p{protocol}": pickle.dumps(state, protocol=protocol) for protocol in (2, 4)}
    structure = dumps(
        Pairs(
            [
                ("state_dict", {"head.weight": torch_tensor("0", 6, 0, (2, 3), (3, 1))}),
                ("args", Call("argparse", "Namespace")),
                ("tags", Call("builtins", "set", ["a", 1])),
            ]
        )
    )
    buffer = io.BytesIO()
    write_torch_zip(buffer, structure, {"0": np.arange(6, dtype="<f4").tobytes()})
    seeds["zip"] = buffer.getvalue()
    return seeds


SEEDS = _seeds()
FUZZ = settings(
    max_examples=300, deadline=5000, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[kind])
    for _ in range(draw(st.integers(1, 8))):
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        if action == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[where] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[where:]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[where : where + draw(st.integers(1, 16))]
        data = data or bytearray(b"\x80")
    return kind, bytes(data)


@FUZZ
@given(case=mutated())
def test_fuzz_mutated_weights_files_raise_only_kit_errors(tmp_path, case):
    kind, data = case
    _read_only_kit_errors(tmp_path / ("fuzz.pth.tar" if kind == "zip" else "fuzz.pdparams"), data)


# Opcode snippets: a random program over these exercises every handler with wrong stacks, marks and types.
_SNIPPETS = [
    b"(",
    b")",
    b"]",
    b"}",
    b"t",
    b"\x85",
    b"\x86",
    b"\x87",
    b"l",
    b"d",
    b"e",
    b"a",
    b"s",
    b"u",
    b"\x8f",
    b"\x90",
    b"\x91",
    b"0",
    b"1",
    b"2",
    b"N",
    b"\x88",
    b"\x89",
    b"K\x05",
    b"J\xff\xff\xff\xff",
    b"G" + struct.pack(">d", 1.5),
    b"X\x01\x00\x00\x00a",
    b"X\x02\x00\x00\x00f4",
    b"C\x04\x00\x00\x80?",
    b"q\x00",
    b"h\x00",
    b"q\x01",
    b"h\x01",
    b"\x94",
    b"R",
    b"b",
    b"\x81",
    b"Q",
    b"cnumpy\ndtype\n",
    b"cnumpy\nndarray\n",
    b"cnumpy._core.multiarray\n_reconstruct\n",
    b"cnumpy.core.multiarray\nscalar\n",
    b"ccollections\nOrderedDict\n",
    b"cbuiltins\nset\n",
    b"c_codecs\nencode\n",
    b"X\x06\x00\x00\x00latin1",
    b"cargparse\nNamespace\n",
    b"cos\nsystem\n",
    b"ctorch\nFloatStorage\n",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"X\x07\x00\x00\x00storage",
    b"X\x01\x00\x00\x000",
    b"X\x03\x00\x00\x00cpu",
    b"\x8a\x01\x01",
    b"\x95\x00\x00\x00\x00\x00\x00\x00\x00",
]


@FUZZ
@given(program=st.lists(st.sampled_from(_SNIPPETS), max_size=40), in_zip=st.booleans())
def test_fuzz_generated_pickles_raise_only_kit_errors(tmp_path, program, in_zip):
    data = b"\x80\x04" + b"".join(program) + b"."
    if in_zip:  # as a torch checkpoint's data.pkl, beside a storage "0" of 6 floats
        buffer = io.BytesIO()
        write_torch_zip(buffer, data, {"0": np.arange(6, dtype="<f4").tobytes()})
        _read_only_kit_errors(tmp_path / "gen.pth.tar", buffer.getvalue())
    else:
        _read_only_kit_errors(tmp_path / "gen.pdparams", data)


def test_fuzz_seeds_are_valid_weights(tmp_path):
    # The mutations start from files that load: otherwise the fuzz would only ever see garbage.
    for kind, data in SEEDS.items():
        path = tmp_path / ("seed.pth.tar" if kind == "zip" else "seed.pdparams")
        path.write_bytes(data)
        state, _, _ = read_state_dict(path)
        assert state["head.weight"].shape == (2, 3)
    assert isinstance(load_pickle_data(tmp_path / "seed.pdparams"), dict)
    assert "args" in load_torch_checkpoint(tmp_path / "seed.pth.tar")
