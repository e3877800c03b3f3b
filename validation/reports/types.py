"""The four kinds of report as typed records: drift, accuracy, locate and bench.

Each is built by its run from `DriftStats`, `GateCheck` and the environment record, written with `to_json()` and
read back with `from_json()` (`from_json(to_json(r)) == r`); `bool(report)` is its verdict. The verdict is
computed in one place, `Report.failures`, with one meaning: a report passes when no runtime has a failed gate
check and no runtime's gated numbers are NaN or infinite.

The JSON carries `version` (`REPORT_VERSION`); a report written before the version existed reads as version 1,
and loads the same way (its missing fields take their defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from lvvit.common.gate import GateCheck
from lvvit.common.metrics import DriftStats
from validation.reports.record import (
    Record,
    by_name,
    drift_stats,
    failed_checks,
    gate_checks,
    is_number,
    item,
    mapping,
    number,
    numbers,
    optional,
    records,
)

REPORT_VERSION = 2  # 1: the untyped reports written before this field existed

_FROZEN = {"frozen": True, "kw_only": True}


# -- what ran ----------------------------------------------------------------------------------------------------


@dataclass(**_FROZEN)
class Environment(Record):
    """The machine, the package versions and the command that made the report (`validation.provenance`)."""

    created: str | None = None
    command: list[str] | None = None
    cwd: str | None = None
    python: str | None = None
    platform: str | None = None
    machine: str | None = None
    processor: str | None = None
    cpu_count: int | None = None
    packages: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


_FACTS = ("runtime", "engine", "device", "providers", "execution_devices", "precision", "threads", "onednn")


@dataclass(**_FROZEN)
class RuntimeRecord(Record):
    """What one participant ran: its runtime, provider or device, precision, versions and model files."""

    name: str | None = optional()
    runtime: str | None = optional()
    engine: str | None = optional()
    device: str | None = optional()
    providers: list[str] | None = optional()
    execution_devices: list[str] | None = optional()
    precision: str | None = optional()
    threads: int | None = optional()
    onednn: Any = optional()
    model: str | None = optional()
    model_files: dict[str, str] | None = optional()
    versions: dict[str, str] | None = optional()
    extra: dict[str, Any] = field(default_factory=dict)

    def facts(self) -> list[str]:
        shown = [(key, getattr(self, key)) for key in _FACTS]
        return [f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in shown if v is not None]


@dataclass(**_FROZEN)
class Preprocessing(Record):
    """The preprocessing every participant's inputs went through (`lvvit.presets.PreprocessConfig.to_dict`)."""

    input_size: int
    resize_size: int
    interpolation: str
    mean: list[float]
    std: list[float]
    crop_pct: float
    layout: str = "NCHW"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(**_FROZEN)
class ModelRecord(Record):
    """The model compared: preset, resolution, architecture and weights (or the seed of a random init)."""

    preset: str | None = None
    resolution: int | None = None
    arch: dict[str, Any] | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    weights_tensors_sha256: str | None = optional()  # older reports have the file's hash only
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _model(data: Any) -> ModelRecord | None:
    return ModelRecord.from_json(data) if mapping(data, "model") else None


def _model_json(model: ModelRecord | None) -> dict[str, Any]:
    return model.to_json() if model else {}


@dataclass(**_FROZEN)
class FileFailure(Record):
    name: str
    reason: str


@dataclass(**_FROZEN)
class BadLine(Record):
    line: int
    text: str
    reason: str


@dataclass(**_FROZEN)
class Inputs(Record):
    """The images: synthetic (`type` synthetic) or a folder (`type` folder in drift and locate; accuracy has none)."""

    type: str | None = optional()
    images: int | None = optional()
    seed: int | None = optional()
    generator: str | None = optional()
    root: str | None = optional()
    kind: str | None = optional()
    label_file: str | None = item(default=None)
    label_file_sha256: str | None = optional()
    classes: list[str] | None = item(default=None)
    bad_label_lines: list[BadLine] | None = optional(records(BadLine))
    skipped_files: list[FileFailure] | None = optional(records(FileFailure))
    limit: int | None = optional()
    images_listed: int | None = optional()
    images_evaluated: int | None = optional()
    images_used: int | None = optional()
    unreadable: list[FileFailure] | None = optional(records(FileFailure))
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.type == "synthetic":  # synthetic inputs have no label file or classes
            out = {k: v for k, v in out.items() if k not in ("label_file", "classes") or v is not None}
        return out


@dataclass(**_FROZEN)
class EngineRecord(Record):
    """Where the participants ran (`validation.engines`), and a cached reference when one stood in for Paddle."""

    name: str
    address: str | None = optional()
    reference: str | None = optional()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(**_FROZEN)
