"""The pages and the console summary of a locate report."""

from __future__ import annotations

from validation.reports.blocks import (
    Figures,
    failure_blocks,
    fmt_num,
    inputs_sentence,
    limit_rows,
    model_lines,
    reproduce_blocks,
)
from validation.reports.document import Block, Bullets, Heading, Paragraph, Table, Verdict
from validation.reports.types import LocateReport, LocateRuntime, StageResult

# How much exposing the stages as outputs may change a runtime's logits before its per-stage numbers are flagged.
MAX_INSTRUMENTATION_REL = 1e-4


def _jump_text(report: LocateReport, entry: LocateRuntime) -> str:
    jump = entry.first_jump
    if jump is None:
        factor = report.jump_factor if report.jump_factor is not None else 10
        return f"no stage jumps {factor:g}x over the one before (the error grew gradually)"
    stage = entry.stages[jump]
    return f"first divergent stage: {jump} (mean rel {stage.mean_rel:.3g}, {stage.growth:.3g}x the stage before)"


def _caution(report: LocateReport, runtime: str) -> str:
    entry = report.runtimes[runtime]
    unmapped = [s for s in report.stages if not entry.stages[s].mapped]
    tail = f"; not mapped: {', '.join(unmapped)}" if unmapped else ""
    if entry.doubtful:
        tail += f"; doubtful mapping, not blamed: {', '.join(entry.doubtful)}"
    effect = entry.instrumentation
    if not effect.trusted:
        tail += (
            f"; CAUTION: exposing the stages changed {runtime}'s output by up to {effect.max_abs_change:.3g} "
            f"(max rel {effect.max_rel_change:.3g} > {MAX_INSTRUMENTATION_REL:g}), so its per-stage numbers "
            "are those of a differently compiled graph"
        )
    return tail


def summary_line(report: LocateReport, runtime: str) -> str:
    entry = report.runtimes[runtime]
    stages = entry.stages
    tail = _caution(report, runtime)
    if entry.first_over is None:
        mapped = [s for s in report.stages if stages[s].mapped]
        worst = max((stages[s].max_rel or 0.0 for s in mapped), default=0.0)
        jump = f"; {_jump_text(report, entry)}" if entry.first_jump else ""
        return f"no stage over the threshold ({len(mapped)} stages compared, largest max rel {worst:.3g}){jump}{tail}"
    failed = "; ".join(c.describe() for c in entry.gate)
    return f"{_jump_text(report, entry)}; first stage over the threshold: {entry.first_over} ({failed}){tail}"


def _mark(entry: LocateRuntime, stage: str) -> str:
    s = entry.stages[stage]
    marks = []
    if stage == entry.first_jump:
        marks.append("first divergent")
    marks.append("FIRST over" if stage == entry.first_over else "over" if s.over else "")
    if s.doubtful:
        marks.append("doubtful mapping")
    return ", ".join(m for m in marks if m)


def _stage_row(entry: LocateRuntime, stage: str, s: StageResult) -> list[str]:
    if not s.mapped:
        return [stage, "-", "-", "-", "-", "-", "-", "not mapped", s.reason or ""]
    errors = [fmt_num(v) for v in (s.max_abs, s.mean_abs, s.max_rel, s.mean_rel)]
    growth = f"{s.growth:.3g}x" if s.growth is not None else "-"
    where = f"{s.tensor} ({s.how})" + (f"; doubtful: {s.doubtful}" if s.doubtful else "")
    cosine = "-" if s.min_cosine is None else f"{s.min_cosine:.9f}"
    return [stage, *errors, cosine, growth, _mark(entry, stage), where]


_STAGE_HEADER = ["stage", "max abs", "mean abs", "max rel", "mean rel", "min cosine", "x before", "verdict",
                 "tensor in the export"]  # fmt: skip
_STAGES_NOTE = (
    "Stages: stem = the patch embedding's output; blocks.i = the residual stream after block i; norm = the "
    "final LayerNorm; head / aux_head = the class and token heads; output = the logits. Each image's tensor "
    "is one row: max_rel is the largest per-image max error / max |Paddle value|, mean_rel = sum |error| / "
    "sum |Paddle value|, cosine per image. The export's stage tensors are added as graph outputs, which "
    "keeps the runtime from fusing across them."
)


def _jump_note(report: LocateReport) -> Paragraph:
    return Paragraph(
        f"x before = a stage's mean rel over the larger of the stage it reads (the heads read the norm, the "
        f"output both heads) and the rounding noise of {report.export.precision or 'its'} "
        f"({report.noise_mean_rel:g}); the first divergent stage is the first at {report.jump_factor:g}x "
        "or more, where a fault sits even if a later stage (a LayerNorm) carries its error over the "
        f"threshold. Limits: {report.tolerance_source or 'given'}. A stage is doubtful when its weight's "
        "shape differs from Paddle's or its tensor matches another stage of Paddle better than its own."
    )


def _header_blocks(report: LocateReport) -> tuple[str, list[Block]]:
    metadata = report.export.metadata or {}
    precision = metadata.get("precision", "unknown precision")
    preset = report.model.preset if report.model else "model"
    title = f"Where the drift comes from: {preset} export ({precision}) vs native Paddle"
    export = report.export
    exported = (
        f"export: {export.file} (sha256 {export.sha256[:16]}…, {precision}, {metadata.get('graph', 'unknown')} graph)"
    )
    blocks: list[Block] = [Heading(title, 1), Paragraph(inputs_sentence(report.inputs))]
    return title, [*blocks, Bullets([*model_lines(report.model), exported])]


def locate_blocks(report: LocateReport, figures: Figures) -> tuple[str, list[Block]]:
    """The Markdown/HTML blocks of a locate report (registered in `validation.reports.kinds`)."""
    title, blocks = _header_blocks(report)
    verdicts = report.verdicts()
    blocks.append(Heading("Verdict", 2))
    for name in report.runtimes:
        blocks.append(Verdict(not verdicts[name], f"{name}: {summary_line(report, name)}"))
    blocks.append(figures["stages"])
    for name, entry in report.runtimes.items():
        rows = [_stage_row(entry, stage, entry.stages[stage]) for stage in report.stages]
        blocks += [Heading(f"Per stage: {name}", 2), Table(_STAGE_HEADER, rows)]
    blocks.append(Heading("Threshold", 2))
    blocks.append(Table(["limit", "value", "meaning"], limit_rows(report.limits, report.tolerance)))
    blocks.append(Paragraph(_STAGES_NOTE))
    if report.jump_factor is not None:
        blocks.append(_jump_note(report))
    if report.inputs.type == "folder":
        blocks += failure_blocks(report.inputs)
    blocks += reproduce_blocks(report, report.reference, report.runtimes)
    return title, blocks
