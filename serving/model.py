"""The served model: one predictor (opened from its spec), its OIP metadata, and requests turned into its inputs
and its logits into the outputs a request asks for.

Inputs: the graph's own FP32 input (`[N, 3, S, S]`, preprocessed already) or `encoded_image` (`BYTES`, `[N]`:
JPEG, PNG... preprocessed here with the model's own metadata, as `predict()` does). Outputs: `logits`
(`[N, classes]`), and the top-k (`topk` request parameter, default 5): `class_ids` (INT64), `probabilities`
(FP32, softmax over all classes) and `labels` (BYTES), each `[N, k]`. Triton's classification extension works
on `logits` too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lvvit.errors import ImageError
from lvvit.preprocess import preprocess
from runtimes import Predictor, PredictorSpec
from runtimes.prediction import Prediction

from .config import check_model_name
from .errors import BadRequestError
from .protocol import InferRequest, OutputTensor, RequestedOutput

ENCODED_INPUT = "encoded_image"
TOPK_OUTPUTS = ("class_ids", "probabilities", "labels")
DEFAULT_TOPK = 5
VERSION = "1"


class ServedModel:
    def __init__(self, name: str, predictor: Predictor, spec: PredictorSpec, max_batch: int) -> None:
        self.name = check_model_name(name)
        self.predictor = predictor
        self.spec = spec
        self.max_batch = max_batch
        info = predictor.info
        self.input_name = info.input_name
        self.output_name = info.output_name
        self.size = info.preprocess.input_size
        self.num_classes = info.num_classes
        self._metadata = self._describe()

    # -- metadata ----------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The OIP model metadata, with what runs and how it preprocesses as parameters."""
        return self._metadata

    def _describe(self) -> dict[str, Any]:
        described = self.predictor.describe()
        classes = self.num_classes if self.num_classes is not None else -1
        topk = [-1, -1]  # [N, k]: k is the request's `topk`
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": f"lvvit-kit/{self.spec.runtime}",
            "inputs": [
                {"name": self.input_name, "datatype": "FP32", "shape": [-1, 3, self.size, self.size]},
                {"name": ENCODED_INPUT, "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [
                {"name": self.output_name, "datatype": "FP32", "shape": [-1, classes]},
                {"name": "class_ids", "datatype": "INT64", "shape": topk},
                {"name": "probabilities", "datatype": "FP32", "shape": topk},
                {"name": "labels", "datatype": "BYTES", "shape": topk},
            ],
            "parameters": {
                "runtime": self.spec.runtime,
                "device": described.get("device"),
                "precision": described.get("precision"),
                "preset": described.get("preset"),
                "preprocess": described["preprocess"],
                "weights": described.get("weights"),
                "model_files": [vars(f) for f in self.spec.files],
                "labels": described.get("labels"),
                "max_batch_size": self.max_batch,
            },
        }

    # -- inputs ------------------------------------------------------------------------------------------------

    def has_images(self, request: InferRequest) -> bool:
        return any(tensor.name == ENCODED_INPUT for tensor in request.inputs)

    def batch_of(self, request: InferRequest) -> np.ndarray:
        """The request's one input as a checked NCHW float32 batch (encoded images preprocessed here)."""
        if len(request.inputs) != 1:
            raise BadRequestError(
                f"send one input, {self.input_name!r} (FP32) or {ENCODED_INPUT!r} (BYTES); got "
                f"{[t.name for t in request.inputs]}"
            )
        tensor = request.inputs[0]
        if tensor.name == ENCODED_INPUT:
            if tensor.datatype != "BYTES" or len(tensor.shape) != 1:
                raise BadRequestError(
                    f"input {ENCODED_INPUT!r} takes BYTES of shape [N] (one encoded image each), got "
                    f"{tensor.datatype} {list(tensor.shape)}",
                    "tensor",
                )
            self._check_count(tensor.shape[0])
            return self.preprocess_images(tensor.value)  # type: ignore[arg-type]
        if tensor.name != self.input_name:
            raise BadRequestError(
                f"unknown input {tensor.name!r}; this model takes {self.input_name!r} (FP32) or {ENCODED_INPUT!r} "
                "(BYTES)",
                "tensor",
            )
        expected = [-1, 3, self.size, self.size]
        if tensor.datatype != "FP32":
            raise BadRequestError(
                f"input {tensor.name!r} takes FP32 of shape {expected}, got {tensor.datatype}", "tensor"
            )
        if len(tensor.shape) != 4 or tensor.shape[1:] != (3, self.size, self.size):
            raise BadRequestError(
                f"input {tensor.name!r} takes shape {expected} (NCHW), got {list(tensor.shape)}", "tensor"
            )
        self._check_count(tensor.shape[0])
        batch = tensor.value
        finite = np.isfinite(batch)  # type: ignore[arg-type]
        if not finite.all():
            bad = np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1)).tolist()
            raise BadRequestError(
                f"input {tensor.name!r} holds NaN or inf values (samples {bad[:10]}); a model input must be finite",
                "tensor",
            )
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _check_count(self, n: int) -> None:
        if not 1 <= n <= self.max_batch:
            raise BadRequestError(
                f"a request holds 1..{self.max_batch} images (the server's max batch), this one {n}", "tensor"
            )

    def preprocess_images(self, images: list[bytes]) -> np.ndarray:
        """Encoded images -> NCHW float32; the first bad one is a `BadRequestError` naming its index."""
        config = self.predictor.preprocess_config
        batch = []
        for i, blob in enumerate(images):
            try:
                batch.append(preprocess(blob, config))
            except ImageError as exc:
                raise BadRequestError(f"image {i}: {exc}", "image") from None
        return np.stack(batch)

    # -- outputs -----------------------------------------------------------------------------------------------

    def check_topk(self, topk: Any) -> int:
        limit = self.num_classes or 1_000_000
        if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= limit:
            raise BadRequestError(f"parameter 'topk' must be an integer in 1..{limit}, got {topk!r}")
        return topk

    def topk_of(self, request: InferRequest) -> int:
        return self.check_topk(request.parameters.get("topk", DEFAULT_TOPK))

    def check_outputs(self, request: InferRequest) -> list[RequestedOutput]:
        """The outputs to send, before anything runs: an unknown name is a 400 listing the known ones."""
        if request.outputs is None:
            names = (self.output_name, *TOPK_OUTPUTS)
            return [RequestedOutput(name, request.binary_output) for name in names]
        known = (self.output_name, *TOPK_OUTPUTS)
        for output in request.outputs:
            if output.name not in known:
                raise BadRequestError(f"unknown output {output.name!r}; this model has {list(known)}")
            if output.classification and output.name != self.output_name:
                raise BadRequestError(f"classification applies to {self.output_name!r}, not {output.name!r}")
        return request.outputs

    def outputs(
        self, logits: np.ndarray, requested: list[RequestedOutput], topk: int
    ) -> list[tuple[OutputTensor, bool]]:
        predictions = self.predictor.top_k(logits, topk) if any(o.name in TOPK_OUTPUTS for o in requested) else []
        tensors = []
        for output in requested:
            if output.classification:
                tensor = self._classification(logits, output.classification)
            elif output.name == self.output_name:
                tensor = OutputTensor(output.name, "FP32", logits.astype(np.float32, copy=False))
            else:
                tensor = _topk_tensor(output.name, predictions)
            tensors.append((tensor, output.binary))
        return tensors

    def _classification(self, logits: np.ndarray, k: int) -> OutputTensor:
        """Triton's classification extension: per row, the k largest values as "value:index:label"."""
        rows = []
        for prediction, row in zip(self.predictor.top_k(logits, k), logits, strict=True):
            rows.append(
                [
                    f"{row[i]:f}:{i}:{label}".encode()
                    for i, label in zip(prediction.class_ids, prediction.labels, strict=True)
                ]
            )
        return OutputTensor(self.output_name, "BYTES", rows)


def _topk_tensor(name: str, predictions: list[Prediction]) -> OutputTensor:
    if name == "class_ids":
        return OutputTensor(name, "INT64", np.array([p.class_ids for p in predictions], dtype=np.int64))
    if name == "probabilities":
        return OutputTensor(name, "FP32", np.array([p.probs for p in predictions], dtype=np.float32))
    return OutputTensor(name, "BYTES", [[label.encode() for label in p.labels] for p in predictions])
