"""The pages and the console summary of a locate report."""

from __future__ import annotations

from typing import Any

from lvvit.common.gate import GateCheck
from validation.reports import plots
from validation.reports.blocks import (
    failure_blocks,
    figure,
    fmt_num,
    inputs_sentence,
    limit_rows,
    model_lines,
    reproduce_blocks,
)
from validation.reports.document import Bullets, Heading, Paragraph, Table, Verdict

# How much exposing the stages as outputs may change a runtime's logits before its per-stage numbers are flagged.
MAX_INSTRUMENTATION_REL = 1e-4


def _jump_text(report: dict[str, Any], entry: dict[str, Any]) -> str:
    jump = entry.get("first_jump")
    if jump is None:
        return f"no stage jumps {report.get('jump_factor', 10):g}x over the one before (the error grew gradually)"
    stage = entry["stages"][jump]
    return f"first divergent stage: {jump} (mean rel {stage['mean_rel']:.3g}, {stage['growth']:.3g}x the stage before)"


def summary_line(report: dict[str, Any], runtime: str) -> str:
    entry = report["runtimes"][runtime]
    stages = entry["stages"]
    unmapped = [s for s in report["stages"] if not stages[s]["mapped"]]
    mapped = len(report["stages"]) - len(unmapped)
    tail = f"; not mapped: {', '.join(unmapped)}" if unmapped else ""
    doubtful = entry.get("doubtful") or []
    if doubtful:
        tail += f"; doubtful mapping, not blamed: {', '.join(doubtful)}"
    effect = entry["instrumentation"]
    if not effect["trusted"]:
        tail += (
            f"; CAUTION: exposing the stages changed {runtime}'s output by up to {effect['max_abs_change']:.3g} "
            f"(max rel {effect['max_rel_change']:.3g} > {MAX_INSTRUMENTATION_REL:g}), so its per-stage numbers "
            "are those of a differently compiled graph"
        )
    first = entry["first_over"]
    if first is None:
        worst = max((stages[s]["max_rel"] for s in report["stages"] if stages[s]["mapped"]), default=0.0)
        jump = f"; {_jump_text(report, entry)}" if entry.get("first_jump") else ""
        return f"no stage over the threshold ({mapped} stages compared, largest max rel {worst:.3g}){jump}{tail}"
    failed = "; ".join(GateCheck.from_dict(c).describe() for c in entry["gate"])
    return f"{_jump_text(report, entry)}; first stage over the threshold: {first} ({failed}){tail}"


def _mark(entry: dict[str, Any], stage: str) -> str:
    s = entry["stages"][stage]
    marks = []
    if stage == entry.get("first_jump"):
        marks.append("first divergent")
    marks.append("FIRST over" if stage == entry["first_over"] else "over" if s["over"] else "")
    if s.get("doubtful"):
        marks.append("doubtful mapping")
    return ", ".join(m for m in marks if m)


# -- the pages ---------------------------------------------------------------------------------------------------


def locate_blocks(report: dict[str, Any]) -> tuple[str, list[Any]]:
    """The Markdown/HTML blocks of a locate report (registered in `validation.reports.write`)."""

    model = report.get("model") or {}
    export = report["export"]
    precision = (export.get("metadata") or {}).get("precision", "unknown precision")
    title = f"Where the drift comes from: {model.get('preset', 'model')} export ({precision}) vs native Paddle"
    blocks: list[Any] = [Heading(title, 1), Paragraph(inputs_sentence(report["inputs"]))]
    graph = (export.get("metadata") or {}).get("graph", "unknown")
    exported = f"export: {export['file']} (sha256 {export['sha256'][:16]}…, {precision}, {graph} graph)"
    blocks.append(Bullets([*model_lines(model), exported]))
    blocks.append(Heading("Verdict", 2))
    for name, entry in report["runtimes"].items():
        blocks.append(Verdict(entry["first_over"] is None, f"{name}: {summary_line(report, name)}"))
    blocks.append(figure("stages", "Relative error per stage along the network", plots.stage_growth, report))
    header = ["stage", "max abs", "mean abs", "max rel", "mean rel", "min cosine", "x before", "verdict",
              "tensor in the export"]  # fmt: skip
    for name, entry in report["runtimes"].items():
        blocks.append(Heading(f"Per stage: {name}", 2))
        rows = []
        for stage in report["stages"]:
            s = entry["stages"][stage]
            if not s["mapped"]:
                rows.append([stage, "-", "-", "-", "-", "-", "-", "not mapped", s["reason"]])
                continue
            errors = [fmt_num(s[key]) for key in ("max_abs", "mean_abs", "max_rel", "mean_rel")]
            growth = f"{s['growth']:.3g}x" if "growth" in s else "-"
            where = f"{s['tensor']} ({s['how']})" + (f"; doubtful: {s['doubtful']}" if s.get("doubtful") else "")
            rows.append([stage, *errors, f"{s['min_cosine']:.9f}", growth, _mark(entry, stage), where])
        blocks.append(Table(header, rows))
    blocks.append(Heading("Threshold", 2))
    blocks.append(Table(["limit", "value", "meaning"], limit_rows(report)))
    blocks.append(
        Paragraph(
            "Stages: stem = the patch embedding's output; blocks.i = the residual stream after block i; norm = the "
            "final LayerNorm; head / aux_head = the class and token heads; output = the logits. Each image's tensor "
            "is one row: max_rel is the largest per-image max error / max |Paddle value|, mean_rel = sum |error| / "
            "sum |Paddle value|, cosine per image. The export's stage tensors are added as graph outputs, which "
            "keeps the runtime from fusing across them."
        )
    )
    if "jump_factor" in report:
        blocks.append(
            Paragraph(
                f"x before = a stage's mean rel over the larger of the stage it reads (the heads read the norm, the "
                f"output both heads) and the rounding noise of {report['export'].get('precision', 'its')} "
                f"({report['noise_mean_rel']:g}); the first divergent stage is the first at {report['jump_factor']:g}x "
                "or more, where a fault sits even if a later stage (a LayerNorm) carries its error over the "
                f"threshold. Limits: {report.get('tolerance_source', 'given')}. A stage is doubtful when its weight's "
                "shape differs from Paddle's or its tensor matches another stage of Paddle better than its own."
            )
        )
    if report["inputs"]["type"] == "folder":
        blocks += failure_blocks(report["inputs"])
    blocks += reproduce_blocks(report)
    return title, blocks
