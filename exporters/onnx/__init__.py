"""Export LV-ViT presets to ONNX (and Paddle inference): `export_onnx` and `python -m exporters.onnx`."""

from __future__ import annotations

from .export import ExportResult, export_onnx, export_paddle_inference, resolve_output
from .fast_path import FastPath

__all__ = ["ExportResult", "FastPath", "export_onnx", "export_paddle_inference", "resolve_output"]
