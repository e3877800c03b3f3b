"""What an upload handler holds: `predict()` on encoded bytes and file-like objects, and `predict_each()`, whose
per-image results keep the good images when one is bad."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lvvit import ImageError
from lvvit.preprocess import MAX_IMAGE_PIXELS
from runtimes import ImageResult, OrtPredictor
from tests.runtimes.test_hostile_inputs import _png


@pytest.fixture(scope="module")
def ort_tiny(tiny):
    with OrtPredictor(tiny.onnx, threads=1) as predictor:
        yield predictor


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_encoded_bytes_predict_as_the_decoded_file(ort_tiny, tmp_path, photos, fmt):
    blob = encoded(photos[1], fmt)
    path = tmp_path / f"chelsea.{fmt.lower()}"
    path.write_bytes(blob)
    expected = ort_tiny.predict(path, topk=5)[0]
    with open(path, "rb") as file:
        inputs = [blob, bytearray(blob), memoryview(blob), io.BytesIO(blob), file]
        got = ort_tiny.predict(inputs, topk=5)
    assert [p.class_ids for p in got] == [expected.class_ids] * 5
    for prediction in got:
        np.testing.assert_allclose(prediction.probs, expected.probs, rtol=1e-6)
    # an open file is named by its path, bytes have no name
    assert [p.source for p in got] == [None, None, None, None, str(path)]


def test_one_bytes_object_is_one_image(ort_tiny, photos):
    # bytes iterate as integers and a file as its lines: both must count as one image, not as many
    blob = encoded(photos[0], "PNG")
    assert len(ort_tiny.predict(blob)) == 1
    assert len(ort_tiny.predict(io.BytesIO(blob))) == 1


def test_bad_bytes_raise_image_errors_naming_them(ort_tiny, photos, tmp_path):
    with pytest.raises(ImageError, match=r"image \(13 encoded bytes\): not an image \(unrecognised format\)"):
        ort_tiny.predict(b"not a picture")
    half = encoded(photos[0], "PNG")[:3000]
    with pytest.raises(ImageError, match=r"image \(3000 encoded bytes\): unreadable image"):
        ort_tiny.predict(half)
    bomb = _png(tmp_path / "bomb.png", 10_000, 10_000, rows=1).read_bytes()
    with pytest.raises(
        ImageError, match=f"10000x10000 is 100000000 pixels, over the decompression-bomb limit of {MAX_IMAGE_PIXELS}"
    ):
        ort_tiny.predict(io.BytesIO(bomb))
    with pytest.raises(ImageError, match=r"cannot read an image from a int; give a path, .* encoded bytes"):
        ort_tiny.predict([3])


def test_predict_each_keeps_the_good_images(ort_tiny, photos, tmp_path):
    missing = tmp_path / "missing.jpg"
    good = [encoded(photos[i], "PNG") for i in range(3)]
    images = [good[0], b"\x89PNG garbage", good[1], missing, good[2]]
    results = ort_tiny.predict_each(images, topk=3)
    assert [type(r) for r in results] == [ImageResult] * 5
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert "not an image" in results[1].error and results[1].prediction is None
    assert results[3].error == f"{missing}: no such image file" and results[3].source == str(missing)
    expected = ort_tiny.predict(good, topk=3)
    assert [r.prediction for r in results if r.ok] == expected
    assert results[3].to_dict() == {"source": str(missing), "error": f"{missing}: no such image file"}
    assert results[0].to_dict()["class_ids"] == list(expected[0].class_ids)


def test_predict_each_with_every_image_bad_runs_nothing(ort_tiny):
    results = ort_tiny.predict_each([b"", b"x"])
    assert [r.ok for r in results] == [False, False]
    assert all("not an image" in r.error for r in results)
