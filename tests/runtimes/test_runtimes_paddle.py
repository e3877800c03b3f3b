"""PaddlePredictor: the Paddle inference artifact (paddle.inference, oneDNN) and the eager reference."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from lvvit.metadata import MetadataError
from lvvit.synthetic import synthetic_batch
from runtimes import ConfigurationError, DeviceUnavailableError, ModelFileError, PaddlePredictor
from tests.conftest import TINY


@pytest.fixture(scope="module")
def eager():
    with PaddlePredictor.from_preset("lvvit_s", resolution=64, **TINY) as predictor:
        yield predictor


@pytest.fixture(scope="module")
def inference(tiny):
    with PaddlePredictor(tiny.paddle, threads=1) as predictor:
        yield predictor


def test_inference_artifact_matches_eager(inference, eager):
    x = synthetic_batch(4, eager.preprocess_config, seed=7)
    assert np.abs(inference.logits(x) - eager.logits(x)).max() < 1e-4
    described = inference.describe()
    assert described["engine"] == "paddle.inference" and described["onednn"] is True
    assert described["preprocess"]["from"] == "metadata" and described["graph"] == "paddle-inference"
    assert eager.describe()["engine"] == "eager" and eager.describe()["weights"]["source"] == "random-init"


def test_oneDNN_off_gives_the_same_logits(tiny, inference):
    with PaddlePredictor(tiny.paddle, onednn=False, ir_optim=False) as plain:
        assert plain.describe()["onednn"] is False
        x = synthetic_batch(2, plain.preprocess_config)
        assert np.abs(plain.logits(x) - inference.logits(x)).max() < 1e-4


@pytest.mark.parametrize("name", ["tiny.json", "tiny.pdiparams", "tiny", "tiny.lvvit.json", "."])
def test_artifact_paths(tiny, name):
    folder = tiny.paddle.parent
    with PaddlePredictor(folder / name) as predictor:
        assert predictor.info.source == str(folder / "tiny.json")


def test_artifact_errors(tiny, tmp_path):
    with pytest.raises(ModelFileError, match=r"nothing: no Paddle inference artifact \(looked for nothing\.json"):
        PaddlePredictor(tmp_path / "nothing")
    with pytest.raises(ModelFileError, match=r"expected one \.pdiparams file in the folder, found none"):
        PaddlePredictor(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(tiny.paddle.parent, copy)
    (copy / "tiny.pdiparams").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"tiny\.pdiparams: empty file"):
        PaddlePredictor(copy)


def test_artifact_without_metadata_needs_a_preset(tiny, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny.paddle.parent, bare)
    (bare / "tiny.lvvit.json").unlink()
    with pytest.raises(MetadataError, match=r"tiny\.json: has no LV-ViT kit metadata.*preset='lvvit_s'"):
        PaddlePredictor(bare)
    with PaddlePredictor(bare, preset="lvvit_s", resolution=64) as predictor:
        assert predictor.describe()["preprocess"]["from"] == "preset lvvit_s"
        assert predictor.logits(synthetic_batch(1, predictor.preprocess_config)).shape == (1, 10)


def test_gpu_on_a_cpu_build_raises(tiny):
    import paddle

    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        pytest.skip("Paddle has a usable GPU here")
    with pytest.raises(DeviceUnavailableError, match=r"device='gpu': "):
        PaddlePredictor(tiny.paddle, device="gpu")
    with pytest.raises(ConfigurationError, match=r"unknown device 'cuda'; valid: cpu, gpu"):
        PaddlePredictor(tiny.paddle, device="cuda")


def test_from_model_needs_a_kit_model():
    with pytest.raises(ConfigurationError, match=r"from_model needs an LVViT built by lvvit\.create_model"):
        PaddlePredictor.from_model(object())


def test_the_eager_model_predicts_concurrently_as_serially(eager, photos):
    # the inference artifact: tests/test_predictor_contract.py (the eager model has no file, so no row there)
    predictor = eager
    jobs = [photos[i:] + photos[:i] for i in range(3)]
    serial = [predictor.predict(job) for job in jobs]
    results: list = [None] * len(jobs)

    def work(i: int) -> None:
        results[i] = predictor.predict(jobs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, expected in zip(results, serial, strict=True):
        assert [p.class_ids for p in got] == [p.class_ids for p in expected]
        np.testing.assert_allclose([p.probs for p in got], [p.probs for p in expected], atol=1e-6)