class ShardsRecord(Record):
    size: int
    count: int
    computed: int
    folder: str | None = None


@dataclass(**_FROZEN)
class LimitInfo(Record):
    kind: str  # "max" or "min"
    help: str


def limit_table(limits: dict[str, Any]) -> dict[str, LimitInfo]:
    """The limits a report lists, from `lvvit.common.gate.Limit`s."""
    return {name: LimitInfo(kind=limit.kind, help=limit.help) for name, limit in limits.items()}


@dataclass(**_FROZEN)
class Reference(Record):
    """The reference (native Paddle, or its cached logits)."""

    name: str
    describe: RuntimeRecord = item(RuntimeRecord.from_json)
    seconds: float | None = optional(number)
    images_per_second: float | None = optional(number)


# -- the reports -------------------------------------------------------------------------------------------------


class Report(Record):
    """What every kind shares: `kind`, `version`, the verdict; the runtimes it judges come from `judged`."""

    kind: ClassVar[str]
    version: int

    def judged(self) -> dict[str, tuple[list[GateCheck], dict[str, Any]]]:
        """Per judged participant: its gate checks, and the numbers that must be finite."""
        raise NotImplementedError

    def verdicts(self) -> dict[str, list[str]]:
        """Per judged participant, why it fails: its failed checks, and its numbers that are NaN or infinite.

        The one place a report's verdict is computed; an empty list is a pass.
        """
        verdicts = {}
        for name, (checks, values) in self.judged().items():
            reasons = [c.describe() for c in failed_checks(checks)]
            broken = [k for k, v in values.items() if not is_number(v)]
            verdicts[name] = reasons + ([f"{', '.join(broken)} not a number"] if broken else [])
        return verdicts

    def failures(self) -> list[str]:
        """One line per failing participant (what `validation.core.gate.raise_if_failed` raises)."""
        return [f"{name}: " + "; ".join(reasons) for name, reasons in self.verdicts().items() if reasons]

    def __bool__(self) -> bool:
        return not self.failures()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **super().to_json(), "passed": bool(self)}

    @classmethod
    def from_json(cls, data: Any) -> Any:
        data = dict(mapping(data, cls.__name__))
        if data.pop("kind", cls.kind) != cls.kind:
            raise ValueError(f"not a {cls.kind} report")
        data.pop("passed", None)  # derived: the verdict is computed again
        data.setdefault("version", 1)
        return super().from_json(data)

    def first_runtimes(self, count: int) -> Report:
        """This report with its first `count` runtimes (a figure of a report with hundreds draws the first ones)."""
        runtimes = getattr(self, "runtimes", None)
        if not isinstance(runtimes, dict) or len(runtimes) <= count:
            return self
        return replace(self, runtimes=dict(list(runtimes.items())[:count]))  # type: ignore[type-var]


_DRIFT_NUMBERS = ("max_abs", "mean_abs", "median_abs", "p99_abs", "max_rel", "mean_rel", "min_cosine", "mean_cosine",
                  "top1_agreement", "top5_overlap", "min_top5_overlap", "mean_kl", "max_kl")  # fmt: skip


@dataclass(**_FROZEN)
class DriftRuntime(Record):
    describe: RuntimeRecord = item(RuntimeRecord.from_json)
    outputs: dict[str, DriftStats] = item(by_name(drift_stats))
    gate: list[GateCheck] = item(gate_checks)
    tolerance: dict[str, float] | None = optional(numbers)  # its precision's own limits (older reports: none)
    seconds: float | None = item(number, default=None)
    images_per_second: float | None = item(number, default=None)


@dataclass(**_FROZEN)
class Comparison(Record):
    """What drift, accuracy and locate share: what ran, on which inputs, and the limits in force."""

    version: int = REPORT_VERSION
    environment: Environment = item(Environment.from_json)
    model: ModelRecord | None = item(_model, _model_json, default=None)
    preprocess: Preprocessing = item(Preprocessing.from_json)
    inputs: Inputs = item(Inputs.from_json)
    batch_size: int
    tolerance: dict[str, float] = item(numbers)
    limits: dict[str, LimitInfo] = item(by_name(LimitInfo.from_json))


@dataclass(**_FROZEN)
class RunRecord(Comparison):
    """What the drift and accuracy runs add: the engine and shards they ran in, and the output compared."""

    engine: EngineRecord | None = optional(EngineRecord.from_json)  # older reports: none
    shards: ShardsRecord | None = optional(ShardsRecord.from_json)
    output: str = "logits"


