"""The load benchmark: the server against the in-process predictor, in the same run, on 127.0.0.1 only.

    python -m serving bench lvvit_s.onnx --concurrency 1 4 16 --requests 400 --seconds 60

1. In process: the predictor's batch-1 latency (median) and its best batched throughput (over batch sizes up to
   `--max-batch`), then it is closed so that it does not compete with the server.
2. The server (`python -m serving serve`, a child process on a free loopback port) takes, at each concurrency,
   that many clients each sending one-image FP32 requests (Triton's binary format, one kept-alive connection per
   client) until `--requests` are answered or `--seconds` pass. Per level: images/s, p50/p95/p99 latency,
   errors, and the batch sizes the server ran (from its /metrics); the server's RSS before and after.
3. Ratios: server throughput / the predictor's best batched throughput (goal >= 0.9), and the p50 at
   concurrency 1 minus the predictor's batch-1 latency (goal <= 5 ms).
4. The in-process measurement of step 1 again, after the server has stopped: not in the ratios (they keep step
   1's), it shows how much the machine itself drifted between the two phases.

The clients are threads of this process, on the same cores as the server: on a small machine they take a share
of the CPU that a remote client would not. So they cost as little as a client can (one kept-alive connection
each, one body prepared once and sent as it is, nothing decoded but the status), and each level reports their
CPU (`client_cpu_share`, in cores) beside the server's own view from its /metrics: its mean request time and its
mean predictor call, whose difference at concurrency 1 is the server's overhead by its own clock (the two goals
compare against an in-process measurement taken a minute earlier, which drifts with the machine's load).
Everything is bounded: requests, seconds, start and stop timeouts.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lvvit.common.progress import Log, to_stderr
from lvvit.presets import PreprocessConfig
from lvvit.synthetic import synthetic_batch
from runtimes import PredictorSpec

from .child import ServerProcess
from .config import Limits
from .protocol import HEADER_LENGTH

REQUEST_TIMEOUT_S = 60.0


@dataclass
class Level:
    concurrency: int
    requests: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: dict[str, int]
    batch_sizes: dict[str, int]  # histogram bucket (upper bound) -> predictor calls
    mean_batch: float
    # from the server's /metrics: its mean infer request time (first byte to answer) and predictor call time
    server_request_ms: float = 0.0
    server_predictor_ms: float = 0.0
    # the benchmark's own CPU (its client threads) over the level, in cores: the share of the machine the
    # clients took from a server that shares its cores
    client_cpu_share: float = 0.0


@dataclass
class BenchResult:
    model: str
    runtime: str
    limits: dict[str, Any]
    predictor_batch1_ms: float
    predictor_throughput: dict[str, float]  # batch size -> images/s
    predictor_best: float
    levels: list[Level] = field(default_factory=list)
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    server_exit: int | None = None
    # the same in-process measurement repeated once the server has stopped: not used in the ratios, it shows how
    # far the machine drifted over the run (on a shared machine the goals' ratios compare two different minutes)
    predictor_after_batch1_ms: float | None = None
    predictor_after_throughput: dict[str, float] = field(default_factory=dict)

    def ratios(self) -> dict[str, float]:
        best = max((level.images_per_s for level in self.levels), default=0.0)
        one = next((level for level in self.levels if level.concurrency == 1), None)
        out = {"server_best_over_predictor_best": best / self.predictor_best}
        if one is not None:
            out["p50_c1_minus_predictor_batch1_ms"] = one.p50_ms - self.predictor_batch1_ms
            # not a goal: what the server adds around each predictor call, by its own clock (see Level)
            out["server_overhead_c1_ms"] = one.server_request_ms - one.server_predictor_ms
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratios": self.ratios()}


def measure_predictor(
    spec: PredictorSpec, max_batch: int, seconds: float, log: Log
) -> tuple[float, dict[str, float], PreprocessConfig]:
    """(median batch-1 latency in ms, images/s per batch size, the preprocessing), each size run ~`seconds`."""
    with spec.open() as predictor:
        config = predictor.preprocess_config
        images = synthetic_batch(max_batch, config, seed=0)
        predictor.logits(images[:1])  # warm
        latencies = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(latencies) < 5:
            start = time.perf_counter()
            predictor.logits(images[:1])
            latencies.append(time.perf_counter() - start)
        batch1 = float(np.median(latencies)) * 1e3
        throughput = {}
        for n in sorted({n for n in (1, 2, 4, 8, 16) if n <= max_batch} | {max_batch}):
            predictor.logits(images[:n])
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds or count < 2:
                predictor.logits(images[:n])
                count += 1
            throughput[str(n)] = n * count / (time.perf_counter() - start)
            log(f"predictor: batch {n}: {throughput[str(n)]:.1f} img/s")
    log(f"predictor: batch-1 latency {batch1:.2f} ms (median of {len(latencies)})")
    return batch1, throughput, config


def _binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "class_ids", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}
    return header + x.tobytes(), headers


INFER_ENDPOINT = "/v2/models/{name}/infer"
SCRAPED_SERIES = ("count", "sum", "request_count", "request_sum", "predictor_count", "predictor_sum")


def _scrape(host: str, port: int) -> dict[str, float]:
    """From the server's /metrics: its batch-size histogram (cumulative bucket counts by upper bound, `count`,
    `sum`), and the sums and counts of its infer requests' seconds and of its predictor calls' seconds."""
    connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    found = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^lvvit_batch_size_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)
    }
    series = {
        "count": "lvvit_batch_size_count",
        "sum": "lvvit_batch_size_sum",
        "request_count": f'lvvit_request_seconds_count{{endpoint="{INFER_ENDPOINT}"}}',
        "request_sum": f'lvvit_request_seconds_sum{{endpoint="{INFER_ENDPOINT}"}}',
        "predictor_count": "lvvit_predictor_seconds_count",
        "predictor_sum": "lvvit_predictor_seconds_sum",
    }
    for key, name in series.items():
        hit = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        found[key] = float(hit.group(1)) if hit else 0.0
    return found


def _batch_buckets(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Predictor calls per batch-size bucket (upper bound) between two scrapes."""
    buckets, previous = {}, 0.0
    bounds = [k for k in after if k not in SCRAPED_SERIES]
    for bound in sorted(bounds, key=float):
        cumulative = after[bound] - before.get(bound, 0.0)
        if cumulative - previous:
            buckets[bound] = int(cumulative - previous)
        previous = cumulative
    return buckets


