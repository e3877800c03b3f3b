"""Engines: how a shard's images reach the predictors. `local` (threads here) or `ray` (Ray Data, an actor pool).

Both take the same predictor specs and return the same `ShardLogits`, so the
records, and the reports, are the same whichever ran them. The local engine
reads images with prefetching threads and feeds every runtime the same batch;
it gives each runtime one untimed warm-up batch before it times anything.
The Ray engine lives in `validation.engines.ray` and is imported only when asked
for, so the base install needs no Ray.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lvvit.presets import PreprocessConfig
from lvvit.synthetic import synthetic_batch
from runtimes.spec import PredictorSpec
from validation.core.data import Batch, Failure, Sample, stream_batches
from validation.core.runners import Participant, Runner, open_runners
from validation.engines.shards import Engine, ShardLogits, ShardRecords, ShardStore, run_shards
from validation.errors import EngineError

if TYPE_CHECKING:
    from validation.engines.reference_cache import ReferenceCache

DEFAULT_SHARD_SIZE = 1000  # images per shard: what an interrupted run can lose, and one file each


def synthetic_samples(count: int, seed: int) -> list[Sample]:
    """`count` synthetic images as samples: image k is `lvvit.synthetic.synthetic_image(seed + k)`."""
    return [Sample(Path(f"synthetic-{seed + k}"), f"synthetic #{seed + k}", synthetic=seed + k) for k in range(count)]


def load_batches(
    samples: list[Sample], config: PreprocessConfig, batch_size: int, workers: int = 4, prefetch: int = 2
) -> Iterator[Batch]:
    """Preprocessed batches of `samples` in order: image files, or synthetic images (`synthetic_samples`)."""
    if not any(s.synthetic is not None for s in samples):
        yield from stream_batches(samples, config, batch_size, workers, prefetch, progress=False)
        return
    if not all(s.synthetic is not None for s in samples):
        raise EngineError("a run mixes synthetic images with image files")
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        first = chunk[0].synthetic or 0
        if [s.synthetic for s in chunk] != list(range(first, first + len(chunk))):
            raise EngineError(f"synthetic images {[s.synthetic for s in chunk]} are not consecutive")
        yield Batch(chunk, synthetic_batch(len(chunk), config, seed=first), [])


@dataclass
class LocalEngine:
    """Runs shards in this process on opened runners (one per runtime, the reference among them)."""

    runners: Mapping[str, Runner]
    config: PreprocessConfig
    batch_size: int = 16
    workers: int = 4
    prefetch: int = 2
    _warm: set[str] = field(default_factory=set)

    def __call__(self, pending: Sequence[tuple[int, list[Sample]]]) -> Iterator[ShardLogits]:
        for index, samples in pending:
            yield self.run_shard(index, samples)

    def run_shard(self, index: int, samples: list[Sample]) -> ShardLogits:
        kept: list[Sample] = []
        failures: list[Failure] = []
        outputs: dict[str, list[np.ndarray]] = {name: [] for name in self.runners}
        seconds = dict.fromkeys(self.runners, 0.0)
        batches = load_batches(samples, self.config, self.batch_size, self.workers, self.prefetch)
        with contextlib.closing(batches):  # on an interrupt, stop the reading threads at once
            for batch in batches:
                failures.extend(batch.failures)
                if not len(batch.inputs):
                    continue
                kept.extend(batch.samples)
                for name, runner in self.runners.items():
                    if name not in self._warm:  # first-call setup (oneDNN kernels, arenas) is not throughput
                        runner.logits(batch.inputs)
                        self._warm.add(name)
                    started = time.perf_counter()
                    outputs[name].append(runner.logits(batch.inputs))
                    seconds[name] += time.perf_counter() - started
        logits = {
            name: np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
            for name, parts in outputs.items()
        }
        return ShardLogits(index, kept, failures, logits, seconds)

    def describe(self) -> dict[str, object]:
        return {"name": "local", "batch_size": self.batch_size, "workers": self.workers}


def evaluate(
    samples: Sequence[Sample],
    run: Mapping[str, object],
    shard_size: int,
    engine: Engine,
    reference: str | None,
    classes: int,
    shard_dir: Path | None,
    progress: bool,
) -> tuple[list[ShardRecords], int, str | None]:
    """(every shard's records, how many this call computed, the shard folder kept or None) of one run.

    With `shard_dir`, finished shards stay there and the same run resumes from them; without, they go to a
    temporary folder removed at the end.
    """
    if shard_dir is not None:
        store = ShardStore(shard_dir, run)
        return (*run_shards(samples, shard_size, store, engine, reference, classes, progress), str(shard_dir))
    with tempfile.TemporaryDirectory(prefix="lvvit-shards-") as tmp:
        store = ShardStore(tmp, run)
        return (*run_shards(samples, shard_size, store, engine, reference, classes, progress), None)


@contextlib.contextmanager
def engine_for(
    specs: Mapping[str, PredictorSpec],
    kind: str = "local",
    *,
    ray_address: str | None = None,
    batch_size: int = 16,
    workers: int = 4,
    prefetch: int = 2,
    reference_cache: ReferenceCache | None = None,
) -> Iterator[tuple[Participant, list[Participant], Engine]]:
    """(the reference, the other runtimes, the engine) for `specs` (the reference's first); closes all at the end.

    `local` opens the predictors here; `ray` starts Ray embedded (or joins `ray_address`) and opens them in actors.
    With `reference_cache`, `specs` holds only the runtimes, and the reference's logits come from the cache.
    """
    with _engine(specs, kind, ray_address, batch_size, workers, prefetch) as (participants, engine):
        if reference_cache is None:
            yield participants[0], participants[1:], engine
            return
        from validation.engines.reference_cache import CachedReference, WithCachedReference

        config = participants[0].preprocess_config
        if json.loads(json.dumps(config.to_dict())) != reference_cache.key["preprocess"]:  # tuples as JSON lists
            raise EngineError(
                f"{participants[0].name} preprocesses as {config.to_dict()}, the cached reference as "
                f"{reference_cache.key['preprocess']}; the same inputs cannot feed both"
            )
        yield CachedReference(reference_cache, config), participants, WithCachedReference(engine, reference_cache)


@contextlib.contextmanager
def _engine(
    specs: Mapping[str, PredictorSpec],
    kind: str,
    ray_address: str | None,
    batch_size: int,
    workers: int,
    prefetch: int,
) -> Iterator[tuple[list[Participant], Engine]]:
    if kind not in ENGINES:
        raise EngineError(f"unknown engine {kind!r}; valid: {', '.join(ENGINES)}")
    with ENGINES[kind].open(specs, EngineSettings(ray_address, batch_size, workers, prefetch)) as opened:
        yield opened


@dataclass(frozen=True)
class EngineSettings:
    """What an engine is opened with: the Ray cluster to join, and how images are batched and read."""

    ray_address: str | None = None
    batch_size: int = 16
    workers: int = 4
    prefetch: int = 2


OpenEngine = Callable[
    [Mapping[str, PredictorSpec], EngineSettings], contextlib.AbstractContextManager[tuple[list[Participant], Engine]]
]


@dataclass(frozen=True)
class EngineKind:
    """A row of the engine registry: its name (`--engine NAME`), a line of help, and how it opens."""

    name: str
    help: str
    open: OpenEngine


@contextlib.contextmanager
def _open_local(
    specs: Mapping[str, PredictorSpec], settings: EngineSettings
) -> Iterator[tuple[list[Participant], Engine]]:
    first, others = open_runners(specs)
    runners = [first, *others]
    try:
        everyone = {r.name: r for r in runners}
        config = first.preprocess_config
        yield list(runners), LocalEngine(everyone, config, settings.batch_size, settings.workers, settings.prefetch)
    finally:
        for runner in runners:
            runner.close()


@contextlib.contextmanager
def _open_ray(
    specs: Mapping[str, PredictorSpec], settings: EngineSettings
) -> Iterator[tuple[list[Participant], Engine]]:
    from validation.engines.ray import RayEngine

    with RayEngine.start(specs, settings.ray_address, batch_size=settings.batch_size) as engine:
        yield engine.participants(), engine


# The engine registry: `--engine` offers these names. A new engine is a module with its `open` and a row here.
ENGINES: dict[str, EngineKind] = {
    "local": EngineKind("local", "threads in this process", _open_local),
    "ray": EngineKind(
        "ray",
        "Ray Data with an actor pool per runtime (pip install 'lvvit-deploy[ray]'), embedded on this machine "
        "unless --ray-address",
        _open_ray,
    ),
}
