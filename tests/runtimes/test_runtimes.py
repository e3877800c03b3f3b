"""The predictor interface, through ONNX Runtime on tiny models: inputs, errors, batching, labels, threads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lvvit import ImageError
from lvvit.metadata import MetadataError
from lvvit.synthetic import synthetic_batch, synthetic_image
from runtimes import (
    ConfigurationError,
    InputError,
    ModelFileError,
    OrtPredictor,
    Prediction,
    imagenet_classes,
)
from runtimes.labels import resolve_labels
from runtimes.onnx_file import read_onnx_file

ROOT = Path(__file__).resolve().parents[2]
RESOLUTION = 64  # the tiny models' input size (tests/runtime_fixtures.py)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


@pytest.fixture(scope="module")
def ort_tiny(tiny):
    with OrtPredictor(tiny.onnx, threads=1) as predictor:
        yield predictor


# -- model files ----------------------------------------------------------------------------------------------


def test_metadata_walk_matches_onnxruntime(tiny):
    import onnxruntime as ort

    _, props = read_onnx_file(tiny.onnx)
    session = ort.InferenceSession(str(tiny.onnx), providers=["CPUExecutionProvider"])
    assert props == session.get_modelmeta().custom_metadata_map
    assert props["lvvit.preset"] == "lvvit_s"


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope\.onnx: no such model file"):
        OrtPredictor(tmp_path / "nope.onnx")


def test_empty_model_file(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty\.onnx: empty file \(0 bytes\)"):
        OrtPredictor(tmp_path / "empty.onnx")


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_model_file(tiny, tmp_path, keep):
    data = tiny.onnx.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(
        ModelFileError, match=rf"cut\.onnx: truncated ONNX file: .* \(size {int(len(data) * keep)} bytes"
    ):
        OrtPredictor(cut)


def test_not_an_onnx_file(tiny, tmp_path):
    program = next(tiny.paddle.parent.glob("*.json"))
    with pytest.raises(ModelFileError, match=r"tiny\.json: not an ONNX model .*JSON text"):
        OrtPredictor(program)
    image = tmp_path / "photo.onnx"
    synthetic_image(0).save(image, format="PNG")
    with pytest.raises(ModelFileError, match=r"photo\.onnx: not an ONNX model .*PNG image"):
        OrtPredictor(image)


def test_a_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelFileError, match="not a file"):
        OrtPredictor(tmp_path)


# -- preprocessing from metadata, or an explicit preset -----------------------------------------------------------


def test_preprocessing_comes_from_the_metadata(ort_tiny):
    config = ort_tiny.preprocess_config
    assert config.input_size == RESOLUTION and config.crop_pct == 0.9
    assert ort_tiny.describe()["preprocess"]["from"] == "metadata"


def test_model_without_metadata_needs_a_preset(tiny, photos):
    with pytest.raises(MetadataError, match=r"tiny_bare\.onnx: has no LV-ViT kit metadata.*preset='lvvit_s'"):
        OrtPredictor(tiny.onnx_bare)
    with pytest.raises(
        ConfigurationError, match=r"takes 64x64 images but the preprocessing \(preset lvvit_s\) makes 224"
    ):
        OrtPredictor(tiny.onnx_bare, preset="lvvit_s")
    with OrtPredictor(tiny.onnx_bare, preset="lvvit_s", resolution=RESOLUTION) as bare, OrtPredictor(tiny.onnx) as full:
        assert bare.describe()["preprocess"]["from"] == "preset lvvit_s"
        assert bare.preprocess_config == full.preprocess_config
        assert [p.class_ids for p in bare.predict(photos)] == [p.class_ids for p in full.predict(photos)]


def test_a_preset_that_contradicts_the_metadata(tiny):
    with pytest.raises(
        ConfigurationError, match=r"preset='lvvit_m' contradicts the model's metadata \(preset 'lvvit_s'\)"
    ):
        OrtPredictor(tiny.onnx, preset="lvvit_m")
    with pytest.raises(ConfigurationError, match=r"resolution=224 contradicts the model's metadata \(64px\)"):
        OrtPredictor(tiny.onnx, resolution=224)


# -- predict ----------------------------------------------------------------------------------------------------


def test_predict_accepts_paths_pil_and_arrays(ort_tiny, tmp_path, photos):
    path = tmp_path / "chelsea.png"
    Image.fromarray(photos[1]).save(path)
    single = ort_tiny.predict(str(path), topk=3)
    assert len(single) == 1 and isinstance(single[0], Prediction)
    assert single[0].source == str(path)
    assert len(single[0].class_ids) == len(single[0].labels) == len(single[0].probs) == 3
    assert single[0].probs == tuple(sorted(single[0].probs, reverse=True))
    mixed = ort_tiny.predict([path, Image.open(path), photos[1]], topk=3)
    assert [p.class_ids for p in mixed] == [single[0].class_ids] * 3
    assert [p.source for p in mixed] == [str(path), None, None]


def test_predict_probs_are_softmax_of_logits(ort_tiny, photos):
    from lvvit import preprocess_batch

    logits = ort_tiny.logits(preprocess_batch(photos, ort_tiny.preprocess_config)).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for row, prediction in zip(probs, ort_tiny.predict(photos, topk=10), strict=True):
        assert prediction.class_ids == tuple(np.argsort(-row, kind="stable").tolist())
        np.testing.assert_allclose(prediction.probs, row[list(prediction.class_ids)], rtol=1e-5)
        assert sum(prediction.probs) == pytest.approx(1.0)


def test_unreadable_images_are_named(ort_tiny, tmp_path):
    fake = tmp_path / "cat.jpg"
    fake.write_text("not a picture")
    with pytest.raises(ImageError, match=r"cat\.jpg: not an image"):
        ort_tiny.predict([synthetic_image(1), fake])
    with pytest.raises(ImageError, match=r"missing\.png: no such image file"):
        ort_tiny.predict(tmp_path / "missing.png")
    truncated = tmp_path / "half.png"
    synthetic_image(2).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(ImageError, match=r"half\.png: unreadable image"):
        ort_tiny.predict([truncated])


def test_predict_points_float_batches_to_logits(ort_tiny):
    with pytest.raises(InputError, match=r"use logits\(\) for a ready NCHW float32 batch"):
        ort_tiny.predict(synthetic_batch(2, ort_tiny.preprocess_config))


def test_large_lists_run_in_batches(tiny, photos, monkeypatch):
    images = photos + photos[:2]  # 7 images
    with OrtPredictor(tiny.onnx, batch_size=3) as small, OrtPredictor(tiny.onnx, batch_size=16) as big:
        sizes = []
        original = small._logits_impl
        monkeypatch.setattr(small, "_logits_impl", lambda x: sizes.append(len(x)) or original(x))
        got, expected = small.predict(images), big.predict(images)
    assert sizes == [3, 3, 1]
    assert [p.class_ids for p in got] == [p.class_ids for p in expected]
    np.testing.assert_allclose([p.probs for p in got], [p.probs for p in expected], atol=1e-6)


def test_predict_consumes_iterables_lazily(tiny, photos, monkeypatch):
    taken: list[int] = []
    read_before_run: list[int] = []

    def stream():
        for i, photo in enumerate(photos):
            taken.append(i)
            yield photo

    with OrtPredictor(tiny.onnx, batch_size=2) as predictor:
        expected = predictor.predict(photos)
        original = predictor._logits_impl
        monkeypatch.setattr(predictor, "_logits_impl", lambda x: read_before_run.append(len(taken)) or original(x))
        assert predictor.predict(stream()) == expected
        assert predictor.predict([]) == []
    assert read_before_run == [2, 4, 5]  # never more than one batch ahead


def test_fixed_batch_model_pads_the_last_chunk(tiny, photos):
    with OrtPredictor(tiny.onnx_fixed) as fixed, OrtPredictor(tiny.onnx) as dynamic:
        assert fixed.batch_size == 2 and fixed.describe()["input"]["shape"] == [2, 3, RESOLUTION, RESOLUTION]
        x = synthetic_batch(3, fixed.preprocess_config)
        assert max_abs(fixed.logits(x), dynamic.logits(x)) < 1e-5
        assert [p.class_ids for p in fixed.predict(photos)] == [p.class_ids for p in dynamic.predict(photos)]
    with pytest.raises(ConfigurationError, match=r"fixed batch of 2; batch_size=4 cannot run"):
        OrtPredictor(tiny.onnx_fixed, batch_size=4)


# -- logits (the input checks: tests/test_predictor_contract.py, for every runtime) ----------------------------


def test_non_contiguous_batches_are_fine(ort_tiny):
    x = synthetic_batch(4, ort_tiny.preprocess_config)
    assert max_abs(ort_tiny.logits(x[::2]), ort_tiny.logits(np.ascontiguousarray(x[::2]))) == 0.0


# -- labels -----------------------------------------------------------------------------------------------------


def test_imagenet_class_names_are_bundled():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) >= 998  # "crane" and "maillot" are each two classes
    assert names[0] == "tench, Tinca tinca"
    assert names[281] == "tabby, tabby cat" and names[285] == "Egyptian cat"
    assert names[999] == "toilet tissue, toilet paper, bathroom tissue"


def test_label_rules(tmp_path):
    assert resolve_labels(None, 1000, "imagenet-1k")[285] == "Egyptian cat"
    assert resolve_labels(None, 1000, None)[285] == "Egyptian cat"  # no metadata: an ImageNet preset
    assert resolve_labels(None, 10, "imagenet-1k")[3] == "class_3"  # not 1000 outputs: generic names
    assert resolve_labels(None, 1000, "my-classes")[3] == "class_3"
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    assert resolve_labels(tmp_path / "names.txt", 3, None)[2] == "c"
    with pytest.raises(ConfigurationError, match=r"labels \(2 names given\) has 2 names but the model has 3 classes"):
        resolve_labels(["x", "y"], 3, None)
    with pytest.raises(ConfigurationError, match=r"labels \(imagenet-1k\) has 1000 names but the model has 10"):
        resolve_labels("imagenet-1k", 10, None)


def test_tiny_models_get_generic_or_given_labels(tiny):
    with OrtPredictor(tiny.onnx) as generic:
        top = generic.predict(synthetic_image(0), topk=2)[0]
        assert top.labels == tuple(f"class_{i}" for i in top.class_ids)
    names = [f"thing {i}" for i in range(10)]
    with OrtPredictor(tiny.onnx, labels=names) as named:
        top = named.predict(synthetic_image(0), topk=2)[0]
        assert top.labels == tuple(names[i] for i in top.class_ids)
        assert named.describe()["labels"] == "10 names given"


# -- lifecycle, description, threads ----------------------------------------------------------------------------


def test_describe_records_what_runs(ort_tiny):
    info = ort_tiny.describe()
    assert info["runtime"] == "ort" and info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["providers"] == ["CPUExecutionProvider"] and info["threads"] == 1
    assert info["input"] == {"name": "image", "shape": ["batch", 3, 64, 64], "dtype": "float32"}
    assert info["weights"]["source"] == "random-init" and info["graph"] == "exported"
    assert {"onnxruntime", "numpy", "python", "kit"} <= set(info["versions"])


def test_onnx_runtimes_do_not_import_paddle(tiny):
    code = f"""
