"""Validation of exported LV-ViT models: numeric drift and accuracy against native Paddle, with reports.

    python -m validation drift --preset lvvit_s --weights W --runtime ort --runtime openvino --synthetic 32
    python -m validation accuracy --images DATA_DIR --preset lvvit_s --weights W --runtime ort

Library: `run_drift`, `run_accuracy` (typed reports, `validation.reports.types`; `bool()` the verdict), `write_reports`
(JSON + Markdown + HTML), `build_runners` (native Paddle reference + runtimes
from `runtimes`), `labelled_folder` / `image_folder` / `stream_batches` (inputs).
"""

from __future__ import annotations

from validation.core.data import Dataset, image_folder, labelled_folder, stream_batches
from validation.core.gate import raise_if_failed
from validation.core.runners import ModelSource, Runner, RuntimeOptions, build_runners
from validation.errors import (
    DatasetError,
    GateFailure,
    LabelFileError,
    ModelSourceError,
    ToleranceError,
    ValidationError,
)
from validation.reports.write import write_reports
from validation.run.accuracy import run_accuracy
from validation.run.drift import DriftInputs, run_drift

__all__ = [
    "Dataset",
    "DatasetError",
    "DriftInputs",
    "GateFailure",
    "LabelFileError",
    "ModelSource",
    "ModelSourceError",
    "Runner",
    "RuntimeOptions",
    "ToleranceError",
    "ValidationError",
    "build_runners",
    "image_folder",
    "labelled_folder",
    "raise_if_failed",
    "run_accuracy",
    "run_drift",
    "stream_batches",
    "write_reports",
]
