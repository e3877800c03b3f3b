"""`python -m validation stream-latency MODEL.onnx`: a predictor opened with streams=N against one with streams=1.

A predictor opened for throughput (`streams=N`) splits a batch into N parts,
each on threads/N. A batch too small to split runs whole on a second session
with all the threads (`runtimes.base`), so that a single image is as fast as
with `streams=1`. This measures both sides of that promise in one run, on the
same file: batch-1 latency (the two must match), throughput at a batch of 4N
(where the streams pay), and the memory each predictor adds when it opens
(the cost of the second session; an approximate resident-set difference).
Timed runs are interleaved, as in the bench.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _openers(model: Path, runtimes: list[str], threads: int, streams: int) -> dict[str, Any]:
    from runtimes import registry

    openers = {}
    for runtime in runtimes:
        make = registry.get(runtime).predictor_class()
        for n in (1, streams):
            openers[f"{runtime} streams={n}"] = (
                lambda make=make, n=n: make(model, threads=threads, streams=n)  # noqa: B023 (bound by default)
            )
    return openers


def compare_streams(
    model: Path,
    runtimes: list[str],
    threads: int,
    streams: int,
    warmup: int = 3,
    repeats: int = 15,
    settle_ms: int = 100,
) -> dict[str, Any]:
    """Batch-1 latency, batch-4N throughput and opening memory of each runtime at streams=1 and streams=N."""
    from lvvit.synthetic import synthetic_batch
    from validation.perf.bench import time_interleaved, timing_stats

    openers = _openers(model, runtimes, threads, streams)
    for name, open_predictor in openers.items():  # once untimed: libraries and allocators load outside the counts
        if name.endswith("streams=1"):
            open_predictor().close()
    opened, memory = {}, {}
    for name, open_predictor in openers.items():
        before = _rss_bytes()
        opened[name] = open_predictor()
        opened[name].logits(synthetic_batch(1, opened[name].preprocess_config))  # lazy allocations happen here
        memory[name] = (_rss_bytes() - before) / 2**20
    config = next(iter(opened.values())).preprocess_config
    results: dict[str, Any] = {name: {"open_mib": memory[name]} for name in opened}
    for batch in (1, 4 * streams):
        x = synthetic_batch(batch, config)
        seconds, _ = time_interleaved(opened, x, warmup, repeats, settle_ms / 1e3)
        for name, samples in seconds.items():
            results[name][f"batch{batch}"] = timing_stats(samples, batch)
    for predictor in opened.values():
        predictor.close()
    return {
        "model": str(model),
        "threads": threads,
        "streams": streams,
        "repeats": repeats,
        "warmup": warmup,
        "settle_ms": settle_ms,
        "paths": results,
    }


def render(report: dict[str, Any]) -> str:
    n, big = report["streams"], 4 * report["streams"]
    lines = [
        f"{report['model']}: {report['threads']} threads, median of {report['repeats']} interleaved runs",
        "",
        f"| predictor | batch 1 ms | batch 1 vs streams=1 | batch {big} img/s | batch {big} vs streams=1 "
        "| memory at open (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    paths = report["paths"]
    for name, p in paths.items():
        base = paths[name.replace(f"streams={n}", "streams=1")]
        latency = p["batch1"]["median_ms"] / base["batch1"]["median_ms"]
        throughput = p[f"batch{big}"]["images_per_s"] / base[f"batch{big}"]["images_per_s"]
        lines.append(
            f"| {name} | {p['batch1']['median_ms']:.1f} | {latency:.2f}x | {p[f'batch{big}']['images_per_s']:.2f} "
            f"| {throughput:.2f}x | {p['open_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"
