"""Check an ONNX file before a runtime sees it, and read its `metadata_props`, without the `onnx` package.

Runtimes report a damaged file as "Protobuf parsing failed"; this walks the
top-level fields of the `ModelProto` (seeking over the graph, so a large model
costs a few reads) and says what is wrong: missing, empty, not ONNX at all, or
truncated at which byte. The same walk yields the metadata, so ONNX Runtime and
OpenVINO read the kit metadata in one way, with no runtime-specific API.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from lvvit.metadata import MAX_PROPS_BYTES, PREFIX, MetadataError, ModelMetadata

from .errors import ModelFileError

# ModelProto fields (onnx.proto): number -> (name, wire type). 0 = varint, 2 = length-delimited.
_MODEL_FIELDS = {
    1: ("ir_version", 0),
    2: ("producer_name", 2),
    3: ("producer_version", 2),
    4: ("domain", 2),
    5: ("model_version", 0),
    6: ("doc_string", 2),
    7: ("graph", 2),
    8: ("opset_import", 2),
    14: ("metadata_props", 2),
    20: ("training_info", 2),
    25: ("functions", 2),
}
_IR_VERSION, _GRAPH, _METADATA = 1, 7, 14
_VALID_WIRE_TYPES = {0, 1, 2, 5}  # 3/4 (groups) never appear in ONNX; 6/7 do not exist


class _Truncated(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a varint at `pos` of `data` -> (value, next position)."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise _Truncated(pos)
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _read_varint(f: BinaryIO) -> int:
    raw = b""
    while True:
        byte = f.read(1)
        if not byte:
            raise _Truncated(f.tell())
        raw += byte
        if not byte[0] & 0x80:
            return _varint(raw, 0)[0]
        if len(raw) > 10:
            raise ValueError("varint longer than 10 bytes")


def _entry(data: bytes) -> tuple[str, str]:
    """A StringStringEntryProto (key = 1, value = 2) -> (key, value)."""
    out = {1: "", 2: ""}
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        if tag & 7 != 2:
            raise ValueError(f"metadata entry field {tag >> 3} has wire type {tag & 7}")
        length, pos = _varint(data, pos)
        if pos + length > len(data):
            raise ValueError(f"metadata entry field {tag >> 3} needs {length} bytes, the entry holds {len(data) - pos}")
        out[tag >> 3] = data[pos : pos + length].decode("utf-8")
        pos += length
    return out[1], out[2]


_SIGNATURES = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"PK\x03\x04", "a zip archive (PyTorch .pt/.pth, NumPy .npz?)"),
    (b"\x80", "a Python pickle (.pdparams / .pth weights?)"),
    (b"{", "JSON text (a Paddle .json program? use PaddlePredictor)"),
    (b"<", "XML/HTML text (an OpenVINO .xml IR? give the .onnx file)"),
)


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(64)
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return f"; it looks like {what}"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "; it looks like text"
    return ""


def _not_onnx(path: Path, why: str) -> ModelFileError:
    return ModelFileError(f"{path}: not an ONNX model ({why}{_sniff(path)})")


def read_onnx_file(model_path: str | Path) -> tuple[Path, dict[str, str]]:
    """Check that `model_path` is a complete ONNX ModelProto; return (path, metadata_props).

    Raises `ModelFileError` for a missing, empty, truncated or non-ONNX file.
    External-data files (models over 2 GB) are left to the runtime.
    """
    path = Path(model_path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a file (give the path of an .onnx model)")
    try:
        size = path.stat().st_size
        if size == 0:
            raise ModelFileError(f"{path}: empty file (0 bytes), not an ONNX model")
        return path, _walk(path, size)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc.strerror or exc})") from exc


def _walk(path: Path, size: int) -> dict[str, str]:
    props = _BoundedProps()
    seen: set[int] = set()
    with path.open("rb") as f:
        while f.tell() < size:
            start = f.tell()
            try:
                seen.add(_field(f, path, size, props))
            except _Truncated:
                raise ModelFileError(
                    f"{path}: truncated ONNX file: it ends inside the field that starts at byte {start} "
                    f"(size {size} bytes)"
                ) from None
            except (ModelFileError, MetadataError):
                raise
            except (ValueError, UnicodeDecodeError) as exc:
                raise _not_onnx(path, f"byte {start}: {exc}") from None
    missing = [_MODEL_FIELDS[key][0] for key in (_IR_VERSION, _GRAPH) if key not in seen]
    if missing:
        raise _not_onnx(path, f"no {' and no '.join(missing)}; a ModelProto has both")
    return props


class _BoundedProps(dict):
    """metadata_props read so far; all of them together may take at most MAX_PROPS_BYTES (a model has kilobytes)."""

    read_bytes = 0

    def charge(self, path: Path, length: int) -> None:
        self.read_bytes += length
        if self.read_bytes > MAX_PROPS_BYTES:
            raise MetadataError(
                f"{path}: metadata_props take {self.read_bytes} bytes or more; the limit is {MAX_PROPS_BYTES}"
            )


def _field(f: BinaryIO, path: Path, size: int, props: _BoundedProps) -> int:
    """Read or skip the top-level field at the current position; return its number."""
    start = f.tell()
    tag = _read_varint(f)
    number, wire = tag >> 3, tag & 7
    if wire not in _VALID_WIRE_TYPES or number == 0:
        raise _not_onnx(path, f"byte {start} holds no valid protobuf field (tag 0x{tag:x})")
    name, expected = _MODEL_FIELDS.get(number, (f"field {number}", wire))
    if wire != expected:
        raise _not_onnx(path, f"byte {start}: {name} has protobuf wire type {wire}, ONNX uses {expected}")
    if wire == 0:
        _read_varint(f)
    elif wire == 2:
        length = _read_varint(f)
        end = f.tell() + length
        if end > size:
            raise ModelFileError(
                f"{path}: truncated ONNX file: {name} at byte {start} needs {length} bytes but the file "
                f"ends {size - f.tell()} bytes later (size {size} bytes, expected at least {end})"
            )
        if number == _METADATA:
            props.charge(path, length)
            key, value = _entry(f.read(length))
            props[key] = value
        else:
            f.seek(end)
    else:
        width = 8 if wire == 1 else 4
        if f.tell() + width > size:
            raise _Truncated(size)
        f.seek(width, 1)
    return number


def kit_metadata(props: dict[str, str], path: Path) -> ModelMetadata | None:
    """The kit metadata in `props`, None when there is none; `MetadataError` when it is there but unreadable."""
    return ModelMetadata.from_props(props, str(path)) if any(k.startswith(PREFIX) for k in props) else None


def graph_precision(metadata: ModelMetadata | None) -> str:
    """The precision the graph itself computes in ("fp32", "fp16" or "int8" for QDQ), from its kit metadata.

    Every runtime reports this for a reduced-precision file, whatever its own settings (one detection, so drift
    and locate judge a file by the same limits on every runtime); a file without kit metadata counts as fp32.
    """
    return metadata.precision if metadata is not None else "fp32"
