"""After export: the full ONNX checker, then ONNX Runtime against native Paddle on realistic inputs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from lvvit.common.gate import DRIFT_LIMITS, check_gate
from lvvit.common.metrics import DriftStats, drift_stats
from lvvit.metadata import INPUT_NAME
from lvvit.synthetic import synthetic_batch
from runtimes import registry
from runtimes.probe import Probe, open_probe

from ..errors import ConversionError, ExportError, VerificationError


@dataclass(frozen=True)
class Tolerance:
    """The gate: max abs error (None: not gated, as for int8) and the least top-1 agreement (near-ties excused)."""

    atol: float | None
    min_top1: float = 1.0

    def __post_init__(self) -> None:
        # Written as `not (... <= ...)` so that NaN is refused too.
        if self.atol is not None and not (0.0 <= self.atol < math.inf):
            raise ExportError(f"the tolerance (--atol) must be a finite number >= 0, got {self.atol}")
        if not (0.0 <= self.min_top1 <= 1.0):
            raise ExportError(f"the least top-1 agreement must be within [0, 1], got {self.min_top1}")

    def limits(self) -> dict[str, float]:
        """The same gate in `lvvit.common.gate.DRIFT_LIMITS` terms."""
        limits = {"top1_agreement": self.min_top1}
        if self.atol is not None:
            limits["max_abs"] = self.atol
        return limits

    def describe(self) -> str:
        bound = f"max abs {self.atol:g}" if self.atol is not None else "no max-abs bound"
        return f"{bound}, top-1 agreement >= {self.min_top1:.1%}"


@dataclass(frozen=True)
class DriftCheck:
    """ORT vs Paddle on one batch: the numbers of `lvvit.common.metrics.DriftStats` the export gate reads."""

    batch: int
    max_abs: float
    mean_abs: float
    top1_agreement: float  # fraction of samples whose arg-max agrees
    near_ties: int  # disagreements where Paddle's top-2 margin is within 2 * atol (not counted as failures)
    inputs: str = "synthetic"

    @classmethod
    def of(cls, stats: DriftStats, inputs: str) -> DriftCheck:
        return cls(stats.samples, stats.max_abs, stats.mean_abs, stats.top1_agreement, stats.near_ties, inputs)

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"batch {self.batch} ({self.inputs}): max abs {self.max_abs:.3g}, mean abs {self.mean_abs:.3g}, "
            f"top-1 agreement {self.top1_agreement:.1%}" + (f" ({self.near_ties} near-ties)" if self.near_ties else "")
        )

    def passes(self, tolerance: Tolerance) -> bool:
        """Within the gate (`lvvit.common.gate`); a NaN or an infinity anywhere fails, even without a max-abs bound."""
        if not (math.isfinite(self.max_abs) and math.isfinite(self.mean_abs)):
            return False
        stats = {  # a NaN agreement makes a NaN disagreement count, which fails the gate
            "max_abs": self.max_abs,
            "samples": self.batch,
            "top1_disagreements": (1.0 - self.top1_agreement) * self.batch,
            "near_ties": self.near_ties,
        }
        return all(c.passed for c in check_gate(DRIFT_LIMITS, tolerance.limits(), stats))


def check_onnx_file(path: Path, name: str) -> None:
    """onnx.checker with full_check (shape inference included); raises ConversionError."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ConversionError(f"{name}: fails onnx.checker ({exc})") from exc


CHUNK = 8  # images per run when computing or checking logits: bounds the activations (lvvit_l_512: ~1 GB per 8)


@dataclass(frozen=True)
class Reference:
    """Inputs and native Paddle's logits for them, computed while the model is alive (`reference_logits`)."""

    inputs: np.ndarray
    logits: np.ndarray
    kind: str = "synthetic"  # or "real images"


def paddle_logits(model, x: np.ndarray) -> np.ndarray:
    """Paddle's logits for `x`, CHUNK images at a time."""
    import paddle

    with paddle.no_grad():
        return np.concatenate([model(paddle.to_tensor(x[i : i + CHUNK])).numpy() for i in range(0, len(x), CHUNK)])


def reference_logits(model, batches: list[int], seed: int = 0, images: np.ndarray | None = None) -> list[Reference]:
    """What the verification compares with: `images` (a preprocessed real batch) when given, else one synthetic
    photo-like batch per size in `batches`; each with Paddle's logits."""
    if images is not None:
        return [Reference(images, paddle_logits(model, images), "real images")]
    config = model.preset.preprocess
    inputs = [synthetic_batch(b, config, seed=seed + 100 * i) for i, b in enumerate(batches)]
    return [Reference(x, paddle_logits(model, x)) for x in inputs]


def compare(probe: Probe, reference: Reference, tolerance: Tolerance) -> DriftCheck:
    x = reference.inputs
    first = probe.outputs[0]
    got = np.concatenate([probe.run({INPUT_NAME: x[i : i + CHUNK]}, [first])[first] for i in range(0, len(x), CHUNK)])
    expected = reference.logits
    if got.shape != expected.shape:
        raise VerificationError(f"ONNX output shape {got.shape} differs from Paddle's {expected.shape}")
    return DriftCheck.of(drift_stats(expected, got, tie_abs=tolerance.atol), reference.kind)


def shipped_probe(graph: Path | onnx.ModelProto, runtime: str = "ort", precision: str = "f32") -> Probe:
    """`graph` as it ships, on ONNX Runtime's CPU provider with OrtPredictor's session settings, or on OpenVINO's
    CPU plugin as OpenVinoPredictor runs it (int8 where the file quantizes, `precision` for the rest; OpenVINO
    refuses a precision the CPU cannot run natively, `runtimes.ov.compile_checked`)."""
    return open_probe(graph, runtime, **({"precision": precision} if runtime == "openvino" else {}))


def runtime_label(runtime: str, precision: str = "f32") -> str:
    """How messages name where a file was measured: the registry's title ("ONNX Runtime"), with OpenVINO's
    precision when not f32 ("OpenVINO at bf16")."""
    return registry.get(runtime).label + registry.precision_note(runtime, precision)


def verify_export(
    path: Path,
    references: list[Reference],
    tolerance: Tolerance,
    name: str | None = None,
    runtime: str = "ort",
    precision: str = "f32",
) -> list[DriftCheck]:
    """Check the file, then compare it on `runtime` (ONNX Runtime by default; OpenVINO, at `precision`, for an
    int8 file whose accuracy control measured there) with Paddle's logits per reference; raise when outside
    `tolerance`.

    `name` is what messages call the file (the target, while `path` is still its temporary copy). Paddle's
    model is not needed here: its logits come with the references, so the model can be gone before the
    runtime loads its own copy of the weights.
    """
    if runtime == "ort":
        try:
            import onnxruntime  # noqa: F401  (checked here: the message names the export's own way out)
        except ImportError as exc:  # the base install leaves the choice of ONNX Runtime wheel to the extras
            raise ExportError(
                f"verifying {name or path.name} needs ONNX Runtime: pip install 'lvvit-deploy[cpu]' (or [gpu], not "
                f"both), or export with --no-verify ({exc})"
            ) from exc

    name = name or path.name
    check_onnx_file(path, name)
    with shipped_probe(path, runtime, precision) as probe:
        checks = [compare(probe, reference, tolerance) for reference in references]
    failed = [c for c in checks if not c.passes(tolerance)]
    if failed:
        raise VerificationError(
            f"{name}: {runtime_label(runtime, precision)} disagrees with Paddle beyond {tolerance.describe()}:\n  "
            + "\n  ".join(c.line() for c in failed),
            failed,
        )
    return checks
