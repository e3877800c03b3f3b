"""The Open Inference Protocol (KServe V2) REST wire format: an infer request in, an infer response out.

Two body layouts, as Triton has them: plain JSON (tensor `data` as lists), and JSON followed by raw tensor bytes
(the binary-data extension, which `tritonclient.http` uses by default): the header
`Inference-Header-Content-Length` gives the JSON's length, and each input with a `binary_data_size` parameter
takes that many bytes of the rest, in order. `BYTES` elements in binary are each a 4-byte little-endian length
and the bytes; in JSON they are strings, or base64 with the input parameter `"content_type": "base64"`.

Everything here is pure (bytes in, values out) and refuses what does not fit with a `BadRequestError` naming the
field: which input, which shape, which datatype.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadRequestError

HEADER_LENGTH = "Inference-Header-Content-Length"
NUMPY_TYPES = {"FP32": np.float32, "INT64": np.int64}
MAX_JSON_DEPTH = 12  # a 4-D tensor written as nested lists sits 7 deep in a request


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # Triton's classification extension: top-k "score:index:label" strings


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    value: np.ndarray | list[bytes]  # FP32 array, or encoded elements of a BYTES tensor


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None: every output
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_output: bool = False  # request parameter `binary_data_output`: the default for outputs not listed


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    value: np.ndarray | list[list[bytes]]  # numbers, or BYTES rows


def _load_json(text: bytes, what: str) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadRequestError(f"{what}: JSON nested too deep", "json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"{what}: malformed JSON ({exc})", "json") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise BadRequestError(f"{what}: JSON nested more than {MAX_JSON_DEPTH} levels deep", "json")
    return value


def _depth(value: Any) -> int:
    """Nesting depth; a list whose first item is a number counts as one level (tensor data is checked later)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            items: Sequence[Any] = list(item.values())
        elif isinstance(item, list) and item and isinstance(item[0], (list, dict)):
            items = item
        else:
            deepest = max(deepest, level - (not isinstance(item, (list, dict))))
            continue
        deepest = max(deepest, level)
        if level > MAX_JSON_DEPTH:
            return level
        stack.extend((child, level + 1) for child in items)
    return deepest


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true or false"}


def _typed(value: Any, kind: type, where: str) -> Any:
    """`value` if it is a `kind` (an int is no bool here), else a `BadRequestError` naming `where`."""
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BadRequestError(f"{where} must be {_TYPE_NAMES[kind]}, got {json.dumps(value)[:80]}")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    dims = _typed(value, list, f"{where} 'shape'")
    if not dims or len(dims) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise BadRequestError(f"{where} 'shape' must be 1 to 8 non-negative integers, got {json.dumps(dims)[:80]}")
    return tuple(dims)


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """An OIP infer request from its body (and the binary extension's header, when sent)."""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            json_size = -1
        if not 0 < json_size <= len(body):
            raise BadRequestError(
                f"header {HEADER_LENGTH}: {header_length[:40]!r} is not a JSON length within the {len(body)}-byte body"
            )
        header, binary = body[:json_size], memoryview(body)[json_size:]
    else:
        header, binary = body, memoryview(b"")
    request = _typed(_load_json(header, "request"), dict, "the request")
    parameters = _typed(request.get("parameters", {}), dict, "'parameters'")
    inputs = _typed(request.get("inputs"), list, "'inputs'")
    if not inputs:
        raise BadRequestError("'inputs' must list at least one input")
    offset = 0
    parsed = []
    for i, spec in enumerate(inputs):
        tensor, offset = _parse_input(_typed(spec, dict, f"inputs[{i}]"), i, binary, offset)
        parsed.append(tensor)
    if offset != len(binary):
        raise BadRequestError(f"the body holds {len(binary) - offset} bytes after the binary data the inputs declare")
    outputs = request.get("outputs")
    requested = None
    if outputs is not None:
        requested = [
            _parse_output(_typed(o, dict, f"outputs[{i}]"), i) for i, o in enumerate(_typed(outputs, list, "'outputs'"))
        ]
    request_id = request.get("id")
    if request_id is not None:
        _typed(request_id, str, "'id'")
    binary_output = bool(_typed(parameters.get("binary_data_output", False), bool, "parameter 'binary_data_output'"))
    return InferRequest(request_id, parsed, requested, parameters, binary_output)


