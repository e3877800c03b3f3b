"""The predictor contract, once, for every registered runtime that loads a model file.

Each runtime is opened the way the kit opens it (`PredictorSpec.for_model(name, file).open()`, which reads
`runtimes.registry`), on the tiny exported model of its file kind. A runtime that is not installed here is
skipped, naming its install hint. Backend-specific behaviour (devices, providers, precisions) stays in the
backend's own test file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from lvvit.synthetic import synthetic_batch, synthetic_image
from runtimes import (
    BackendNotInstalledError,
    ConfigurationError,
    InputError,
    Prediction,
    Predictor,
    PredictorClosedError,
    PredictorSpec,
    registry,
)

from . import standin_runtime as standin

RESOLUTION = 64  # the tiny models' input size (tests/runtime_fixtures.py)
# at collection: the kit's own rows, and the stand-in of tests/runtimes/standin_runtime.py (registered while it runs)
WITH_FILES = [*registry.with_model_files(), standin.NAME]


def model_file(tiny, name: str) -> Path:
    return {"onnx": tiny.onnx, "paddle-inference": tiny.paddle}[registry.get(name).model_kind]


def opener(tiny, name: str) -> Callable[..., Predictor]:
    """Opens runtime `name` on its tiny model with the given options; skips when the runtime is not installed."""

    def open_predictor(**options) -> Predictor:
        try:
            return PredictorSpec.for_model(name, model_file(tiny, name), **options).open()
        except BackendNotInstalledError as exc:
            pytest.skip(f"{name} is not installed here: {registry.get(name).install_hint} ({exc})")

    return open_predictor


@pytest.fixture(scope="module", params=WITH_FILES)
def runtime(request) -> Iterator[str]:
    if request.param != standin.NAME:
        yield request.param
        return
    registry.register(standin.ROW)  # a new runtime gets the contract suite by its row alone
    try:
        yield request.param
    finally:
        registry.unregister(standin.NAME)


@pytest.fixture(scope="module")
def predictor(tiny, runtime):
    with opener(tiny, runtime)(threads=1) as opened:
        yield opened


# -- the registry and the class agree -----------------------------------------------------------------------------


def test_the_row_names_a_predictor_class(runtime):
    row = registry.get(runtime)
    assert issubclass(row.predictor_class(), Predictor)
    assert row.model_kind in registry.MODEL_KINDS and row.distributions


def test_describe_records_what_runs(predictor, runtime):
    info = predictor.describe()
    assert {"runtime", "model", "input", "output", "preprocess", "batch_size", "versions"} <= set(info)
    assert info["runtime"] == type(predictor).runtime
    assert info["input"]["shape"][1:] == [3, RESOLUTION, RESOLUTION] and info["output"]["num_classes"] == 10
    assert info["preprocess"]["from"] == "metadata" and info["threads"] == 1
    assert {"numpy", "python", "kit"} <= set(info["versions"])


# -- predict and logits --------------------------------------------------------------------------------------------


def test_predict_gives_topk_predictions(predictor, photos):
    got = predictor.predict(photos[:2], topk=3)
    assert len(got) == 2 and all(isinstance(p, Prediction) for p in got)
    for p in got:
        assert len(p.class_ids) == len(p.labels) == len(p.probs) == 3
        assert p.probs == tuple(sorted(p.probs, reverse=True)) and 0 < sum(p.probs) <= 1 + 1e-6


@pytest.mark.parametrize("topk", [0, 11, 2.0])
def test_topk_is_checked(predictor, topk):
    with pytest.raises(ConfigurationError, match=r"topk must be an integer in 1\.\.10"):
        predictor.predict(synthetic_image(0), topk=topk)


def test_logits_shape(predictor):
    out = predictor.logits(synthetic_batch(3, predictor.preprocess_config))
    assert out.shape == (3, 10) and out.dtype == np.float32


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (
            np.zeros((2, 3, 32, 32), np.float32),
            r"expected shape \[N, 3, 64, 64\] float32 \(NCHW\), got \[2, 3, 32, 32\]",
        ),
        (np.zeros((3, 64, 64), np.float32), r"expected shape \[N, 3, 64, 64\].*got \[3, 64, 64\]$"),
        (np.zeros((1, 64, 64, 3), np.float32), r"got \[1, 64, 64, 3\]; it looks like NHWC, transpose to NCHW"),
        (np.zeros((0, 3, 64, 64), np.float32), r"got \[0, 3, 64, 64\]"),
        (np.zeros((1, 3, 64, 64), np.float64), r"expected dtype float32 for shape \[N, 3, 64, 64\].*got float64"),
        (np.zeros((1, 3, 64, 64), np.uint8), r"expected dtype float32.*got uint8"),
        ([[0.0]], r"takes a numpy array of shape \[N, 3, 64, 64\] float32 \(NCHW\), got a list"),
    ],
)
def test_logits_rejects_wrong_inputs(predictor, batch, message):
    with pytest.raises(InputError, match=message):
        predictor.logits(batch)


def test_logits_reports_nan_and_inf(predictor):
    x = synthetic_batch(4, predictor.preprocess_config)
    x[1, 0, 3, 3] = np.nan
    x[3, 2, 0, 0] = np.inf
    x[3, 2, 0, 1] = -np.inf
    with pytest.raises(InputError, match=r"1 NaN and 2 inf values \(samples \[1, 3\]\)"):
        predictor.logits(x)


def test_concurrent_predict_matches_serial(predictor, photos):
    jobs = [photos[i:] + photos[:i] for i in range(len(photos))]
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


# -- lifecycle and streams -----------------------------------------------------------------------------------------


def test_a_closed_predictor_refuses(tiny, runtime):
    with opener(tiny, runtime)() as opened:
        opened.predict(synthetic_image(0))
    with pytest.raises(PredictorClosedError, match=rf"{type(opened).__name__} for .*tiny.* is closed"):
        opened.predict(synthetic_image(0))
    opened.close()  # idempotent


def test_streams_split_a_batch_without_changing_the_answers(tiny, runtime):
    make = opener(tiny, runtime)
    x = np.random.default_rng(4).standard_normal((5, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    with make(threads=2) as one, make(threads=2, streams=2) as two:
        np.testing.assert_allclose(two.logits(x), one.logits(x), atol=1e-5)
        assert two.describe()["streams"] == 2


def test_streams_run_a_batch_too_small_to_split_whole(tiny, runtime, monkeypatch):
    # A predictor opened for throughput (streams=2) must not run a single image on half the threads.
    make = opener(tiny, runtime)
    rng = np.random.default_rng(5)
    one_image = rng.standard_normal((1, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    four = rng.standard_normal((4, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    with make(threads=2) as one, make(threads=2, streams=2) as two:
        calls: list[tuple[str, int]] = []
        whole, part = two._logits_whole, two._logits_impl
        monkeypatch.setattr(two, "_logits_whole", lambda b: calls.append(("whole", len(b))) or whole(b))
        monkeypatch.setattr(two, "_logits_impl", lambda b: calls.append(("stream", len(b))) or part(b))
        np.testing.assert_allclose(two.logits(one_image), one.logits(one_image), atol=1e-5)
        assert calls == [("whole", 1)]
        calls.clear()
        np.testing.assert_allclose(two.logits(four), one.logits(four), atol=1e-5)
        assert sorted(calls) == [("stream", 2), ("stream", 2)]
        assert "smaller batches run whole on a session with all the threads" in two.describe()["stream_policy"]
        assert "stream_policy" not in one.describe()


def test_close_while_other_threads_run_only_raises_closed(tiny, runtime):
    predictor = opener(tiny, runtime)(threads=2, streams=2)
    x = np.random.default_rng(6).standard_normal((3, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    started, errors, closed = threading.Barrier(5), [], []

    def work() -> None:
        started.wait()
        for _ in range(500):
            try:
                predictor.logits(x)
            except PredictorClosedError:
                closed.append(True)
                return
            except Exception as exc:  # anything else is the race this test is about
                errors.append(exc)
                return

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    predictor.close()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(closed) == 4  # every caller saw the close, as PredictorClosedError