@dataclass
class _Tally:
    """What the client threads of one level record."""

    requests: int
    deadline: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    issued: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        with self.lock:
            if self.issued >= self.requests or time.monotonic() >= self.deadline:
                return False
            self.issued += 1
            return True

    def record(self, status: str, elapsed: float) -> None:
        with self.lock:
            if status == "200":
                self.latencies.append(elapsed)
            else:
                self.errors[status] = self.errors.get(status, 0) + 1


def _client(host: str, port: int, path: str, body: bytes, headers: dict[str, str], tally: _Tally) -> None:
    """One client: a kept-alive connection sending the same prepared body (no per-request encoding: the client
    should cost the shared cores as little as it can)."""
    connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
    while tally.take():
        start = time.perf_counter()
        try:
            connection.request("POST", path, body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            status = str(answer.status)
        except (OSError, http.client.HTTPException) as exc:
            status = type(exc).__name__
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
        tally.record(status, time.perf_counter() - start)
    connection.close()


def _mean_ms(before: dict[str, float], after: dict[str, float], name: str) -> float:
    count = after[f"{name}_count"] - before[f"{name}_count"]
    return (after[f"{name}_sum"] - before[f"{name}_sum"]) / count * 1e3 if count else 0.0


def run_level(
    host: str, port: int, model: str, x: np.ndarray, concurrency: int, requests: int, seconds: float
) -> Level:
    body, headers = _binary_request(x)
    path = f"/v2/models/{model}/infer"
    tally = _Tally(requests, time.monotonic() + seconds)
    before = _scrape(host, port)
    threads = [
        threading.Thread(target=_client, args=(host, port, path, body, headers, tally), daemon=True)
        for _ in range(concurrency)
    ]
    start, cpu_start = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + REQUEST_TIMEOUT_S)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    after = _scrape(host, port)
    calls = after["count"] - before["count"]
    ms = np.array(tally.latencies) * 1e3 if tally.latencies else np.array([np.nan])
    return Level(
        concurrency=concurrency,
        requests=len(tally.latencies) + sum(tally.errors.values()),
        seconds=round(wall, 3),
        images_per_s=len(tally.latencies) * len(x) / wall,
        p50_ms=float(np.percentile(ms, 50)),
        p95_ms=float(np.percentile(ms, 95)),
        p99_ms=float(np.percentile(ms, 99)),
        errors=tally.errors,
        batch_sizes=_batch_buckets(before, after),
        mean_batch=(after["sum"] - before["sum"]) / calls if calls else 0.0,
        server_request_ms=_mean_ms(before, after, "request"),
        server_predictor_ms=_mean_ms(before, after, "predictor"),
        client_cpu_share=cpu / wall,
    )


