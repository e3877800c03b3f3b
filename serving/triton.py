"""Triton model repositories: `REPO/<name>/config.pbtxt`, `REPO/<name>/1/model.onnx` and `labels.txt`, for
Triton's onnxruntime backend (or its openvino backend).

The inputs and outputs (names, datatypes, dims) come from the ONNX graph itself, the batch dimension dropped
when it is dynamic (`max_batch_size` > 0, with `dynamic_batching`); a graph with a fixed batch keeps its full
dims under `max_batch_size: 0`, as Triton requires. The config carries an `instance_group` (CPU, or GPU),
`model_warmup` (zeros at batch 1), the class names as the output's `label_filename` (Triton's classification
extension uses them), and the kit's preprocessing and the model's SHA-256 as parameters, since Triton only
sees tensors. The text is Triton's `ModelConfig` protobuf in text format; the tests parse every generated
file with `tritonclient`'s copy of that schema.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvvit.common.atomic import atomic_files, atomic_output
from lvvit.common.provenance import sha256_of
from runtimes.labels import resolve_labels
from runtimes.onnx_file import read_onnx_file
from runtimes.spec import read_model_metadata

from .config import check_model_name
from .errors import ServingSetupError

BACKENDS = ("onnxruntime", "openvino")
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# ONNX TensorProto element types -> Triton data types
TRITON_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    16: "TYPE_BF16",
}


class Enum(str):
    """A protobuf enum value: written bare, not quoted."""


@dataclass(frozen=True)
class TritonOptions:
    backend: str = "onnxruntime"
    instance: str = "cpu"
    instances: int = 1
    max_batch_size: int = 8
    max_queue_delay_us: int = 5000

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ServingSetupError(f"Triton backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.instance not in INSTANCE_KINDS:
            raise ServingSetupError(f"instance kind {self.instance!r}: choose cpu or gpu")
        if self.backend == "openvino" and self.instance == "gpu":
            raise ServingSetupError("Triton's openvino backend runs on the CPU; use --backend onnxruntime for a GPU")
        if not 1 <= self.instances <= 64 or not 1 <= self.max_batch_size <= 4096:
            raise ServingSetupError(
                f"instances {self.instances} (1..64) or max_batch_size {self.max_batch_size} (1..4096) out of range"
            )
        if not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise ServingSetupError(f"max_queue_delay_us {self.max_queue_delay_us}: 0..10000000")


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]  # -1 for a symbolic dimension


def graph_tensors(model: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The graph's inputs (initializers left out) and outputs, as the ONNX file declares them."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    initializers = {init.name for init in proto.graph.initializer}

    def tensors(values: Any) -> list[Tensor]:
        found = []
        for value in values:
            if value.name in initializers:
                continue
            kind = value.type.tensor_type
            if kind.elem_type not in TRITON_TYPES:
                raise ServingSetupError(f"{model}: tensor {value.name!r} has ONNX type {kind.elem_type}, not in Triton")
            if not value.name.isascii() or not value.name.isprintable() or '"' in value.name or "\\" in value.name:
                raise ServingSetupError(f"{model}: tensor name {value.name!r} cannot go into a config.pbtxt")
            dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in kind.shape.dim)
            found.append(Tensor(value.name, TRITON_TYPES[kind.elem_type], dims))
        return found

    return tensors(proto.graph.input), tensors(proto.graph.output)


def _value(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # ASCII-only text (checked above): JSON's escapes are protobuf's
    return str(value)


def pbtxt(message: dict[str, Any], indent: int = 0) -> Iterator[str]:
    """Protobuf text format of a message given as a dict: scalars, lists of scalars, repeated sub-messages."""
    pad = "  " * indent
    for key, value in message.items():
        if isinstance(value, dict):
            yield f"{pad}{key} {{"
            yield from pbtxt(value, indent + 1)
            yield f"{pad}}}"
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                yield from pbtxt({key: item}, indent)
        elif isinstance(value, list):
            yield f"{pad}{key}: [{', '.join(_value(v) for v in value)}]"
        else:
            yield f"{pad}{key}: {_value(value)}"


def model_config(
    name: str, inputs: list[Tensor], outputs: list[Tensor], options: TritonOptions, parameters: dict[str, str]
) -> dict[str, Any]:
    """Triton's ModelConfig for the graph, as a dict for `pbtxt`."""
    first = inputs[0].dims[0] if inputs and inputs[0].dims else -1
    dynamic = first == -1
    batch = options.max_batch_size if dynamic else 0

    def dims(tensor: Tensor) -> list[int]:
        return list(tensor.dims[1:] if dynamic else tensor.dims)

    config: dict[str, Any] = {"name": name, "backend": options.backend, "max_batch_size": batch}
    if options.backend == "openvino":
        config["default_model_filename"] = "model.onnx"
    config["input"] = [{"name": t.name, "data_type": Enum(t.data_type), "dims": dims(t)} for t in inputs]
    config["output"] = [
        {
            "name": t.name,
            "data_type": Enum(t.data_type),
            "dims": dims(t),
            **({"label_filename": "labels.txt"} if i == 0 else {}),
        }
        for i, t in enumerate(outputs)
    ]
    if dynamic:
        preferred = [b for b in (4, 8, 16, 32) if b <= batch] or [batch]
        config["dynamic_batching"] = {
            "preferred_batch_size": preferred,
            "max_queue_delay_microseconds": options.max_queue_delay_us,
        }
    config["instance_group"] = [{"count": options.instances, "kind": Enum(INSTANCE_KINDS[options.instance])}]
    config["model_warmup"] = [
        {
            "name": "zeros_batch_1",
            "batch_size": 1,
            "inputs": [
                {
                    "key": t.name,
                    "value": {"data_type": Enum(t.data_type), "dims": [max(d, 1) for d in dims(t)], "zero_data": True},
                }
                for t in inputs
            ],
        }
    ]
    config["parameters"] = [{"key": k, "value": {"string_value": v}} for k, v in parameters.items()]
    return config