@dataclass(**_FROZEN)
class DriftReport(RunRecord, Report):
    """Native Paddle against each runtime on the same inputs: the drift of the output, gated per runtime."""

    kind: ClassVar[str] = "drift"
    reference: Reference = item(Reference.from_json)
    runtimes: dict[str, DriftRuntime] = item(by_name(DriftRuntime.from_json))

    def stats(self, runtime: str) -> DriftStats:
        return self.runtimes[runtime].outputs[self.output]

    def judged(self) -> dict[str, tuple[list[GateCheck], dict[str, Any]]]:
        return {
            name: (entry.gate, {key: getattr(self.stats(name), key) for key in _DRIFT_NUMBERS})
            for name, entry in self.runtimes.items()
        }


@dataclass(**_FROZEN)
class AccuracyEntry(Record):
    """Top-1/top-5 of one participant (`lvvit.common.metrics.accuracy_summary`); against Paddle for a runtime."""

    name: str | None = optional()  # the reference's
    images: int
    top1: float = item(number)
    top5: float = item(number)
    correct_top1: int
    correct_top5: int
    seconds: float | None = item(number, default=None)
    images_per_second: float | None = item(number, default=None)
    per_class_top1: list[float | None]
    per_class_images: list[int]
    top1_diff: float | None = optional(number)
    top5_diff: float | None = optional(number)
    agreement: float | None = optional(number)
    disagreements: int | None = optional()
    describe: RuntimeRecord = item(RuntimeRecord.from_json)
    gate: list[GateCheck] | None = optional(gate_checks)  # the reference has none


@dataclass(**_FROZEN)
class AccuracyReport(RunRecord, Report):
    """Top-1/top-5 of native Paddle and each runtime over labelled images, gated per runtime."""

    kind: ClassVar[str] = "accuracy"
    num_classes: int
    chance_top1: float = item(number)
    workers: int
    wall_seconds: float = item(number)
    reference: AccuracyEntry = item(AccuracyEntry.from_json)
    runtimes: dict[str, AccuracyEntry] = item(by_name(AccuracyEntry.from_json))

    def judged(self) -> dict[str, tuple[list[GateCheck], dict[str, Any]]]:
        return {
            name: (e.gate or [], {"top1": e.top1, "top5": e.top5, "agreement": e.agreement})
            for name, e in self.runtimes.items()
        }


# -- locate ------------------------------------------------------------------------------------------------------

_STAGE_NUMBERS = ("max_abs", "mean_abs", "p99_abs", "max_rel", "mean_rel", "min_cosine", "mean_cosine")


@dataclass(**_FROZEN)
class StageResult(Record):
    """One stage of one runtime: not mapped (with the reason), or its statistics, checks, doubt and growth."""

    mapped: bool
    reason: str | None = optional()
    tensor: str | None = optional()
    how: str | None = optional()
    shape: list[int] | None = optional()
    max_abs: float | None = optional(number)
    mean_abs: float | None = optional(number)
    p99_abs: float | None = optional(number)
    max_rel: float | None = optional(number)
    mean_rel: float | None = optional(number)
    min_cosine: float | None = optional(number)
    mean_cosine: float | None = optional(number)
    checks: list[GateCheck] | None = optional(gate_checks)
    over: bool | None = optional()
    doubtful: str | None = optional()  # why its mapping is doubtful (older reports: never)
    growth: float | None = optional(number)  # its mean rel over the stage before (older reports: none)
    jump: bool | None = optional()

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        return {**out, "doubtful": self.doubtful} if self.mapped else out  # a mapped stage says whether it is


@dataclass(**_FROZEN)
class Instrumentation(Record):
    """How much exposing the stages as outputs changed the runtime's output."""

    max_abs_change: float | None = item(number)
    max_rel_change: float | None = item(number)
    trusted: bool


@dataclass(**_FROZEN)
class LocateRuntime(Record):
    describe: RuntimeRecord = item(RuntimeRecord.from_json)
    stages: dict[str, StageResult] = item(by_name(StageResult.from_json))
    first_jump: str | None = None  # older reports: none
    first_over: str | None
    gate: list[GateCheck] = item(gate_checks)  # the failed checks of the first stage over the threshold
    doubtful: list[str] | None = optional()
    instrumentation: Instrumentation = item(Instrumentation.from_json)


@dataclass(**_FROZEN)
class ExportRecord(Record):
    file: str
    sha256: str
    metadata: dict[str, Any] | None = None
    precision: str | None = optional()  # the precision it computes in (older reports: none)


