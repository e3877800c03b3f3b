"""After export: the full ONNX checker, then ONNX Runtime against native Paddle on realistic inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lvvit.metadata import INPUT_NAME
from lvvit.synthetic import synthetic_batch

from ..errors import ConversionError, VerificationError


@dataclass(frozen=True)
class DriftCheck:
    """ORT vs Paddle on one batch."""

    batch: int
    max_abs: float
    mean_abs: float
    top1_agreement: float  # fraction of samples whose arg-max agrees
    near_ties: int  # disagreements where Paddle's top-2 margin is within 2 * atol (not counted as failures)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"batch {self.batch}: max abs {self.max_abs:.3g}, mean abs {self.mean_abs:.3g}, "
            f"top-1 agreement {self.top1_agreement:.1%}" + (f" ({self.near_ties} near-ties)" if self.near_ties else "")
        )


def check_onnx_file(path: Path) -> None:
    """onnx.checker with full_check (shape inference included); raises ConversionError."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ConversionError(f"{path}: fails onnx.checker ({exc})") from exc


def compare_on_batch(session, model, batch: int, atol: float, seed: int) -> DriftCheck:
    import paddle

    x = synthetic_batch(batch, model.preset.preprocess, seed=seed)
    expected = model(paddle.to_tensor(x)).numpy()
    got = session.run(None, {INPUT_NAME: x})[0]
    if got.shape != expected.shape:
        raise VerificationError(f"ONNX output shape {got.shape} differs from Paddle's {expected.shape}")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    agree = got.argmax(1) == expected.argmax(1)
    top2 = np.sort(expected, axis=1)[:, -2:]
    tie = (top2[:, 1] - top2[:, 0]) <= 2 * atol
    return DriftCheck(batch, float(diff.max()), float(diff.mean()), float(agree.mean()), int((~agree & tie).sum()))


def verify_export(path: Path, model, batches: list[int], atol: float, seed: int = 0) -> list[DriftCheck]:
    """Check the file, then compare ORT (CPU) with Paddle at each batch size; raise over tolerance."""
    import onnxruntime as ort

    check_onnx_file(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    checks = [compare_on_batch(session, model, b, atol, seed + 100 * i) for i, b in enumerate(batches)]
    failed = [c for c in checks if c.max_abs > atol or c.top1_agreement + c.near_ties / c.batch < 1.0]
    if failed:
        raise VerificationError(
            f"{path.name}: ONNX Runtime disagrees with Paddle beyond max abs {atol:g} or on top-1:\n  "
            + "\n  ".join(c.line() for c in failed)
        )
    return checks
