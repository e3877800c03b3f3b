"""Every runtime against native Paddle on real photographs: logits within the export tolerance, same classes.

The eager Paddle model is the reference (`PaddlePredictor.from_preset`, the same seed and architecture as
the export). Tolerance: the export verification's max abs 1e-4, and top-1 agreement.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lvvit import preprocess_batch
from runtimes import (
    BackendNotInstalledError,
    OpenVinoPredictor,
    OrtPredictor,
    PaddlePredictor,
    Predictor,
    imagenet_classes,
)
from tests.conftest import TINY

ATOL = 1e-4  # exporters.onnx's DEFAULT_ATOL


def _runtimes(onnx: Path, paddle: Path) -> dict[str, Predictor]:
    predictors: dict[str, Predictor] = {
        "onnxruntime": OrtPredictor(onnx),
        "onnxruntime+iobinding": OrtPredictor(onnx, io_binding=True),
        "paddle.inference": PaddlePredictor(paddle),
    }
    try:
        predictors["openvino"] = OpenVinoPredictor(onnx, precision="f32")
    except BackendNotInstalledError:  # the optional extra is not installed
        pass
    return predictors


def _check_against_reference(reference: Predictor, predictors: dict[str, Predictor], images: list) -> dict:
    batch = preprocess_batch(images, reference.preprocess_config)
    expected = reference.logits(batch)
    expected_ids = [p.class_ids for p in reference.predict(images)]
    drift = {}
    for name, predictor in predictors.items():
        assert predictor.preprocess_config == reference.preprocess_config, name
        got = predictor.logits(batch)
        drift[name] = float(np.abs(got.astype(np.float64) - expected).max())
        assert drift[name] < ATOL, f"{name}: max abs {drift[name]:.3g} vs eager Paddle (tolerance {ATOL:g})"
        assert (got.argmax(1) == expected.argmax(1)).all(), name
        assert [p.class_ids for p in predictor.predict(images)] == expected_ids, name
        json.dumps(predictor.describe())  # reports can store it as it is
    return drift


def test_tiny_runtimes_agree_with_paddle(tiny, photos):
    reference = PaddlePredictor.from_preset("lvvit_s", resolution=64, **TINY)
    predictors = _runtimes(tiny.onnx, tiny.paddle)
    try:
        drift = _check_against_reference(reference, predictors, photos)
    finally:
        for predictor in [reference, *predictors.values()]:
            predictor.close()
    assert set(drift) >= {"onnxruntime", "onnxruntime+iobinding", "paddle.inference"}


@pytest.mark.slow
def test_full_lvvit_s_photos_agree_across_runtimes(tmp_path, photos):
    from exporters.onnx import export_onnx, export_paddle_inference

    quiet = lambda message: None  # noqa: E731
    onnx = export_onnx("lvvit_s", output=tmp_path / "lvvit_s.onnx", verify=False, log=quiet).path  # checked here
    paddle = export_paddle_inference("lvvit_s", output=tmp_path / "paddle" / "lvvit_s.pdiparams", log=quiet).path
    reference = PaddlePredictor.from_preset("lvvit_s")
    predictors = _runtimes(onnx, paddle)
    try:
        _check_against_reference(reference, predictors, photos)
        names = imagenet_classes()  # 1000 classes and kit metadata: ImageNet names
        for prediction in predictors["onnxruntime"].predict(photos, topk=3):
            assert prediction.labels == tuple(names[i] for i in prediction.class_ids)
        assert predictors["onnxruntime"].describe()["labels"] == "imagenet-1k"
    finally:
        for predictor in [reference, *predictors.values()]:
            predictor.close()
