"""The predictor interface: `predict`, `logits`, `describe`, `close`, and one private `_logits_impl` per runtime.

Polygraphy's runner pattern: the public methods check their inputs, batch,
pad and label; a backend implements only `_logits_impl` (one NCHW float32
chunk in, logits out) and `_runtime_details` (what actually runs, for reports).
Backends must make `_logits_impl` safe to call from several threads at once.

Streams: a predictor opened with `streams=N > 1` splits a batch of at least N
images into N parts run at once, each on threads/N. A smaller batch cannot
keep every stream busy, so it runs whole through `_logits_whole`, which a
backend points at a second session that has all the threads: one image is then
as fast as with `streams=1`, at the cost of that session's memory (about one
more copy of the weights).
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Union

import numpy as np
from PIL import Image

from lvvit.common.versions import tool_versions
from lvvit.errors import ImageError
from lvvit.preprocess import ENCODED_TYPES, ImageInput, image_name, is_file_like, preprocess, preprocess_batch
from lvvit.presets import PreprocessConfig

from .errors import ConfigurationError, InputError, OutputError, PredictorClosedError
from .labels import Labels, resolve_labels
from .model_info import ModelInfo
from .prediction import ImageResult, Prediction, top_k

Images = Union[ImageInput, Iterable[ImageInput]]  # noqa: UP007 (a runtime alias)
LabelsArg = Union[Sequence[str], str, Path, None]  # noqa: UP007

DEFAULT_BATCH_SIZE = 8


def _chunks(images: Images, size: int) -> Iterator[list[ImageInput]]:
    """Lists of up to `size` images from one image, a list, or any iterable (consumed lazily)."""
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype != np.uint8:
        raise InputError(
            f"predict() takes images (paths, PIL images, HxWxC uint8 arrays, encoded bytes, binary files); got a "
            f"{images.dtype} array of shape "
            f"{images.shape}: use logits() for a ready NCHW float32 batch"
        )
    # one image, not an iterable of them (bytes iterate as ints, a file as its lines)
    if isinstance(images, (str, Path, Image.Image, np.ndarray, *ENCODED_TYPES)) or is_file_like(images):
        images = [images]
    iterator = iter(images)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def check_threads_and_streams(threads: int | None, streams: int, default_threads: int | None = None) -> int:
    """Validate `threads` (None: `default_threads`, or the runtime's default) and `streams` against it.

    Returns the threads each stream gets (0: the runtime's default).
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigurationError(f"threads must be a positive integer or None, got {threads!r}")
    threads = threads or default_threads
    total = threads or 0
    if not isinstance(streams, int) or streams < 1 or (total and streams > total):
        raise ConfigurationError(f"streams must be between 1 and threads ({threads}), got {streams!r}")
    return total // streams if total else 0


def _source(image: ImageInput) -> str | None:
    """A path, or a file-like object's name; None for an image in memory."""
    if isinstance(image, (str, Path)) or (is_file_like(image) and isinstance(getattr(image, "name", None), str)):
        return image_name(image)
    return None


class Predictor(abc.ABC):
    """An image classifier behind one runtime. Use as a context manager, or call `close()`."""

    runtime: ClassVar[str] = "abstract"

    def __init__(
        self, info: ModelInfo, *, batch_size: int | None = None, labels: LabelsArg = None, streams: int = 1
    ) -> None:
        self.info = info
        self.batch_size = self._check_batch_size(batch_size)
        if streams > 1 and info.batch is not None:
            raise ConfigurationError(
                f"{info.source}: a fixed batch of {info.batch} cannot be split into {streams} streams"
            )
        self.streams = streams
        # Streams: a batch runs as `streams` parts at once, each on its share of the threads.
        self._executor = ThreadPoolExecutor(streams, thread_name_prefix="stream") if streams > 1 else None
        declared = info.metadata.labels if info.metadata is not None else None
        self._labels = resolve_labels(labels, info.num_classes, declared) if info.num_classes else None
        self._labels_arg = labels
        self._closed = False
        # close() waits for the calls in flight, and no call starts after it: see _in_use
        self._state = threading.Condition()
        self._active = 0

    # -- public interface --------------------------------------------------------------------------------------

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing this predictor applies in `predict` (from the metadata or the given preset)."""
        return self.info.preprocess

    def predict(self, images: Images, topk: int = 5) -> list[Prediction]:
        """Top-`topk` classes of each image (a path, PIL image, HWC uint8 array, encoded bytes, a binary file-like
        object, or a list/iterable of them).

        Images are read and preprocessed `batch_size` at a time (an iterable is
        consumed lazily); an unreadable image raises `ImageError` naming it
        (`predict_each` keeps going instead).
        """
        self._check_topk(topk)
        results: list[Prediction] = []
        with self._in_use():
            for chunk in _chunks(images, self.batch_size):
                logits = self._run(preprocess_batch(chunk, self.info.preprocess))
                results.extend(self.top_k(logits, topk, [_source(image) for image in chunk]))
        return results

    def predict_each(self, images: Images, topk: int = 5) -> list[ImageResult]:
        """Like `predict`, but one unreadable image does not lose the others: one `ImageResult` per image, in
        order, holding its prediction or the `ImageError` message that names it."""
        self._check_topk(topk)
        results: list[ImageResult] = []
        with self._in_use():
            for chunk in _chunks(images, self.batch_size):
                inputs: list[np.ndarray | None] = []
                errors: list[str | None] = []
                for image in chunk:
                    try:
                        inputs.append(preprocess(image, self.info.preprocess))
                        errors.append(None)
                    except ImageError as exc:
                        inputs.append(None)
                        errors.append(str(exc))
                good = [x for x in inputs if x is not None]
                predictions: list[Prediction] = []
                if good:
                    sources = [_source(image) for image, x in zip(chunk, inputs, strict=True) if x is not None]
                    predictions = self.top_k(self._run(np.stack(good)), topk, sources)
                found = iter(predictions)
                results.extend(
                    ImageResult(_source(image), None if error else next(found), error)
                    for image, error in zip(chunk, errors, strict=True)
                )
        return results

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits [N, classes] for a ready NCHW float32 batch (preprocessed as `preprocess_config` says).

        Raises `InputError` for a wrong type, dtype or shape (naming the expected
        one) and for NaN/inf values. Any N >= 1; runs `batch_size` at a time.
        """
        x = self._check_batch(batch)
        with self._in_use():
            return np.concatenate([self._run(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def top_k(self, logits: np.ndarray, topk: int = 5, sources: Sequence[str | None] | None = None) -> list[Prediction]:
        """The top-`topk` classes of each row of ready `logits` (from `logits()`), with this predictor's labels."""
        self._check_topk(topk)
        k = min(topk, logits.shape[1])
        return top_k(logits, k, self._labels_for(logits), list(sources) if sources else [None] * len(logits))

    def describe(self) -> dict[str, Any]:
        """What runs, for validation reports: runtime, device, providers, precision, model, preprocessing, versions."""
        meta = self.info.metadata
        details = self._runtime_details()
        versions = tool_versions()
        versions.update({"numpy": np.__version__, "pillow": Image.__version__})
        versions.update(details.pop("versions", {}))
        described: dict[str, Any] = {
            "runtime": self.runtime,
            "model": self.info.source,
            "preset": meta.preset if meta is not None else None,
            "graph": meta.graph if meta is not None else None,
            "weights": meta.weights if meta is not None else None,
            "input": {"name": self.info.input_name, "shape": self.info.input_shape, "dtype": "float32"},
            "output": {"name": self.info.output_name, "num_classes": self.info.num_classes},
            "preprocess": {**self.info.preprocess.to_dict(), "from": self.info.preprocess_origin},
            "labels": self._labels.source if self._labels is not None else None,
            "batch_size": self.batch_size,
        }
        if meta is not None and meta.float_stages:  # int8 with accuracy control: what it kept in float
            described["float_stages"] = list(meta.float_stages)
        if self.streams > 1:
            described["stream_policy"] = (
                f"batches of {self.streams}+ images run as {self.streams} parts at once, each on its share of the "
                "threads; smaller batches run whole on a session with all the threads"
            )
        described.update(details)  # the runtime's facts (device, providers, precision...) and its overrides
        described["versions"] = versions
        return described

    def close(self) -> None:
        """Release the runtime's session once the calls in flight have finished; later calls raise
        `PredictorClosedError`."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._state.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._release()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.source!r}, {self._runtime_summary()})"

    # -- what a backend provides -------------------------------------------------------------------------------

    @abc.abstractmethod
    def _logits_impl(self, batch: np.ndarray) -> np.ndarray:
        """Logits for one C-contiguous float32 chunk of at most `batch_size` (exactly the fixed batch, if any)."""

    @abc.abstractmethod
    def _runtime_details(self) -> dict[str, Any]:
        """Runtime-specific facts for `describe()`: device, providers, precision, threads, `versions`."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Free the session; called once, by `close()`."""

    def _runtime_summary(self) -> str:
        details = self._runtime_details()
        return ", ".join(f"{k}={details[k]!r}" for k in ("device", "precision") if k in details)

    # -- shared checks -----------------------------------------------------------------------------------------

    def _check_topk(self, topk: Any) -> None:
        if not isinstance(topk, int) or topk < 1 or (self.info.num_classes and topk > self.info.num_classes):
            raise ConfigurationError(f"topk must be an integer in 1..{self.info.num_classes or 'classes'}, got {topk}")

    def _check_open(self) -> None:
        if self._closed:
            raise PredictorClosedError(f"{type(self).__name__} for {self.info.source} is closed")

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        """Count a call in flight, so that `close()` from another thread waits for it instead of pulling the
        session from under it."""
        with self._state:
            self._check_open()
            self._active += 1
        try:
            yield
        finally:
            with self._state:
                self._active -= 1
                if not self._active:
                    self._state.notify_all()

    def _check_batch_size(self, batch_size: int | None) -> int:
        fixed = self.info.batch
        if batch_size is None:
            return fixed or DEFAULT_BATCH_SIZE
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}")
        if fixed is not None and batch_size != fixed:
            raise ConfigurationError(
                f"{self.info.source}: the model has a fixed batch of {fixed}; batch_size={batch_size} cannot run "
                "(leave batch_size out, or export with a dynamic batch)"
            )
        return batch_size

    def _check_batch(self, batch: Any) -> np.ndarray:
        expected = f"[N, 3, {self.info.preprocess.input_size}, {self.info.preprocess.input_size}] float32 (NCHW)"
        if not isinstance(batch, np.ndarray):
            raise InputError(f"logits() takes a numpy array of shape {expected}, got a {type(batch).__name__}")
        size = self.info.preprocess.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, size, size) or batch.shape[0] == 0:
            hint = "; it looks like NHWC, transpose to NCHW" if batch.ndim == 4 and batch.shape[3] == 3 else ""
            raise InputError(f"expected shape {expected}, got {list(batch.shape)}{hint}")
        if batch.dtype != np.float32:
            raise InputError(f"expected dtype float32 for shape {expected}, got {batch.dtype} (convert explicitly)")
        finite = np.isfinite(batch)
        if not finite.all():
            bad = np.flatnonzero(~finite.reshape(len(batch), -1).all(axis=1)).tolist()
            nans, infs = int(np.isnan(batch).sum()), int(np.isinf(batch).sum())
            raise InputError(
                f"the batch holds {nans} NaN and {infs} inf values (samples {bad[:10]}{'...' if len(bad) > 10 else ''})"
                "; a model input must be finite"
            )
        return np.ascontiguousarray(batch)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One chunk through the runtime, padded to a fixed batch with zeros; checks the output."""
        n = len(x)
        fixed = self.info.batch
        if fixed is not None and n < fixed:
            x = np.concatenate([x, np.zeros((fixed - n, *x.shape[1:]), dtype=x.dtype)])
        out = np.asarray(self._infer(x))
        expected_rows = fixed or n
        classes = self.info.num_classes
        if out.ndim != 2 or out.shape[0] != expected_rows or (classes is not None and out.shape[1] != classes):
            raise OutputError(
                f"{self.runtime} returned logits of shape {list(out.shape)} for a batch of {len(x)}; "
                f"expected [{expected_rows}, {classes or 'classes'}]"
            )
        out = out[:n]
        if not np.isfinite(out).all():
            bad = np.flatnonzero(~np.isfinite(out).all(axis=1)).tolist()
            raise OutputError(
                f"{self.runtime} returned NaN/inf logits for samples {bad} of a finite batch "
                f"({self._runtime_summary()}); a reduced precision may have overflowed"
            )
        return out.astype(np.float32, copy=False)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        if self._executor is None:
            return self._logits_impl(x)
        if len(x) < self.streams:  # too small to keep every stream busy: whole, on all the threads
            return self._logits_whole(x)
        parts = np.array_split(x, self.streams)
        return np.concatenate(list(self._executor.map(self._logits_impl, parts)))  # runtimes release the GIL

    def _logits_whole(self, batch: np.ndarray) -> np.ndarray:
        """A batch smaller than `streams`; backends with streams override it with an all-threads session."""
        return self._logits_impl(batch)

    def _labels_for(self, logits: np.ndarray) -> Labels:
        if self._labels is None:  # the graph did not say how many classes: decide from the first output
            self._labels = resolve_labels(self._labels_arg, logits.shape[1], None)
        return self._labels
