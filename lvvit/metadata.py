"""What an exported model says about itself: the `metadata_props` of the ONNX file.

Every key is prefixed `lvvit.`; structured values are JSON. A predictor needs
nothing but these to preprocess, run and label: the preset, the input, the full
preprocessing, the output's meaning, and where the weights came from.
Paddle-free, so runtimes can read it without importing Paddle.

A model file may come from a stranger, so every field is checked here, when the
file is opened, within bounds (the `MAX_*` below): sizes, crop_pct, three finite
means, three positive finite stds, the channel order and layout this kit
implements, JSON size and nesting. A bad field is a `MetadataError` naming the
key; every runtime reads metadata through `ModelMetadata.from_props`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvvit.common.regular_files import read_regular
from lvvit.errors import LvvitError
from lvvit.presets import PreprocessConfig

FORMAT_VERSION = "1"
PREFIX = "lvvit."
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OUTPUT_SEMANTICS = (
    "pre-softmax class scores: head(class token) + 0.5 * max over patch tokens of aux_head(tokens), per sample"
)


class MetadataError(LvvitError, ValueError):
    """A model file without (or with unreadable) kit metadata."""


@dataclass(frozen=True)
class ModelMetadata:
    preset: str
    preprocess: PreprocessConfig
    num_classes: int
    batch: int | None  # None: dynamic
    opset: int
    weights: dict[str, Any]  # provenance: file name + sha256, or {"source": "random-init", "seed": N}
    versions: dict[str, str]  # paddle, paddle2onnx, onnx, kit ...
    arch: dict[str, Any] = field(default_factory=dict)
    labels: str = "imagenet-1k"
    graph: str = "exported"  # "exported" (portable), "ort-fused" (ONNX Runtime contrib ops), "paddle-inference"
    precision: str = "fp32"  # "fp32", "fp16" (weights and compute; I/O stays float32) or "int8" (QDQ)
    float_stages: tuple[str, ...] = ()  # int8 with accuracy control: the stages kept in float (stem, blocks.3, head)

    @property
    def resolution(self) -> int:
        return self.preprocess.input_size

    @property
    def input_shape(self) -> list[int | str]:
        return [self.batch if self.batch is not None else "batch", 3, self.resolution, self.resolution]

    def to_props(self) -> dict[str, str]:
        """metadata_props as ONNX stores them: string -> string."""
        values: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "preset": self.preset,
            "resolution": self.resolution,
            "input": {"name": INPUT_NAME, "shape": self.input_shape, "dtype": "float32", "layout": "NCHW"},
            "output": {
                "name": OUTPUT_NAME,
                "shape": [self.input_shape[0], self.num_classes],
                "semantics": OUTPUT_SEMANTICS,
            },
            "preprocess": self.preprocess.to_dict(),
            "num_classes": self.num_classes,
            "labels": self.labels,
            "batch": "dynamic" if self.batch is None else self.batch,
            "opset": self.opset,
            "weights": self.weights,
            "versions": self.versions,
            "arch": self.arch,
            "graph": self.graph,
            "precision": self.precision,
        }
        if self.float_stages:  # written only where there are some: other files keep their props as they were
            values["float_stages"] = list(self.float_stages)
        return {PREFIX + k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        """Parse and check metadata_props; raises `MetadataError` naming the file and the key that is wrong."""
        return _parse(props, source)

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelMetadata:
        """The metadata of a JSON file of props (a Paddle artifact's `.lvvit.json`), read within the size limit."""
        try:
            text = read_regular(path, MAX_PROPS_BYTES).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MetadataError(f"{path}: unreadable metadata file ({exc})") from None
        props = _json_value(text, f"{path}", "the file")
        if not isinstance(props, dict):
            raise MetadataError(f"{path}: expected a JSON object of metadata props, got {type(props).__name__}")
        return _parse({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in props.items()}, str(path))


# Bounds on what a model file may say about itself. A model's metadata is a few kilobytes; these keep a
# crafted one from costing more than a moment, and the preprocessing from allocating without bound.
MAX_VALUE_CHARS = 64 * 1024  # one metadata value
MAX_PROPS_BYTES = 1 << 20  # all the metadata of a file (also the size limit of a `.lvvit.json`)
MAX_JSON_DEPTH = 8  # nesting of [ and { in one value; the kit writes at most 3
MAX_INPUT_SIZE = 1024  # pixels: twice the largest preset (512)
MIN_CROP_PCT = 0.5  # resize_size = input_size / crop_pct stays <= 2 * MAX_INPUT_SIZE
MAX_NUM_CLASSES = 100_000
MAX_BATCH = 4096
MAX_NAME_CHARS = 256  # preset, labels, graph, precision
MAX_STAGES = 1024  # float_stages: a stem, a head and the blocks (the largest preset has 24)
CHANNEL_ORDERS = ("RGB",)
LAYOUTS = ("NCHW",)
_PREPROCESS_KEYS = {"input_size", "crop_pct", "interpolation", "mean", "std", "channel_order", "layout", "resize_size"}
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # JSON strings, unrolled: linear, no backtracking


def _shown(value: Any) -> str:
    """A bounded repr for messages: a crafted value must not make the message itself huge."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_depth(text: str) -> int:
    """Deepest [ / { nesting of JSON text, found without parsing (json.loads recurses: 100k levels crash it)."""
    depth = deepest = 0
    for char in re.sub(r"[^\[\]{}]", "", _STRINGS.sub("", text)):
        depth += 1 if char in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _json_value(text: str, source: str, key: str) -> Any:
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise MetadataError(f"{source}: {key} nests {depth} levels deep; the limit is {MAX_JSON_DEPTH}")
    try:
        return json.loads(text)
    except ValueError as exc:  # also: integers of more than 4300 digits
        raise MetadataError(f"{source}: {key} is not valid JSON ({exc})") from None


class _Props:
    """Typed, bounded reads of `lvvit.*` props; every error names the file and the key."""

    def __init__(self, props: dict[str, str], source: str) -> None:
        self.props, self.source = props, source

    def error(self, key: str, what: str, value: Any) -> MetadataError:
        return MetadataError(f"{self.source}: {PREFIX}{key} {what}, got {_shown(value)}")

    def text(self, key: str, default: str | None = None) -> str:
        if PREFIX + key not in self.props:
            if default is not None:
                return default
            raise MetadataError(f"{self.source}: unreadable LV-ViT kit metadata (no {PREFIX}{key})")
        value = self.props[PREFIX + key]
        if not isinstance(value, str):
            raise self.error(key, "must be a string", value)
        if len(value) > MAX_VALUE_CHARS:
            raise MetadataError(
                f"{self.source}: {PREFIX}{key} is {len(value)} characters long; the limit is {MAX_VALUE_CHARS}"
            )
        return value

    def name(self, key: str, default: str | None = None) -> str:
        value = self.text(key, default)
        if not value or len(value) > MAX_NAME_CHARS:
            raise self.error(key, f"must be a name of 1 to {MAX_NAME_CHARS} characters", value)
        return value

    def json(self, key: str, default: Any = None) -> Any:
        if default is not None and PREFIX + key not in self.props:
            return default
        return _json_value(self.text(key), self.source, PREFIX + key)

    def names(self, key: str) -> tuple[str, ...]:
        """A JSON list of at most MAX_STAGES names (absent: empty)."""
        if PREFIX + key not in self.props:
            return ()
        value = self.json(key)
        if (
            not isinstance(value, list)
            or len(value) > MAX_STAGES
            or not all(isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS for v in value)
        ):
            raise self.error(key, f"must be a list of at most {MAX_STAGES} names", value)
        return tuple(value)

    def mapping(self, key: str, default: dict | None = None) -> dict[str, Any]:
        value = self.json(key, default)
        if not isinstance(value, dict):
            raise self.error(key, "must be a JSON object", value)
        return value

    def integer(self, key: str, value: Any, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, f"must be an integer in {low}..{high}", value)
        return value

    def triple(self, key: str, value: Any, positive: bool) -> tuple[float, float, float]:
        what = "three positive finite numbers" if positive else "three finite numbers"
        if not isinstance(value, list) or len(value) != 3:
            raise self.error(key, f"must be {what} (one per RGB channel)", value)
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                raise self.error(key, f"must be {what}", value)
            if positive and item <= 0:
                raise self.error(key, f"must be {what} (a division by it follows)", value)
        return (float(value[0]), float(value[1]), float(value[2]))

    def choice(self, key: str, value: Any, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.error(key, f"is not supported by this kit (supported: {', '.join(allowed)})", value)
        return value


def _preprocess(read: _Props) -> PreprocessConfig:
    pre = read.mapping("preprocess")
    unknown = sorted(set(pre) - _PREPROCESS_KEYS)
    if unknown:
        raise read.error("preprocess", f"has unknown keys {_shown(unknown)}", sorted(pre))
    for key in ("input_size", "crop_pct", "mean", "std"):
        if key not in pre:
            raise MetadataError(f"{read.source}: {PREFIX}preprocess has no {key!r}")
    size = read.integer("preprocess.input_size", pre["input_size"], 1, MAX_INPUT_SIZE)
    crop = pre["crop_pct"]
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not MIN_CROP_PCT <= crop <= 1.0:
        raise read.error("preprocess.crop_pct", f"must be a number in [{MIN_CROP_PCT}, 1]", crop)
    config = PreprocessConfig(
        input_size=size,
        crop_pct=float(crop),
        interpolation=read.choice("preprocess.interpolation", pre.get("interpolation", "bicubic"), ("bicubic",)),
        mean=read.triple("preprocess.mean", pre["mean"], positive=False),
        std=read.triple("preprocess.std", pre["std"], positive=True),
        channel_order=read.choice("preprocess.channel_order", pre.get("channel_order", "RGB"), CHANNEL_ORDERS),
        layout=read.choice("preprocess.layout", pre.get("layout", "NCHW"), LAYOUTS),
    )
    if "resize_size" in pre and pre["resize_size"] != config.resize_size:
        raise read.error(
            "preprocess.resize_size",
            f"contradicts floor(input_size / crop_pct) = {config.resize_size}",
            pre["resize_size"],
        )
    return config


def _parse(props: dict[str, str], source: str) -> ModelMetadata:
    if PREFIX + "preset" not in props:
        raise MetadataError(
            f"{source}: has no LV-ViT kit metadata (no '{PREFIX}preset' in metadata_props); "
            "pass the preset explicitly, e.g. preset='lvvit_s'"
        )
    read = _Props(props, source)
    preprocess = _preprocess(read)
    if PREFIX + "resolution" in props and read.json("resolution") != preprocess.input_size:
        raise read.error(
            "resolution", f"contradicts preprocess.input_size {preprocess.input_size}", read.json("resolution")
        )
    if PREFIX + "input" in props:
        declared = read.mapping("input")
        read.choice("input.layout", declared.get("layout", "NCHW"), LAYOUTS)
        read.choice("input.dtype", declared.get("dtype", "float32"), ("float32",))
    batch_text = read.text("batch")
    batch = (
        None
        if batch_text == "dynamic"
        else read.integer("batch", _json_value(batch_text, source, PREFIX + "batch"), 1, MAX_BATCH)
    )
    versions = read.mapping("versions")
    if not all(isinstance(v, str) for v in versions.values()):
        raise read.error("versions", "must map names to version strings", versions)
    return ModelMetadata(
        preset=read.name("preset"),
        preprocess=preprocess,
        num_classes=read.integer("num_classes", read.json("num_classes"), 1, MAX_NUM_CLASSES),
        batch=batch,
        opset=read.integer("opset", read.json("opset"), 1, 1000),
        weights=read.mapping("weights"),
        versions=versions,
        arch=read.mapping("arch", {}),
        labels=read.name("labels", "imagenet-1k"),
        graph=read.name("graph", "exported"),
        precision=read.name("precision", "fp32"),
        float_stages=read.names("float_stages"),
    )
