"""The server, driven over HTTP on 127.0.0.1 by Triton's own client (`tritonclient.http`) and by plain HTTP:
answers equal to the in-process predictor, alone and batched, on ONNX Runtime and OpenVINO; every bad input
a JSON 4xx naming the problem, with the server still serving; a full queue answers 503; SIGTERM drains."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from lvvit.preprocess import MAX_IMAGE_PIXELS, preprocess_batch
from runtimes import OrtPredictor
from serving.child import ServerProcess
from tests.conftest import ROOT
from tests.runtimes.test_hostile_inputs import _png

httpclient = pytest.importorskip("tritonclient.http")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

ATOL = 1e-5
MAX_BODY_MB = "1"


def encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample of the server's /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def reference(tiny):
    with OrtPredictor(tiny.onnx, threads=1) as predictor:
        yield predictor


@pytest.fixture(scope="module", params=["ort", "openvino"])
def server(request, tiny):
    if request.param == "openvino":
        pytest.importorskip("openvino")
    args = [str(tiny.onnx), "--runtime", request.param, "--threads", "1", "--port", "0", "--max-batch", "8"]
    args += ["--max-wait-ms", "50", "--max-body-mb", MAX_BODY_MB]
    process = ServerProcess(args)
    yield process
    assert process.stop() == 0, "".join(process.stderr)[-2000:]


@pytest.fixture
def client(server):
    with httpclient.InferenceServerClient(server.address, connection_timeout=30, network_timeout=60) as c:
        yield c


def tensor_input(batch: np.ndarray):
    tensor = httpclient.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return tensor


def bytes_input(images: list[bytes], binary: bool = True):
    tensor = httpclient.InferInput("encoded_image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=binary)
    return tensor


def assert_same(result, reference: OrtPredictor, batch: np.ndarray) -> None:
    """Logits within 1e-5 and top-5 identical to the in-process predictor on the same inputs."""
    expected = reference.logits(batch)
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=0, atol=ATOL)
    top5 = reference.top_k(expected, 5)
    assert result.as_numpy("class_ids").tolist() == [list(p.class_ids) for p in top5]
    labels = [[x.decode() if isinstance(x, bytes) else x for x in row] for row in result.as_numpy("labels").tolist()]
    assert labels == [list(p.labels) for p in top5]  # bytes from binary outputs, str from JSON
    np.testing.assert_allclose(result.as_numpy("probabilities"), [p.probs for p in top5], atol=1e-6)


# -- health, metadata ----------------------------------------------------------------------------------------


def test_health_and_metadata(client, server, tiny):
    from lvvit.common.provenance import sha256_of

    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 3, 64, 64]},
        {"name": "encoded_image", "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}
    params = meta["parameters"]
    assert params["preprocess"]["input_size"] == 64 and params["preprocess"]["crop_pct"] == 0.9
    assert params["precision"] == "fp32" and params["max_batch_size"] == 8
    assert params["model_files"] == [
        {"name": "tiny.onnx", "size": tiny.onnx.stat().st_size, "sha256": sha256_of(tiny.onnx)}
    ]
    assert params["weights"]["source"] == "random-init"


# -- answers equal the in-process predictor ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4])
def test_tensor_requests_equal_the_predictor(client, reference, photos, n):
    batch = preprocess_batch(photos[:n], reference.preprocess_config)
    assert_same(client.infer("tiny", [tensor_input(batch)]), reference, batch)


@pytest.mark.parametrize("binary", [True, False])
def test_encoded_images_equal_predict(client, server, reference, photos, binary):
    images = [encoded(photos[i], fmt) for i, fmt in ((0, "PNG"), (1, "JPEG"), (4, "PNG"))]
    if binary:
        result = client.infer("tiny", [bytes_input(images)])
    else:  # JSON: base64 strings, the OIP way for bytes that are not text
        body = {
            "inputs": [
                {
                    "name": "encoded_image",
                    "datatype": "BYTES",
                    "shape": [3],
                    "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(b).decode() for b in images],
                }
            ]
        }
        answer = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body)
        assert answer.status_code == 200, answer.text
        result = httpclient.InferResult.from_response_body(answer.content)
    assert_same(result, reference, preprocess_batch(images, reference.preprocess_config))
    assert result.as_numpy("class_ids").tolist() == [list(p.class_ids) for p in reference.predict(images)]


def test_concurrent_requests_batch_together_and_stay_apart(server, reference, photos):
    batches = [preprocess_batch([photos[i % 5]], reference.preprocess_config) for i in range(8)]
    before = metric(server.url, "lvvit_batch_size_count"), metric(server.url, "lvvit_batch_size_sum")

    def one(batch):
        with httpclient.InferenceServerClient(server.address, network_timeout=60) as c:
            return c.infer("tiny", [tensor_input(batch)])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, batches))
    for result, batch in zip(results, batches, strict=True):
        assert_same(result, reference, batch)
    calls = metric(server.url, "lvvit_batch_size_count") - before[0]
    images = metric(server.url, "lvvit_batch_size_sum") - before[1]
    assert images == 8 and calls < 8, f"8 requests ran as {calls} predictor calls: none were batched"


def test_classification_extension(client, reference, photos):
    batch = preprocess_batch(photos[:2], reference.preprocess_config)
    out = httpclient.InferRequestedOutput("logits", class_count=3)
    result = client.infer("tiny", [tensor_input(batch)], outputs=[out]).as_numpy("logits")
    logits = reference.logits(batch)
    for row, expected in zip(result, logits, strict=True):
        ids = np.argsort(-expected, kind="stable")[:3]
        assert [int(item.split(b":")[1]) for item in row] == ids.tolist()
        assert [item.split(b":")[2] for item in row] == [f"class_{i}".encode() for i in ids]
        np.testing.assert_allclose([float(item.split(b":")[0]) for item in row], expected[ids], atol=ATOL)


def test_curl_endpoint(server, reference, photos):
    jpeg = encoded(photos[1], "JPEG")
    answer = httpx.post(f"{server.url}/predict", content=jpeg)
    assert answer.status_code == 200, answer.text
    expected = reference.predict(jpeg, topk=5)[0]
    got = answer.json()
    assert got["model"] == "tiny" and got["class_ids"] == list(expected.class_ids)
    assert got["labels"] == list(expected.labels)
    np.testing.assert_allclose(got["probabilities"], expected.probs, atol=1e-6)
    assert len(httpx.post(f"{server.url}/predict?topk=2", content=jpeg).json()["class_ids"]) == 2


# -- bad input: a JSON 4xx naming the problem, and the next good request still succeeds --------------------------


def _tensor_body(shape, datatype="FP32", data=None):
    return {
        "inputs": [{"name": "image", "shape": shape, "datatype": datatype, "data": data or [0] * int(np.prod(shape))}]
    }


def _binary(header: dict, blob: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + blob, {"Inference-Header-Content-Length": str(len(text))}


def _bytes_body(blob: bytes) -> tuple[bytes, dict[str, str]]:
    element = len(blob).to_bytes(4, "little") + blob
    header = {
        "inputs": [
            {
                "name": "encoded_image",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(element)},
            }
        ]
    }
    return _binary(header, element)


def _bad_cases(tmp_path, photos):
    nan = np.zeros((1, 3, 64, 64), np.float32)
    nan[0, 1, 2, 3] = np.nan
    nan_header = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 3, 64, 64],
                "datatype": "FP32",
                "parameters": {"binary_data_size": nan.nbytes},
            }
        ]
    }
    short_header = {
        "inputs": [
            {"name": "image", "shape": [1, 3, 64, 64], "datatype": "FP32", "parameters": {"binary_data_size": 100}}
        ]
    }
    bomb = _png(tmp_path / "bomb.png", 10_000, 10_000, rows=1).read_bytes()
    strip = _png(tmp_path / "strip.png", 60_000, 1).read_bytes()
    truncated = encoded(photos[0], "PNG")[:3000]
    return {
        "not an image": (
            *_bytes_body(b"GIF89a but not really"),
            400,
            "image 0: image (21 encoded bytes): not an image",
        ),
        "truncated image": (*_bytes_body(truncated), 400, "image 0: image (3000 encoded bytes): unreadable image"),
        "decompression bomb": (
            *_bytes_body(bomb),
            400,
            f"10000x10000 is 100000000 pixels, over the decompression-bomb limit of {MAX_IMAGE_PIXELS}",
        ),
        "over the resize limit": (*_bytes_body(strip), 400, "60000x1 (aspect ratio 60000:1) would resize to"),
        "wrong shape": (
            json.dumps(_tensor_body([1, 3, 32, 32])).encode(),
            {},
            400,
            "input 'image' takes shape [-1, 3, 64, 64] (NCHW), got [1, 3, 32, 32]",
        ),
        "NHWC": (json.dumps(_tensor_body([1, 64, 64, 3])).encode(), {}, 400, "got [1, 64, 64, 3]"),
        "wrong datatype": (
            json.dumps(_tensor_body([1, 3, 64, 64], "INT64")).encode(),
            {},
            400,
            "input 'image' takes FP32 of shape [-1, 3, 64, 64], got INT64",
        ),
        "unknown datatype": (
            json.dumps(_tensor_body([1, 3, 64, 64], "FP64")).encode(),
            {},
            400,
            "datatype 'FP64' is not served here",
        ),
        "wrong size (JSON)": (
            json.dumps(_tensor_body([1, 3, 64, 64], data=[0.0] * 10)).encode(),
            {},
            400,
            "shape [1, 3, 64, 64] needs 12288 values, 'data' holds 10",
        ),
        "wrong size (binary)": (
            *_binary(short_header, b"\0" * 100),
            400,
            "shape [1, 3, 64, 64] of FP32 is 49152 bytes, the body holds 100",
        ),
        "NaN": (*_binary(nan_header, nan.tobytes()), 400, "holds NaN or inf values (samples [0])"),
        "too many images": (
            json.dumps(_tensor_body([9, 3, 64, 64])).encode(),
            {},
            400,
            "a request holds 1..8 images (the server's max batch), this one 9",
        ),
        "body over the limit": (b"x" * (int(MAX_BODY_MB) * 2**20 + 1), {}, 413, "over the limit of 1048576 bytes"),
        "malformed JSON": (b'{"inputs": [', {}, 400, "request: malformed JSON"),
        "deeply nested JSON": (b"[" * 100_000 + b"]" * 100_000, {}, 400, "request: JSON nested too deep"),
        "nested past the limit": (
            json.dumps({"inputs": [[[[[[[[[[[[[1]]]]]]]]]]]]]}).encode(),
            {},
            400,
            "JSON nested more than 12 levels deep",
        ),
        "not an object": (b"[1, 2]", {}, 400, "the request must be an object"),
        "unknown output": (
            json.dumps({**_tensor_body([1, 3, 64, 64]), "outputs": [{"name": "nope"}]}).encode(),
            {},
            400,
            "unknown output 'nope'; this model has ['logits', 'class_ids'",
        ),
        "bad topk": (
            json.dumps({**_tensor_body([1, 3, 64, 64]), "parameters": {"topk": 0}}).encode(),
            {},
            400,
            "parameter 'topk' must be an integer in 1..10, got 0",
        ),
        "compressed body": (b"x", {"Content-Encoding": "gzip"}, 415, "Content-Encoding 'gzip' is not accepted"),
    }


def test_bad_requests_get_json_errors_and_the_server_goes_on(server, reference, photos, tmp_path):
    batch = preprocess_batch(photos[:1], reference.preprocess_config)
    good = json.dumps(_tensor_body([1, 3, 64, 64], data=batch.ravel().tolist())).encode()
    failures = []
    for case, (body, headers, status, fragment) in _bad_cases(tmp_path, photos).items():
        answer = httpx.post(f"{server.url}/v2/models/tiny/infer", content=body, headers=headers, timeout=60)
        error = answer.json().get("error", "") if answer.headers.get("content-type") == "application/json" else ""
        if answer.status_code != status or fragment not in error:
            failures.append(f"{case}: {answer.status_code} {answer.text[:300]}")
        after = httpx.post(f"{server.url}/v2/models/tiny/infer", content=good, timeout=60)
        if after.status_code != 200:
            failures.append(f"after {case}: {after.status_code} {after.text[:300]}")
        else:
            logits = np.array(next(o for o in after.json()["outputs"] if o["name"] == "logits")["data"])
            np.testing.assert_allclose(logits, reference.logits(batch).ravel(), atol=ATOL)
    assert not failures, "\n".join(failures)
    assert metric(server.url, "lvvit_errors_total", '{kind="image"}') >= 4
    assert metric(server.url, "lvvit_errors_total", '{kind="body_too_large"}') >= 1


def test_unknown_model_and_version(client, server):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="unknown model 'nope'; this server serves 'tiny' version 1"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="unknown model 'tiny version 7'"):
        client.get_model_metadata("tiny", model_version="7")
    answer = httpx.post(f"{server.url}/v2/models/nope/infer", content=b"{}")
    assert answer.status_code == 404 and "unknown model 'nope'" in answer.json()["error"]


def test_curl_endpoint_errors(server):
    answer = httpx.post(f"{server.url}/predict", content=b"")
    assert answer.status_code == 400 and "curl --data-binary @cat.jpg" in answer.json()["error"]
    answer = httpx.post(f"{server.url}/predict?topk=abc", content=b"x")
    assert answer.status_code == 400 and "topk" in answer.json()["error"]
    answer = httpx.post(f"{server.url}/predict", content=b"hello")
    assert answer.status_code == 400 and "not an image" in answer.json()["error"]


def test_memory_stays_flat(server, reference, photos):
    batch = preprocess_batch(photos[:1], reference.preprocess_config)
    with httpclient.InferenceServerClient(server.address, network_timeout=60) as c:
        for _ in range(100):  # warm: allocator pools, caches
            c.infer("tiny", [tensor_input(batch)])
        start = server.rss_bytes()
        for _ in range(1500):
            c.infer("tiny", [tensor_input(batch)])
        end = server.rss_bytes()
    assert end - start < 16 << 20, f"RSS grew from {start >> 20} MiB to {end >> 20} MiB over 1500 requests"


# -- load, shutdown, command line -------------------------------------------------------------------------------


def test_past_the_queue_bound_requests_get_503_and_none_hangs(tiny, reference, photos):
    batch = preprocess_batch(photos[:1], reference.preprocess_config)
    body = json.dumps(_tensor_body([1, 3, 64, 64], data=batch.ravel().tolist())).encode()
    args = [str(tiny.onnx), "--threads", "1", "--port", "0", "--max-batch", "1", "--max-queue", "1"]
    with ServerProcess(args) as server, httpx.Client(timeout=30) as http:

        def one(_: int) -> httpx.Response:
            return http.post(f"{server.url}/v2/models/tiny/infer", content=body)

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(one, range(128)))  # a hung request fails here on its 30 s timeout
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and statuses.count(200) > 0, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["Retry-After"] == "1"
            assert "the queue holds 1 images and takes at most 1" in answer.json()["error"]
        else:
            logits = next(o for o in answer.json()["outputs"] if o["name"] == "logits")["data"]
            np.testing.assert_allclose(logits, reference.logits(batch).ravel(), atol=ATOL)


def test_sigterm_drains_the_request_in_flight_then_exits_0_and_debug_logs_it(tiny, reference, photos):
    import signal
    import socket

    batch = preprocess_batch(photos[:1], reference.preprocess_config)
    body = json.dumps(_tensor_body([1, 3, 64, 64], data=batch.ravel().tolist())).encode()
    server = ServerProcess([str(tiny.onnx), "--threads", "1", "--port", "0", "--debug"])
    try:
        host, port = server.address.split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            head = f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body[: len(body) // 2])  # the request is in flight, half its body sent
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            with pytest.raises(httpx.ConnectError):  # no new connections while draining
                httpx.get(f"{server.url}/v2/health/live", timeout=5)
            sock.sendall(body[len(body) // 2 :])
            answer = b""
            while chunk := sock.recv(1 << 16):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        payload = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        logits = next(o for o in payload["outputs"] if o["name"] == "logits")["data"]
        np.testing.assert_allclose(logits, reference.logits(batch).ravel(), atol=ATOL)
        assert server.process.wait(60) == 0
        log = "".join(server.stderr)
        assert "tiny: drained and stopped" in log
        assert re.search(r"DEBUG: +POST /v2/models/tiny/infer -> 200 in [0-9.]+ ms", log), log[-2000:]
    finally:
        server.kill()


def _serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "serving", "serve", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_serve_command_errors(tiny, tmp_path):
    import socket

    result = _serve_cli(str(tiny.onnx), "--max-batch", "8", "--max-queue", "4")
    assert result.returncode == 1 and "server limits out of range: max_queue=4" in result.stderr
    result = _serve_cli(str(tmp_path / "nope.onnx"))
    assert result.returncode == 1 and "nope.onnx: no such model file" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve_cli(str(tiny.onnx), "--port", str(port))
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    result = _serve_cli(str(tiny.onnx), "--name", "../x")
    assert result.returncode == 1 and "model name '../x': use 1-64 letters" in result.stderr
    result = _serve_cli(str(tiny.onnx), "--max-wait-ms", "nan")
    assert result.returncode == 2 and "--max-wait-ms: must be a finite number >= 0, got nan" in result.stderr


def test_a_paddle_inference_artifact_is_served(tiny, reference, photos):
    pytest.importorskip("paddle")
    with ServerProcess([str(tiny.paddle), "--runtime", "paddle-inference", "--threads", "1", "--port", "0"]) as server:
        with httpclient.InferenceServerClient(server.address, network_timeout=120) as client:
            meta = client.get_model_metadata("tiny")
            assert meta["platform"] == "lvvit-kit/paddle-inference"
            assert meta["parameters"]["preprocess"]["input_size"] == 64
            batch = preprocess_batch(photos[:2], reference.preprocess_config)
            assert_same(client.infer("tiny", [tensor_input(batch)]), reference, batch)
