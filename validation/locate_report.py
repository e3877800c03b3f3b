"""The pages and the console summary of a locate report."""

from __future__ import annotations

from typing import Any

from lvvit.comparison import GateCheck

from . import plots
from .document import Bullets, Heading, Paragraph, Table, Verdict
from .report_blocks import (
    failure_blocks,
    figure,
    fmt_num,
    inputs_sentence,
    limit_rows,
    model_lines,
    reproduce_blocks,
)

# How much exposing the stages as outputs may change a runtime's logits before its per-stage numbers are flagged.
MAX_INSTRUMENTATION_REL = 1e-4

def summary_line(report: dict[str, Any], runtime: str) -> str:
    entry = report["runtimes"][runtime]
    stages = entry["stages"]
    unmapped = [s for s in report["stages"] if not stages[s]["mapped"]]
    mapped = len(report["stages"]) - len(unmapped)
    tail = f"; not mapped: {', '.join(unmapped)}" if unmapped else ""
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
        return f"no stage over the threshold ({mapped} stages compared, largest max rel {worst:.3g}){tail}"
    failed = "; ".join(GateCheck.from_dict(c).describe() for c in entry["gate"])
    return f"first stage over the threshold: {first} ({failed}){tail}"


# -- the pages ---------------------------------------------------------------------------------------------------


def locate_blocks(report: dict[str, Any]) -> tuple[str, list[Any]]:
    """The Markdown/HTML blocks of a locate report (registered in `validation.report`)."""

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
    header = ["stage", "max abs", "mean abs", "max rel", "mean rel", "min cosine", "over", "tensor in the export"]
    for name, entry in report["runtimes"].items():
        blocks.append(Heading(f"Per stage: {name}", 2))
        rows = []
        for stage in report["stages"]:
            s = entry["stages"][stage]
            if not s["mapped"]:
                rows.append([stage, "-", "-", "-", "-", "-", "not mapped", s["reason"]])
                continue
            mark = "FIRST" if stage == entry["first_over"] else ("yes" if s["over"] else "")
            errors = [fmt_num(s[key]) for key in ("max_abs", "mean_abs", "max_rel", "mean_rel")]
            rows.append([stage, *errors, f"{s['min_cosine']:.9f}", mark, f"{s['tensor']} ({s['how']})"])
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
    if report["inputs"]["type"] == "folder":
        blocks += failure_blocks(report["inputs"])
    blocks += reproduce_blocks(report)
    return title, blocks