def run_bench(
    name: str,
    spec: PredictorSpec,
    server_args: Sequence[str],
    limits: Limits,
    concurrency: Sequence[int],
    requests: int,
    seconds: float,
    log: Log = to_stderr,
    repeat_predictor: bool = True,
) -> BenchResult:
    batch1, throughput, config = measure_predictor(spec, limits.max_batch, min(seconds, 10.0), log)
    result = BenchResult(name, spec.runtime, asdict(limits), batch1, throughput, max(throughput.values()))
    with ServerProcess([*server_args, "--name", name, "--host", "127.0.0.1", "--port", "0"]) as server:
        host, port = server.address.rsplit(":", 1)
        x = synthetic_batch(1, config, seed=1)
        # warm the server at every batch size it will run (the runtime's memory pools grow with the batch), so
        # that the RSS before and after the levels compares like with like
        run_level(host, int(port), name, x, max(concurrency), 4 * limits.max_batch, seconds)
        result.rss_before_mb = server.rss_bytes() / 2**20
        for c in concurrency:
            level = run_level(host, int(port), name, x, c, requests, seconds)
            log(
                f"concurrency {c}: {level.images_per_s:.1f} img/s, p50 {level.p50_ms:.1f} ms, p95 {level.p95_ms:.1f}"
                f" ms, p99 {level.p99_ms:.1f} ms, errors {level.errors or 0}, mean batch {level.mean_batch:.2f}"
            )
            result.levels.append(level)
        result.rss_after_mb = server.rss_bytes() / 2**20
        result.server_exit = server.stop()
    if repeat_predictor:
        after, after_throughput, _ = measure_predictor(spec, limits.max_batch, min(seconds, 10.0), log)
        result.predictor_after_batch1_ms, result.predictor_after_throughput = after, after_throughput
    return result


def _repeated_predictor(result: BenchResult) -> list[str]:
    if result.predictor_after_batch1_ms is None:
        return []
    sizes = ", ".join(f"batch {n} {v:.1f}" for n, v in result.predictor_after_throughput.items())
    return [
        "",
        f"in process again after the server (drift, not in the ratios): batch-1 "
        f"{result.predictor_after_batch1_ms:.2f} ms; img/s {sizes}",
    ]


def markdown(result: BenchResult) -> str:
    lines = [
        f"model `{result.model}` on `{result.runtime}`, server limits: max batch {result.limits['max_batch']}, "
        f"wait {result.limits['max_wait_ms']} ms, queue {result.limits['max_queue']}",
        "",
        "| in process | value |",
        "|---|---|",
        f"| batch-1 latency (median) | {result.predictor_batch1_ms:.2f} ms |",
        *(f"| batch {n} | {v:.1f} img/s |" for n, v in result.predictor_throughput.items()),
        *_repeated_predictor(result),
        "",
        "| concurrency | img/s | p50 ms | p95 ms | p99 ms | errors | mean batch | batch sizes (bucket: calls) "
        "| server: request / predictor call ms | client CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {lv.concurrency} | {lv.images_per_s:.1f} | {lv.p50_ms:.1f} | {lv.p95_ms:.1f} | {lv.p99_ms:.1f} | "
            f"{sum(lv.errors.values())} | {lv.mean_batch:.2f} | "
            f"{', '.join(f'<={k}: {v}' for k, v in lv.batch_sizes.items())} | "
            f"{lv.server_request_ms:.1f} / {lv.server_predictor_ms:.1f} | {lv.client_cpu_share:.1%} of a core |"
            for lv in result.levels
        ),
        "",
        f"server RSS {result.rss_before_mb:.0f} MiB before the levels, {result.rss_after_mb:.0f} MiB after; "
        f"exit status {result.server_exit}",
    ]
    ratios = result.ratios()
    lines.append(f"server best / predictor best: {ratios['server_best_over_predictor_best']:.2f} (goal >= 0.9)")
    extra = ratios.get("p50_c1_minus_predictor_batch1_ms")
    if extra is not None:
        lines.append(f"p50 at concurrency 1 - predictor batch-1: {extra:+.2f} ms (goal <= 5)")
        lines.append(
            f"server overhead at concurrency 1 (its mean request - its mean predictor call): "
            f"{ratios['server_overhead_c1_ms']:+.2f} ms"
        )
    return "\n".join(lines)