def write_triton_repository(
    model: str | Path, repo: str | Path, name: str | None = None, options: TritonOptions | None = None
) -> Path:
    """Write `repo/<name>/` for `model` (an .onnx the kit exported); returns the model's folder."""
    options = options or TritonOptions()
    path, _ = read_onnx_file(model)  # the kit's bounded checks: a regular file, ONNX, metadata within limits
    name = check_model_name(name or path.stem)
    metadata = read_model_metadata(path)
    inputs, outputs = graph_tensors(path)
    if not inputs or not outputs:
        raise ServingSetupError(f"{path}: the graph has no inputs or no outputs")
    parameters = {"lvvit.model_sha256": sha256_of(path)}
    if metadata is not None:
        parameters["lvvit.preset"] = metadata.preset
        parameters["lvvit.precision"] = metadata.precision
        parameters["lvvit.preprocess"] = json.dumps(metadata.preprocess.to_dict(), sort_keys=True)
    classes = outputs[0].dims[-1] if outputs[0].dims and outputs[0].dims[-1] > 0 else None
    labels = resolve_labels(None, classes, metadata.labels if metadata is not None else None) if classes else None
    config = model_config(name, inputs, outputs, options, parameters)
    if labels is None:
        del config["output"][0]["label_filename"]
    folder = Path(repo) / name
    with atomic_files(folder) as staging:
        (staging / "config.pbtxt").write_text("\n".join(pbtxt(config)) + "\n")
        if labels is not None:
            (staging / "labels.txt").write_text("\n".join(labels[i] for i in range(classes)) + "\n")
    (folder / "1").mkdir(exist_ok=True)
    with atomic_output(folder / "1" / "model.onnx") as tmp:
        shutil.copyfile(path, tmp)
    return folder
