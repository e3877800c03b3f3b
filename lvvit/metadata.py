"""What an exported model says about itself: the `metadata_props` of the ONNX file.

Every key is prefixed `lvvit.`; structured values are JSON. A predictor needs
nothing but these to preprocess, run and label: the preset, the input, the full
preprocessing, the output's meaning, and where the weights came from.
Paddle-free, so runtimes can read it without importing Paddle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import LvvitError
from .presets import PreprocessConfig

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
        return {PREFIX + k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        """Parse metadata_props; raises `MetadataError` naming what is missing."""
        if PREFIX + "preset" not in props:
            raise MetadataError(
                f"{source}: has no LV-ViT kit metadata (no '{PREFIX}preset' in metadata_props); "
                "pass the preset explicitly, e.g. preset='lvvit_s'"
            )
        try:
            get = lambda key: json.loads(props[PREFIX + key])  # noqa: E731
            pre = get("preprocess")
            pre.pop("resize_size", None)
            preprocess = PreprocessConfig(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])})
            batch = props[PREFIX + "batch"]
            return cls(
                preset=props[PREFIX + "preset"],
                preprocess=preprocess,
                num_classes=int(get("num_classes")),
                batch=None if batch == "dynamic" else int(batch),
                opset=int(get("opset")),
                weights=get("weights"),
                versions=get("versions"),
                arch=get("arch") if PREFIX + "arch" in props else {},
                labels=props.get(PREFIX + "labels", "imagenet-1k"),
                graph=props.get(PREFIX + "graph", "exported"),
                precision=props.get(PREFIX + "precision", "fp32"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise MetadataError(f"{source}: unreadable LV-ViT kit metadata ({type(exc).__name__}: {exc})") from exc
