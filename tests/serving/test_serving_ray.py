"""The same app on Ray Serve (embedded on this machine): the same client gets the same answers, bad requests
get the same JSON errors, a full queue answers 503 with Retry-After, and SIGTERM shuts Ray down and exits 0."""

from __future__ import annotations

import pytest

from lvvit.preprocess import preprocess_batch
from runtimes import OrtPredictor
from serving.bench import _binary_request
from serving.child import ServerProcess
from tests.serving.test_serving import assert_same, bytes_input, encoded, metric, tensor_input

httpclient = pytest.importorskip("tritonclient.http")
httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve")


def test_ray_serve_answers_like_the_predictor(tiny, photos):
    from concurrent.futures import ThreadPoolExecutor

    args = [str(tiny.onnx), "--ray", "--port", "0", "--threads", "1", "--max-batch", "4", "--max-wait-ms", "20"]
    args += ["--max-queue", "4"]  # a replica takes 8 requests at once, Ray's queue 4 more: 12 in all
    server = ServerProcess(args, start_timeout_s=240)
    try:
        with (
            OrtPredictor(tiny.onnx, threads=1) as reference,
            httpclient.InferenceServerClient(server.address, network_timeout=120) as client,
        ):
            assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
            assert client.get_model_metadata("tiny")["inputs"][0] == {
                "name": "image",
                "datatype": "FP32",
                "shape": [-1, 3, 64, 64],
            }
            batch = preprocess_batch(photos[:3], reference.preprocess_config)
            assert_same(client.infer("tiny", [tensor_input(batch)]), reference, batch)
            images = [encoded(photos[i]) for i in range(3)]
            result = client.infer("tiny", [bytes_input(images)])
            assert_same(result, reference, preprocess_batch(images, reference.preprocess_config))

            # Ray's router counts a request as queued until it has picked a replica, so a burst larger than the queue
            # may be refused while the replica has room (seen in CI: 8 at once, "num_queued_requests=4"): 4 always fit
            singles = [preprocess_batch([photos[i % 5]], reference.preprocess_config) for i in range(4)]

            def one(x):
                with httpclient.InferenceServerClient(server.address, network_timeout=120) as c:
                    return c.infer("tiny", [tensor_input(x)])

            with ThreadPoolExecutor(len(singles)) as pool:
                for answer, x in zip(pool.map(one, singles), singles, strict=True):
                    assert_same(answer, reference, x)

            bad = httpx.post(f"{server.url}/v2/models/tiny/infer", content=b'{"inputs": [', timeout=60)
            assert bad.status_code == 400 and "request: malformed JSON" in bad.json()["error"]
            bad = httpx.post(f"{server.url}/v2/models/nope/infer", content=b"{}", timeout=60)
            assert bad.status_code == 404 and "unknown model 'nope'" in bad.json()["error"]
            assert metric(server.url, "lvvit_batch_size_sum") >= 1
            _flood_gets_503_with_retry_after(server.url, singles[0])
        assert server.stop(timeout_s=120) == 0, "".join(server.stderr)[-3000:]
        assert "tiny: Ray Serve shut down" in "".join(server.stderr)
    finally:
        server.kill()


def _flood_gets_503_with_retry_after(url, x):
    """128 requests from 32 clients against room for 12: Ray's own 503s, each with Retry-After; none hangs."""
    from concurrent.futures import ThreadPoolExecutor

    body, headers = _binary_request(x)
    with httpx.Client(timeout=60) as http:

        def one(_: int) -> httpx.Response:
            return http.post(f"{url}/v2/models/tiny/infer", content=body, headers=headers)

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(one, range(128)))  # a hung request fails here on its timeout
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and statuses.count(200) > 0, statuses
    assert all(a.headers.get("Retry-After") == "1" for a in answers if a.status_code == 503)


def test_ray_deployment_options_bound_the_queue_with_retry_after():
    from serving.config import Limits
    from serving.ray_host import KitDeployment, RayOptions, deployment_options

    options = deployment_options(Limits(max_batch=4, max_queue=16, retry_after_s=2), RayOptions(max_replicas=3))
    assert options["max_ongoing_requests"] == 8 and options["max_queued_requests"] == 16
    assert options["backpressure_config"].status_code == 503 and options["backpressure_config"].retry_after_s == 2
    assert options["autoscaling_config"]["max_replicas"] == 3
    KitDeployment.options(name="tiny", **options)  # Ray takes them as they are
