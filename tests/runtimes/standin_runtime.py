"""A stand-in runtime for the registry tests: a tiny `Predictor` over ONNX Runtime, and its one registry row.

This file is what a new runtime is: a backend (the class) and its row (`ROW`). Registering the row is all it
takes for `PredictorSpec`, `python -m validation drift/accuracy/bench/locate` and their `--help` to know it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtimes import Option, Predictor, Runtime
from runtimes.model_info import build_model_info
from runtimes.onnx_file import kit_metadata, read_onnx_file
from runtimes.ort import import_onnxruntime, ort_session

NAME = "ort-standin"


class StandinPredictor(Predictor):
    """ONNX Runtime's CPU provider on an exported `.onnx`, nothing else: the smallest backend there is."""

    runtime = NAME

    def __init__(
        self,
        model_path: str | Path,
        flavour: str = "plain",
        threads: int | None = None,
        *,
        streams: int = 1,
        batch_size: int | None = None,
    ) -> None:
        self._ort = import_onnxruntime()
        path, props = read_onnx_file(model_path)
        self.flavour = flavour
        self._threads = threads
        per_stream = threads // streams if threads and streams > 1 else threads
        self._session = ort_session(path, "cpu", threads=per_stream)
        # batches smaller than `streams` run whole, on all the threads (the contract of `runtimes.base`)
        self._whole = ort_session(path, "cpu", threads=threads) if streams > 1 else self._session
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        info = build_model_info(str(path), inp.name, inp.shape, out.name, out.shape, kit_metadata(props, path))
        super().__init__(info, batch_size=batch_size, streams=streams)

    def _logits_impl(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self.info.output_name], {self.info.input_name: batch})[0]

    def _logits_whole(self, batch: np.ndarray) -> np.ndarray:
        return self._whole.run([self.info.output_name], {self.info.input_name: batch})[0]

    def _runtime_details(self) -> dict[str, Any]:
        return {
            "device": "cpu",
            "precision": "fp32",
            "flavour": self.flavour,
            "threads": self._threads,
            "streams": self.streams,
            "versions": {"onnxruntime": self._ort.__version__},
        }

    def _release(self) -> None:
        self._session = self._whole = None


ROW = Runtime(
    NAME,
    "a stand-in over ONNX Runtime (tests only)",
    __name__,
    "StandinPredictor",
    "onnx",
    options=(Option("flavour", default="plain", help="the stand-in's flavour", choices=("plain", "spicy")),),
    distributions=("onnxruntime",),
    probe="runtimes.probe:ort_probe",
)
