"""Write an ONNX file a piece at a time: the graph, then one initializer (or metadata entry) after another.

Protobuf parses concatenated messages as one merged message: repeated fields append, embedded messages
merge (the protobuf encoding guide, "Last One Wins" and merging). So a `ModelProto` holding only
`graph.initializer = [w]`, written after the model, adds `w` to the model's graph. Every ONNX reader
(onnx, ONNX Runtime, OpenVINO) parses such a file as the model with all its initializers; `onnx.load`
followed by `onnx.save` writes the canonical one-message form. Memory: one tensor at a time, not the
weights twice (a proto and its serialized bytes), as `onnx.save` of a whole model needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit on one message, which an ONNX file without external data is


def _append(out, message: onnx.ModelProto) -> int:
    data = message.SerializeToString()
    out.write(data)
    return len(data)


def write_model(path: Path, proto: onnx.ModelProto, initializers: Iterable[tuple[str, np.ndarray]]) -> int:
    """Write `proto`, then each `(name, array)` as an initializer of its graph; returns the bytes written.

    The arrays are serialized one at a time, so the caller may produce them lazily.
    """
    written = 0
    with open(path, "wb") as out:
        written += _append(out, proto)
        for name, array in initializers:
            piece = onnx.ModelProto()
            piece.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
            written += _append(out, piece)
            if written > MAX_PROTO_BYTES:
                raise OverflowError(f"{path}: over protobuf's 2 GiB limit on one ONNX file without external data")
    return written


def append_metadata(path: Path, props: dict[str, str]) -> None:
    """Add `props` to the model's `metadata_props` (keys not already there: readers would see both)."""
    piece = onnx.ModelProto()
    for key, value in props.items():
        piece.metadata_props.add(key=key, value=value)
    with open(path, "ab") as out:
        _append(out, piece)