@dataclass(**_FROZEN)
class LocateReport(Comparison, Report):
    """Native Paddle against an export stage by stage on each runtime; gated on the first stage over the limits."""

    kind: ClassVar[str] = "locate"
    export: ExportRecord = item(ExportRecord.from_json)
    seconds: float | None = item(number, default=None)
    stages: list[str]
    tolerance_source: str | None = optional()
    noise_mean_rel: float | None = optional(number)
    jump_factor: float | None = optional(number)
    reference: Reference = item(Reference.from_json)
    runtimes: dict[str, LocateRuntime] = item(by_name(LocateRuntime.from_json))

    def judged(self) -> dict[str, tuple[list[GateCheck], dict[str, Any]]]:
        judged = {}
        for name, entry in self.runtimes.items():
            output = entry.stages.get("output")
            values = {k: getattr(output, k) for k in _STAGE_NUMBERS} if output and output.mapped else {}
            judged[name] = (entry.gate, values)
        return judged


# -- bench -------------------------------------------------------------------------------------------------------


@dataclass(**_FROZEN)
class Timing(Record):
    """One path at one batch size: median and interquartile range of its timed runs (`perf.bench.timing_stats`)."""

    median_ms: float = item(number)
    p25_ms: float = item(number)
    p75_ms: float = item(number)
    iqr_rel: float | None = item(number)
    min_ms: float = item(number)
    images_per_s: float = item(number)
    repeats: int
    x_floor: float | None = optional(number)  # batch 1: the median over the floor of its precision


@dataclass(**_FROZEN)
class PathDrift(Record):
    max_abs: float | None = item(number)
    mean_abs: float | None = item(number)
    top1_agreement: float | None = item(number)
    images: int
    reference_median_top2_margin: float | None = item(number)


def _timings(data: Any) -> dict[int, Timing]:
    """Timings by batch size (JSON turns the int keys into strings)."""
    return {int(b): Timing.from_json(t) for b, t in mapping(data, "timings").items()}


def _path_drift(data: Any) -> PathDrift | None:
    return PathDrift.from_json(data) if mapping(data, "drift") else None


@dataclass(**_FROZEN)
class BenchPathResult(Record):
    """One row of the bench: a runtime path, its timings per batch size and its drift, or why it did not run."""

    name: str
    what: str
    precision: str
    describe: RuntimeRecord = item(RuntimeRecord.from_json, default_factory=RuntimeRecord)
    timings: dict[int, Timing] = item(_timings, default_factory=dict)
    drift: PathDrift | None = item(_path_drift, lambda d: d.to_json() if d else {}, default=None)
    skipped: str | None = None


@dataclass(**_FROZEN)
class CpuRecord(Record):
    """The CPU the bench ran on and its arithmetic peak (`validation.perf.cpu_floor.CpuInfo.to_dict`)."""

    model_name: str
    cores: int
    clock_ghz: float
    fp32_macs_per_cycle: int | None
    cpuinfo: str | None = optional()  # where it was read (older reports: /proc/cpuinfo)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(**_FROZEN)
class FastestPick(Record):
    batch: int
    gate: float
    path: str
    images_per_s: float
    top1_agreement: float
    within_noise: list[str]


@dataclass(**_FROZEN)
class ImageSet(Record):
    folder: str
    count: int


@dataclass(**_FROZEN)
class BenchReport(Report):
    """Every runtime path side by side: timings, ratios against the baseline, drift and the arithmetic floors."""

    kind: ClassVar[str] = "bench"
    version: int = REPORT_VERSION
    preset: str
    resolution: int
    weights: str
    threads: int
    streams: int
    batch_sizes: list[int]
    warmup: int
    repeats: int
    settle_ms: int
    baseline: str
    user_file: dict[str, str] | None = None
    images: ImageSet = item(ImageSet.from_json)
    cpu: CpuRecord = item(CpuRecord.from_json)
    nominal_clock_ghz: float
    macs_per_image: int
    floor_ms_batch1: float | None = item(number)
    floor_ms_batch1_by_precision: dict[str, float | None] = item(numbers)
    floor_working: str
    floor_working_by_precision: dict[str, str]
    measured_sgemm_gfma_per_s: float = item(number)
    measured_sgemm_gfma_per_s_range: list[float]
    measured_floor_ms_batch1: float = item(number)
    paths: list[BenchPathResult] = item(records(BenchPathResult))
    fastest_meeting_gate: list[FastestPick] = item(records(FastestPick), default_factory=list)  # older: none

    def judged(self) -> dict[str, tuple[list[GateCheck], dict[str, Any]]]:
        """Each path that ran: no gate, but its timings and drift must be numbers."""
        judged: dict[str, tuple[list[GateCheck], dict[str, Any]]] = {}
        for path in self.paths:
            if path.skipped:
                continue
            values: dict[str, Any] = {f"b{b} median_ms": t.median_ms for b, t in path.timings.items()}
            if path.drift:
                values.update(max_abs=path.drift.max_abs, top1_agreement=path.drift.top1_agreement)
            judged[path.name] = ([], values)
        return judged

    def path(self, name: str) -> BenchPathResult | None:
        return next((p for p in self.paths if p.name == name), None)