import sys
import numpy as np
import runtimes
from runtimes import OrtPredictor
image = np.full((90, 120, 3), 128, np.uint8)
with OrtPredictor({str(tiny.onnx)!r}) as p:
    assert p.predict([image])[0].class_ids
try:
    import openvino  # noqa: F401
except ImportError:
    pass
else:
    from runtimes import OpenVinoPredictor
    with OpenVinoPredictor({str(tiny.onnx)!r}) as p:
        assert p.predict(image)[0].class_ids
leaked = sorted(m for m in sys.modules if m == "paddle" or m.startswith("paddle."))
assert not leaked, leaked[:5]
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_streams_are_checked(tiny):
    from runtimes import ConfigurationError, OrtPredictor

    with pytest.raises(ConfigurationError, match=r"streams must be between 1 and threads \(2\), got 3"):
        OrtPredictor(tiny.onnx, threads=2, streams=3)
    with pytest.raises(ConfigurationError, match=r"a fixed batch of 2 cannot be split into 2 streams"):
        OrtPredictor(tiny.onnx_fixed, threads=2, streams=2)


def test_the_whole_batch_session_has_all_the_threads(tiny):
    from runtimes import OrtPredictor

    with OrtPredictor(tiny.onnx, threads=2, streams=2) as two:
        assert two._session.get_session_options().intra_op_num_threads == 1  # each stream's share
        assert two._whole_session.get_session_options().intra_op_num_threads == 2
