"""The Ray engine: Ray Data reads the images, and an actor pool per runtime runs its predictor spec.

    ray.data.from_items(image rows) -> map_batches(read + preprocess, tasks)
        -> map_batches(SpecActor, ActorPoolStrategy) for each runtime -> rows back to the driver, in order

Without an address, Ray starts embedded in this process on this machine's cores
(`ray.init` with no dashboard and a small object store); `--ray-address auto` (or
`HOST:6379`) joins a cluster from one of its nodes. Ray Client addresses (`ray://`) are
refused: Ray Data does not run through Ray Client. Any other address must be
`auto` or `HOST:PORT`, and the head must answer within `CONNECT_TIMEOUT_S`;
otherwise `EngineError` names the address. Models are exported once, on the driver; their
bytes go into Ray's object store, and each actor writes them into a
temporary folder after checking their SHA-256 (`PredictorSpec.materialize`), opens
them, and removes the folder (the runtimes hold the model in memory once opened),
so a worker on another node never needs the driver's disk and no model copy is
left in TMPDIR when Ray stops its actors.

Bounded failures: a reader that dies (a poison image that crashes the decoder) is
restarted at most `READ_RESTARTS` times; each reader notes the image it is
reading in a folder on this machine, so the error names the image that killed
it. An interrupt (SIGINT, SIGTERM) stops an embedded Ray with the run. Actors and read tasks ask
for fractions of a CPU, so that two runtimes and the readers fit on two cores.

The driver gathers each shard's rows and yields them as `ShardLogits`, the same
as the local engine; records, merges and reports are shared code. Ray is the
`[ray]` extra: this module is imported only when `--engine ray` is asked for.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.common.atomic import process_alive
from lvvit.common.interrupt import stopped_on_interrupt
from lvvit.presets import PreprocessConfig
from runtimes.spec import REFERENCE, PredictorSpec, read_model_metadata
from validation.core.data import Failure, Sample
from validation.engines.shards import ShardLogits
from validation.errors import EngineError

EMBEDDED_OBJECT_STORE_BYTES = 256 << 20  # images stream through; a small store leaves the memory to the runtimes
ACTOR_CPUS = 0.5  # per runtime actor: two runtimes and the readers fit on a 2-core machine
READ_CPUS = 0.25
READ_RESTARTS = 2  # a reader that died is restarted this often (Ray Data's default: forever)
CONNECT_TIMEOUT_S = 15.0  # how long --ray-address may take to answer
KIT_ROOT = str(Path(__file__).resolve().parents[2])  # validation/engines/ray.py -> the checkout


def check_address(address: str | None) -> None:
    """`--ray-address` must be None, `auto` or a `HOST:PORT` that answers within `CONNECT_TIMEOUT_S`."""
    if address is None or address == "auto":
        return
    if address.startswith("ray://"):
        # measured with Ray 2.60: Ray Data's executor fails under Ray Client ('Worker' has no 'core_worker')
        raise EngineError(
            f"--ray-address {address}: Ray Data does not run through Ray Client (ray://); run the command on a "
            "node of the cluster with --ray-address auto, or submit it there with 'ray job submit'"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EngineError(
            f"--ray-address {address!r}: expected 'auto' (the cluster this machine is a node of) or HOST:PORT "
            "(the head node's GCS port, 6379 unless 'ray start --head --port' said otherwise)"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise EngineError(
            f"--ray-address {address}: nothing answers there within {CONNECT_TIMEOUT_S:g} s ({exc.strerror or exc}); "
            "check the address, or start the head with 'ray start --head'"
        ) from None


def _stop_ray() -> None:
    """Stop the embedded Ray on an interrupt: `ray.shutdown`, bounded, as the signal may land inside Ray."""
    import ray

    stopper = threading.Thread(target=ray.shutdown, daemon=True)
    stopper.start()
    stopper.join(timeout=20)
    if stopper.is_alive():  # stuck on a lock the signal interrupted: stop the processes Ray started here
        import psutil  # a dependency of Ray

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray: pip install 'lvvit-deploy[ray]' ({exc})") from None
    return ray


class ReadImages:
    """Ray Data batch function: image rows -> preprocessed pixels (zeros and an error text for unreadable ones)."""

    def __init__(self, config: PreprocessConfig, reading: str | None = None) -> None:
        self.config = config
        # where this reader notes the image it is on, so that the driver can name an image that kills it
        self.note = Path(reading) / str(os.getpid()) if reading and Path(reading).is_dir() else None

    def _one(self, path: str, synthetic: int) -> tuple[np.ndarray, str]:
        from lvvit.errors import ImageError
        from lvvit.preprocess import preprocess
        from lvvit.synthetic import synthetic_image

        if synthetic >= 0:
            return preprocess(synthetic_image(synthetic), self.config), ""
        if self.note is not None:
            self.note.write_text(path, encoding="utf-8")
        try:
            return self._decode(path), ""
        except ImageError as exc:
            return np.zeros((3, self.config.input_size, self.config.input_size), np.float32), str(exc)

    def _decode(self, path: str) -> np.ndarray:
        from lvvit.preprocess import preprocess

        return preprocess(path, self.config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loaded = [self._one(str(p), int(k)) for p, k in zip(batch["path"], batch["synthetic"], strict=True)]
        batch["pixels"] = np.stack([pixels for pixels, _ in loaded])
        batch["error"] = np.array([error for _, error in loaded], dtype=object)
        return batch


class SpecActor:
    """One runtime in a Ray actor: the spec's files arrive from the object store, are checked, then opened."""

    def __init__(self, name: str, spec: PredictorSpec, blobs: Mapping[str, Any]) -> None:
        import ray

        self.name = name
        shipped = {file: ray.get(ref) for file, ref in blobs.items()}
        with tempfile.TemporaryDirectory(prefix=f"lvvit-{name}-") as folder:  # opened, the model is in memory
            self.predictor = spec.materialize(shipped, folder).open()
        self.warm = False

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        n = len(ok)
        classes = self.predictor.describe().get("output", {}).get("num_classes") or 0
        logits = np.full((n, classes), np.nan, dtype=np.float32)
        seconds = np.zeros(n)
        if ok.any():
            x = np.ascontiguousarray(batch["pixels"][ok])
            if not self.warm:  # first-call setup is not throughput, as in the local engine
                self.predictor.logits(x)
                self.warm = True
            started = time.perf_counter()
            logits[ok] = self.predictor.logits(x)
            seconds[ok] = (time.perf_counter() - started) / ok.sum()
        batch[f"logits:{self.name}"] = logits
        batch[f"seconds:{self.name}"] = seconds
        return batch


