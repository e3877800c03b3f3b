"""One predictor interface, one backend per runtime: ONNX Runtime, native Paddle, OpenVINO.

    from runtimes import OrtPredictor
    with OrtPredictor("lvvit_s.onnx", device="auto") as p:
        print(p.device, p.predict(["cat.jpg"], topk=5))

Every predictor has `predict(images, topk)`, `logits(batch)`, `describe()` and
`close()`, and takes its preprocessing from the model's own metadata through
`lvvit.preprocess`. Backends load on first use: importing `runtimes` (and
using `OrtPredictor` or `OpenVinoPredictor`) never imports Paddle, and a
runtime that is not installed fails only when its predictor is asked for.

The runtimes themselves are rows of `runtimes.registry` (name, predictor
class, model-file kind, options and their flags, distributions, probe);
`RUNTIMES` is its name -> description view, and `open_probe` runs a graph with
extra outputs marked on a runtime that has a probe.
"""

from __future__ import annotations

from typing import Any

from lvvit.errors import ImageError
from lvvit.metadata import MetadataError

from . import registry
from .base import Predictor
from .errors import (
    BackendNotInstalledError,
    ConfigurationError,
    DeviceUnavailableError,
    InputError,
    ModelFileError,
    OutputError,
    PredictorClosedError,
    PredictorError,
)
from .labels import imagenet_classes
from .prediction import ImageResult, Prediction
from .probe import Probe, open_probe
from .registry import Option, Runtime
from .spec import RUNTIMES, ModelFile, PredictorSpec, read_model_metadata

# the predictor classes, by the registry's rows: each module imports its runtime, so they load lazily
_BACKENDS = tuple(dict.fromkeys(row.predictor for row in registry.rows()))


def __getattr__(name: str) -> Any:
    row = next((row for row in registry.rows() if row.predictor == name), None)
    if row is not None:  # `from runtimes import OrtPredictor`, and any registered runtime's class
        return row.predictor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BackendNotInstalledError",
    "ConfigurationError",
    "DeviceUnavailableError",
    "ImageError",
    "ImageResult",
    "InputError",
    "MetadataError",
    "ModelFile",
    "ModelFileError",
    "Option",
    "OutputError",
    "Prediction",
    "Predictor",
    "PredictorClosedError",
    "PredictorError",
    "PredictorSpec",
    "Probe",
    "RUNTIMES",
    "Runtime",
    "imagenet_classes",
    "open_probe",
    "read_model_metadata",
    "registry",
    *_BACKENDS,
]
