"""After export: the full ONNX checker, then ONNX Runtime against native Paddle on realistic inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lvvit.metadata import INPUT_NAME
from lvvit.synthetic import synthetic_batch

from ..errors import ConversionError, VerificationError


@dataclass(frozen=True)
class Tolerance:
    """The gate: max abs error (None: not gated, as for int8) and the least top-1 agreement."""

    atol: float | None
    min_top1: float = 1.0

    def describe(self) -> str:
        bound = f"max abs {self.atol:g}" if self.atol is not None else "no max-abs bound"
        return f"{bound}, top-1 agreement >= {self.min_top1:.1%}"


@dataclass(frozen=True)
class DriftCheck:
    """ORT vs Paddle on one batch."""

    batch: int
    max_abs: float
    mean_abs: float
    top1_agreement: float  # fraction of samples whose arg-max agrees
    near_ties: int  # disagreements where Paddle's top-2 margin is within 2 * atol (not counted as failures)
    inputs: str = "synthetic"

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"batch {self.batch} ({self.inputs}): max abs {self.max_abs:.3g}, mean abs {self.mean_abs:.3g}, "
            f"top-1 agreement {self.top1_agreement:.1%}" + (f" ({self.near_ties} near-ties)" if self.near_ties else "")
        )

    def passes(self, tolerance: Tolerance) -> bool:
        if tolerance.atol is not None and self.max_abs > tolerance.atol:
            return False
        return self.top1_agreement + self.near_ties / self.batch >= tolerance.min_top1


def check_onnx_file(path: Path, name: str) -> None:
    """onnx.checker with full_check (shape inference included); raises ConversionError."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ConversionError(f"{name}: fails onnx.checker ({exc})") from exc


def paddle_logits(model, x: np.ndarray) -> np.ndarray:
    import paddle

    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def compare(session, model, x: np.ndarray, tolerance: Tolerance, inputs: str) -> DriftCheck:
    expected = paddle_logits(model, x)
    got = session.run(None, {INPUT_NAME: x})[0]
    if got.shape != expected.shape:
        raise VerificationError(f"ONNX output shape {got.shape} differs from Paddle's {expected.shape}")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    agree = got.argmax(1) == expected.argmax(1)
    top2 = np.sort(expected, axis=1)[:, -2:]
    tie = (top2[:, 1] - top2[:, 0]) <= 2 * (tolerance.atol or 0.0)
    return DriftCheck(
        len(x), float(diff.max()), float(diff.mean()), float(agree.mean()), int((~agree & tie).sum()), inputs
    )


def verify_export(
    path: Path,
    model,
    batches: list[int],
    tolerance: Tolerance,
    seed: int = 0,
    images: np.ndarray | None = None,
    name: str | None = None,
) -> list[DriftCheck]:
    """Check the file, then compare ORT (CPU) with Paddle per batch size; raise when outside `tolerance`.

    Inputs are synthetic photo-like images, or `images` (a preprocessed real batch) when given.
    `name` is what messages call the file (the target, while `path` is still its temporary copy).
    """
    import onnxruntime as ort

    name = name or path.name
    check_onnx_file(path, name)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if images is not None:
        checks = [compare(session, model, images, tolerance, "real images")]
    else:
        config = model.preset.preprocess
        checks = [
            compare(session, model, synthetic_batch(b, config, seed=seed + 100 * i), tolerance, "synthetic")
            for i, b in enumerate(batches)
        ]
    failed = [c for c in checks if not c.passes(tolerance)]
    if failed:
        raise VerificationError(
            f"{name}: ONNX Runtime disagrees with Paddle beyond {tolerance.describe()}:\n  "
            + "\n  ".join(c.line() for c in failed)
        )
    return checks