def _describe_remote(spec: PredictorSpec, blobs: Mapping[str, Any]) -> dict[str, Any]:
    """Open the spec on a worker once: what it runs there (and proof it can), as `describe()` gives it."""
    import ray

    shipped = {file: ray.get(ref) for file, ref in blobs.items()}
    with tempfile.TemporaryDirectory(prefix="lvvit-describe-") as folder:
        with spec.materialize(shipped, folder).open() as predictor:
            described = predictor.describe()
    return {**described, "ray_node": ray.get_runtime_context().get_node_id()}


@dataclass
class RemoteParticipant:
    """A runtime that runs in Ray actors, as reports see it."""

    name: str
    preprocess_config: PreprocessConfig
    described: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return self.described


def _preprocess_of(spec: PredictorSpec) -> PreprocessConfig:
    if spec.runtime == REFERENCE and spec.preset is not None:
        return spec.preset.preprocess
    metadata = read_model_metadata(Path(spec.folder or ".") / spec.files[0].name)
    if metadata is None:
        raise EngineError(f"{spec.files[0].name}: has no kit metadata, so its preprocessing is unknown")
    return metadata.preprocess


@dataclass
class RayEngine:
    """Shards through Ray Data: a read stage, then one actor pool per runtime (see the module docstring)."""

    specs: dict[str, PredictorSpec]
    blobs: dict[str, dict[str, Any]]  # runtime -> file name -> object ref of its bytes
    config: PreprocessConfig
    address: str | None
    batch_size: int
    actors_per_runtime: int = 1
    reading: str | None = None  # the folder where readers note the image they are on
    _participants: list[RemoteParticipant] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        specs: Mapping[str, PredictorSpec],
        address: str | None = None,
        *,
        batch_size: int = 16,
        actors_per_runtime: int = 1,
    ) -> Iterator[RayEngine]:
        """Start Ray embedded (or join `address`), ship the models' bytes, check every runtime opens on a worker."""
        check_address(address)
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "runtime_env": {"env_vars": {"PYTHONPATH": KIT_ROOT}},  # workers import this very kit
            }
            if address is None:
                options["num_cpus"] = len(os.sched_getaffinity(0))
                options["object_store_memory"] = EMBEDDED_OBJECT_STORE_BYTES
            try:
                ray.init(address=address, **options)
            except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
                where = f"--ray-address {address}" if address else "an embedded Ray"
                raise EngineError(f"{where}: Ray did not start or join ({type(exc).__name__}: {exc})") from None
        stop = _stop_ray if started_here else (lambda: None)
        try:
            with stopped_on_interrupt(stop), tempfile.TemporaryDirectory(prefix="lvvit-ray-reading-") as reading:
                blobs = {name: {f: ray.put(b) for f, b in spec.read_files().items()} for name, spec in specs.items()}
                configs = {name: _preprocess_of(spec) for name, spec in specs.items()}
                first = next(iter(configs.values()))
                differs = [name for name, config in configs.items() if config != first]
                if differs:
                    raise EngineError(
                        f"{differs} preprocess otherwise than {next(iter(configs))}: inputs cannot be shared"
                    )
                describe = ray.remote(num_cpus=ACTOR_CPUS)(_describe_remote)
                described = ray.get([describe.remote(spec, blobs[name]) for name, spec in specs.items()])
                engine = cls(dict(specs), blobs, first, address, batch_size, actors_per_runtime, reading)
                engine._participants = [
                    RemoteParticipant(name, configs[name], {"name": name, **info, "spec": specs[name].describe()})
                    for name, info in zip(specs, described, strict=True)
                ]
                yield engine
        finally:
            if started_here:
                ray.shutdown()

    def participants(self) -> list[RemoteParticipant]:
        return list(self._participants)

    def describe(self) -> dict[str, Any]:
        ray = _import_ray()
        return {
            "name": "ray",
            "address": self.address or "embedded",
            "ray_version": ray.__version__,
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "batch_size": self.batch_size,
            "actors_per_runtime": self.actors_per_runtime,
            "actor_cpus": ACTOR_CPUS,
        }

    def _dataset(self, rows: list[dict[str, Any]]) -> Any:
        ray = _import_ray()
        ray.data.DataContext.get_current().execution_options.preserve_order = True  # rows come back in order
        ds = ray.data.from_items(rows)
        ds = ds.map_batches(
            ReadImages,
            fn_constructor_args=(self.config, self.reading),
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=READ_CPUS,
            max_restarts=READ_RESTARTS,
            max_task_retries=READ_RESTARTS,
        )
        for name, spec in self.specs.items():
            ds = ds.map_batches(
                SpecActor,
                fn_constructor_args=(name, spec, self.blobs[name]),
                batch_size=self.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self.actors_per_runtime),
                num_cpus=ACTOR_CPUS,
            )
        return ds.drop_columns(["pixels"])

    def __call__(self, pending: Sequence[tuple[int, list[Sample]]]) -> Iterator[ShardLogits]:
        if not pending:
            return
        rows = [
            {
                "shard": index,
                "path": str(s.path),
                "name": s.name,
                "label": -1 if s.label is None else s.label,
                "synthetic": -1 if s.synthetic is None else s.synthetic,
            }
            for index, samples in pending
            for s in samples
        ]
        expected = {index: len(samples) for index, samples in pending}
        by_path = {str(s.path): s for _, samples in pending for s in samples}
        current: list[dict[str, Any]] = []
        ray = _import_ray()
        try:
            for row in self._dataset(rows).iter_rows():
                if current and row["shard"] != current[0]["shard"]:
                    raise EngineError(f"Ray returned shard {row['shard']} before shard {current[0]['shard']} was whole")
                current.append(row)
                if len(current) == expected[int(row["shard"])]:
                    yield self._shard(current, by_path)
                    current = []
        except ray.exceptions.RayError as exc:
            killers = self._killers()
            if killers:
                raise EngineError(
                    f"{', '.join(killers)}: reading this image killed the Ray worker that read it "
                    f"{READ_RESTARTS + 1} times; remove it from the data set ({type(exc).__name__})"
                ) from None
            raise EngineError(f"the Ray run failed ({type(exc).__name__}: {str(exc)[:2000]})") from None

    def _killers(self) -> list[str]:
        """The images that readers noted last before they died (their process is gone)."""
        if self.reading is None:
            return []
        found = []
        for note in Path(self.reading).iterdir():
            if note.name.isdigit() and not process_alive(int(note.name)):
                with contextlib.suppress(OSError):
                    found.append(note.read_text(encoding="utf-8"))
        return sorted(set(found))

    def _shard(self, rows: list[dict[str, Any]], by_path: Mapping[str, Sample]) -> ShardLogits:
        index = int(rows[0]["shard"])
        kept = [r for r in rows if not r["error"]]
        failures = [Failure(r["name"], str(r["error"]).removeprefix(f"{r['path']}: ")) for r in rows if r["error"]]
        logits = {
            name: np.stack([r[f"logits:{name}"] for r in kept]) if kept else np.zeros((0, 0), np.float32)
            for name in self.specs
        }
        seconds = {name: float(sum(r[f"seconds:{name}"] for r in kept)) for name in self.specs}
        return ShardLogits(index, [by_path[r["path"]] for r in kept], failures, logits, seconds)