def _parse_input(spec: dict[str, Any], i: int, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    name = _typed(spec.get("name"), str, f"inputs[{i}] 'name'")
    where = f"input {name!r}"
    datatype = _typed(spec.get("datatype"), str, f"{where} 'datatype'")
    shape = _shape(spec.get("shape"), where)
    parameters = _typed(spec.get("parameters", {}), dict, f"{where} 'parameters'")
    size = parameters.get("binary_data_size")
    count = math.prod(shape)
    if size is not None:
        size = _typed(size, int, f"{where} parameter 'binary_data_size'")
        if size < 0 or offset + size > len(binary):
            raise BadRequestError(
                f"{where}: binary_data_size {size} runs past the body ({len(binary) - offset} bytes left)"
            )
        raw = binary[offset : offset + size]
        offset += size
    elif "data" not in spec:
        raise BadRequestError(f"{where} has neither 'data' nor a 'binary_data_size' parameter")
    if datatype == "BYTES":
        if size is not None:
            elements = _split_bytes(raw, count, where)
        else:
            elements = _json_bytes(spec["data"], parameters.get("content_type"), count, where)
        return InputTensor(name, datatype, shape, elements), offset
    if datatype not in NUMPY_TYPES:
        raise BadRequestError(f"{where}: datatype {datatype!r} is not served here (FP32 tensors or BYTES images)")
    dtype = np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<")
    if size is not None:
        if size != count * dtype.itemsize:
            raise BadRequestError(
                f"{where}: shape {list(shape)} of {datatype} is {count * dtype.itemsize} bytes, the body holds {size}"
            )
        array = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
    else:
        try:
            array = np.asarray(spec["data"], dtype=dtype.newbyteorder("="))
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequestError(f"{where}: 'data' is not a list of {datatype} numbers ({exc})") from None
        if array.size != count:
            raise BadRequestError(f"{where}: shape {list(shape)} needs {count} values, 'data' holds {array.size}")
    return InputTensor(name, datatype, shape, array.reshape(shape)), offset


def _split_bytes(raw: memoryview, count: int, where: str) -> list[bytes]:
    """Triton's BYTES serialization: each element a 4-byte little-endian length, then the bytes."""
    elements: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise BadRequestError(f"{where}: BYTES element {len(elements)} has a cut length prefix")
        (length,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + length > len(raw):
            raise BadRequestError(
                f"{where}: BYTES element {len(elements)} declares {length} bytes, {len(raw) - pos - 4} are left"
            )
        elements.append(bytes(raw[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    if len(elements) != count:
        raise BadRequestError(f"{where}: the shape holds {count} elements, the binary data {len(elements)}")
    return elements


def _json_bytes(data: Any, content_type: Any, count: int, where: str) -> list[bytes]:
    items = _typed(data, list, f"{where} 'data'")
    if len(items) != count or not all(isinstance(item, str) for item in items):
        raise BadRequestError(f"{where}: 'data' must be {count} strings (the shape's element count)")
    if content_type not in (None, "base64"):
        raise BadRequestError(f"{where}: content_type {content_type!r} is not known (base64, or leave it out)")
    if content_type is None:
        return [item.encode() for item in items]
    try:
        return [base64.b64decode(item, validate=True) for item in items]
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"{where}: 'data' is not base64 ({exc})") from None


def _parse_output(spec: dict[str, Any], i: int) -> RequestedOutput:
    name = _typed(spec.get("name"), str, f"outputs[{i}] 'name'")
    parameters = _typed(spec.get("parameters", {}), dict, f"output {name!r} 'parameters'")
    binary = _typed(parameters.get("binary_data", False), bool, f"output {name!r} parameter 'binary_data'")
    classification = _typed(parameters.get("classification", 0), int, f"output {name!r} parameter 'classification'")
    if classification < 0:
        raise BadRequestError(f"output {name!r}: classification must be >= 0, got {classification}")
    return RequestedOutput(name, binary, classification)


def _serialize_bytes(rows: list[list[bytes]]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for row in rows for item in row)


def encode_infer_response(
    model: str, version: str, request_id: str | None, outputs: Sequence[tuple[OutputTensor, bool]]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; outputs flagged binary go after the JSON (binary extension)."""
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, binary in outputs:
        if isinstance(tensor.value, np.ndarray):
            shape = list(tensor.value.shape)
            raw = np.ascontiguousarray(tensor.value, dtype=tensor.value.dtype.newbyteorder("<")).tobytes()
            data: Any = tensor.value.ravel().tolist()
        else:
            shape = [len(tensor.value), len(tensor.value[0]) if tensor.value else 0]
            raw = _serialize_bytes(tensor.value)
            data = [item.decode("utf-8", "replace") for row in tensor.value for item in row]
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": shape}
        if binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = data
        described.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": described}
    if request_id is not None:
        response["id"] = request_id
    header = json.dumps(response).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
