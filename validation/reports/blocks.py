"""The pages' blocks of the drift and accuracy reports, and the formatting and sections every report kind shares.

Each kind's pages function takes its typed report (`validation.reports.types`) and its figures, already drawn
behind the guard (`validation.reports.kinds`), and returns the title and the blocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from validation.reports.document import Block, Bullets, Code, Heading, Paragraph, Table, Verdict
from validation.reports.types import (
    AccuracyEntry,
    AccuracyReport,
    Comparison,
    DriftReport,
    Inputs,
    LimitInfo,
    ModelRecord,
    Reference,
    RunRecord,
    RuntimeRecord,
)

_SHOWN_FILES = 200  # unreadable/skipped files listed on the pages (the JSON has all)
Figures = Mapping[str, Block]  # a kind's figures by name: each a Figure, or the paragraph saying why it is missing


def fmt_num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _speed(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# -- shared sections ---------------------------------------------------------------------------------------------


def model_lines(model: ModelRecord | None) -> list[str]:
    if not model:
        return []
    lines = [f"preset: {model.preset} at {model.resolution}px"]
    if model.arch:
        lines.append("architecture: " + ", ".join(f"{k}={v}" for k, v in model.arch.items()))
    if model.weights:
        identity = model.weights_tensors_sha256  # older reports have the file's hash only
        tensors = f"; tensors_sha256 {identity}, the weights' identity" if identity else ""
        lines.append(f"weights: {model.weights} (file sha256 {model.weights_sha256}{tensors})")
    else:
        lines.append(f"weights: NONE, a deterministic random initialisation (seed {model.seed})")
    return lines


def _run_lines(report: RunRecord) -> list[str]:
    """How the run was executed: the engine, the shards, and a cached reference (older reports have none)."""
    engine, shards = report.engine, report.shards
    if not engine or not shards:
        return []
    where = f" at {engine.address}" if engine.address else ""
    lines = [
        f"engine: {engine.name}{where}; {shards.count} shard(s) of {shards.size} images, "
        f"{shards.computed} computed in this run"
        + (f", the others resumed from {shards.folder}" if shards.computed < shards.count else "")
    ]
    if engine.reference:
        lines.append(f"reference: native Paddle's logits {engine.reference} (Paddle was not run)")
    return lines


def about_blocks(model: ModelRecord | None, extra: list[str]) -> list[Block]:
    lines = model_lines(model) + extra
    return [Bullets(lines)] if lines else []


def _runtime_row(name: str, described: RuntimeRecord) -> list[str]:
    files = described.model_files or {}
    hashes = "; ".join(f"{Path(p).name} sha256 {h[:16]}…" for p, h in files.items()) or (described.model or "")
    versions = described.versions or {}
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if k not in ("python", "numpy", "pillow"))
    return [name, "; ".join(described.facts()), hashes, shown]


def _file_table(files: list, what: str) -> list[Block]:
    return [Paragraph(what), Table(["file", "why"], [[f.name, f.reason] for f in files[:_SHOWN_FILES]])]


def failure_blocks(inputs: Inputs) -> list[Block]:
    unreadable, skipped = inputs.unreadable or [], inputs.skipped_files or []
    bad_lines = inputs.bad_label_lines or []
    blocks: list[Block] = [Heading("Files left out", 2)]
    if not (unreadable or skipped or bad_lines):
        return [*blocks, Paragraph("None: every listed image was read.")]
    if unreadable:
        blocks += _file_table(unreadable, f"{len(unreadable)} unreadable image(s), left out for every runtime:")
    if bad_lines:
        blocks.append(Paragraph(f"{len(bad_lines)} bad line(s) of the label file, skipped (--skip-bad-lines):"))
        rows = [[str(b.line), b.text, b.reason] for b in bad_lines[:_SHOWN_FILES]]
        blocks.append(Table(["line", "text", "why"], rows))
    if skipped:
        blocks += _file_table(skipped, f"{len(skipped)} file(s) without an image suffix, not read:")
    if max(len(unreadable), len(bad_lines), len(skipped)) > _SHOWN_FILES:
        blocks.append(Paragraph(f"(lists cut at {_SHOWN_FILES}; the JSON report has every entry)"))
    return blocks


def reproduce_blocks(report: Comparison, reference: Reference | AccuracyEntry, runtimes: Mapping) -> list[Block]:
    """The runtimes' table, the preprocessing and how to reproduce the run (drift, accuracy and locate)."""
    env, pre = report.environment, report.preprocess
    rows = [_runtime_row(reference.name or "reference", reference.describe)]
    rows += [_runtime_row(name, entry.describe) for name, entry in runtimes.items()]
    blocks: list[Block] = [Heading("Runtimes", 2), Table(["runtime", "what runs", "model files", "versions"], rows)]
    blocks.append(Heading("Preprocessing (identical inputs for every runtime)", 2))
    blocks.append(
        Paragraph(
            f"RGB, resize the shorter side to {pre.resize_size} ({pre.interpolation}), center crop "
            f"{pre.input_size}x{pre.input_size}, scale to [0, 1], normalise with mean {pre.mean} and "
            f"std {pre.std}, {pre.layout} float32 (crop_pct {pre.crop_pct})."
        )
    )
    blocks.append(Heading("Reproduce", 2))
    if env.command:
        blocks.append(Code(" ".join(env.command)))
    packages = ", ".join(f"{k} {v}" for k, v in env.packages.items())
    blocks.append(
        Bullets(
            [
                f"created {env.created} in {env.cwd}",
                f"Python {env.python} on {env.platform} ({env.machine}, {env.cpu_count} CPUs)",
                f"packages: {packages}",
            ]
        )
    )
    return blocks


def gate_verdicts(report: DriftReport | AccuracyReport, what: str) -> list[Block]:
    """One verdict per runtime, from the report's one verdict (`Report.verdicts`)."""
    verdicts = report.verdicts()
    blocks: list[Block] = []
    for name, entry in report.runtimes.items():
        detail = "; ".join(c.describe() for c in entry.gate or []) or "no limits set"
        broken = [reason for reason in verdicts[name] if reason.endswith("not a number")]
        blocks.append(Verdict(not verdicts[name], f"{name} vs native Paddle {what}: " + "; ".join([detail, *broken])))
    return blocks


def limit_rows(limits: Mapping[str, LimitInfo], tolerance: Mapping[str, float]) -> list[list[str]]:
    return [[n, f"{'<=' if limits[n].kind == 'max' else '>='} {fmt_num(v, 6)}", limits[n].help]
            for n, v in tolerance.items()]  # fmt: skip


def inputs_sentence(inputs: Inputs) -> str:
    if inputs.type == "synthetic":
        return (
            f"{inputs.images} SYNTHETIC images (seed {inputs.seed}): {inputs.generator}. "
            "Not real photographs: use a folder of images for drift on real data."
        )
    limit = f" (the first {inputs.limit})" if inputs.limit else ""
    return (
        f"{inputs.images_used} real images from the folder {inputs.root}{limit}; "
        f"{len(inputs.unreadable or [])} unreadable and {len(inputs.skipped_files or [])} non-image files left out."
    )


# -- drift -------------------------------------------------------------------------------------------------------

_DRIFT_ROWS = [
    ("max abs error", "max_abs", fmt_num),
    ("mean abs error", "mean_abs", fmt_num),
    ("median abs error", "median_abs", fmt_num),
    ("p99 abs error", "p99_abs", fmt_num),
    ("max relative error", "max_rel", fmt_num),
    ("mean relative error", "mean_rel", fmt_num),
    ("min cosine similarity", "min_cosine", lambda v: f"{v:.9f}"),
    ("mean cosine similarity", "mean_cosine", lambda v: f"{v:.9f}"),
    ("top-1 agreement", "top1_agreement", lambda v: f"{v * 100:.2f}%"),
    ("top-1 disagreements (near-ties)", None, None),
    ("top-5 overlap (mean)", "top5_overlap", lambda v: f"{v * 100:.2f}%"),
    ("top-5 overlap (min)", "min_top5_overlap", lambda v: f"{v * 100:.0f}%"),
    ("KL divergence of the softmax (mean)", "mean_kl", fmt_num),
    ("KL divergence of the softmax (max)", "max_kl", fmt_num),
]


def _drift_table(report: DriftReport) -> Table:
    names = list(report.runtimes)
    rows = []
    for label, key, fmt in _DRIFT_ROWS:
        cells = []
        for name in names:
            stats = report.stats(name)
            if key is None:
                cells.append(f"{stats.top1_disagreements} ({stats.near_ties})")
            else:
                value = getattr(stats, key)
                cells.append("-" if value is None else fmt(value))
        rows.append([label, *cells])
    rows.append(["images / s (incl. first-call setup)", *[_speed(report.runtimes[n].images_per_second) for n in names]])
    return Table(["metric", *names], rows)


def _worst_table(report: DriftReport) -> Table:
    rows = []
    for name in report.runtimes:
        for item in report.stats(name).worst[:3]:
            flip = "" if item["top1"] == item["reference_top1"] else " (top-1 differs)"
            rows.append(
                [name, item["image"], fmt_num(item["max_abs"]), f"{item['reference_top1']} / {item['top1']}{flip}"]
            )
    return Table(["runtime", "image", "max abs error", "top-1 Paddle / runtime"], rows)


def _drift_tolerances(report: DriftReport) -> list[Block]:
    blocks: list[Block] = [Heading("Tolerance", 2)]
    blocks.append(Table(["limit", "value", "meaning"], limit_rows(report.limits, report.tolerance)))
    for name, entry in report.runtimes.items():  # a runtime in reduced precision is gated by its own defaults
        if entry.tolerance is not None and entry.tolerance != report.tolerance:
            blocks.append(Paragraph(f"{name} computes in {entry.describe.precision} and is gated by its precision's "
                                    "defaults:"))  # fmt: skip
            blocks.append(Table(["limit", "value", "meaning"], limit_rows(report.limits, entry.tolerance)))
    return blocks


_DRIFT_DEFINITIONS = (
    "Definitions: max_rel is the largest per-image max error divided by that image's max |logit|; "
    "a top-1 disagreement is a near-tie (excused by the top1_agreement limit) when Paddle's top-2 margin is at "
    "most twice the error the tolerance allows for that image (max_abs, or max_rel x its max |logit|). "
    "KL is KL(softmax(Paddle) || softmax(runtime))."
)


def drift_blocks(report: DriftReport, figures: Figures) -> tuple[str, list[Block]]:
    preset = report.model.preset if report.model else "model"
    title = f"Drift report: {preset} {', '.join(report.runtimes)} vs native Paddle"
    blocks: list[Block] = [Heading(title, 1), Paragraph(inputs_sentence(report.inputs))]
    blocks += about_blocks(report.model, _run_lines(report))
    blocks += [Heading("Verdict", 2), *gate_verdicts(report, "(tolerance gate)")]
    blocks.append(Heading(f"Drift of output '{report.output}' against native Paddle (eager)", 2))
    blocks.append(_drift_table(report))
    ref_speed = _speed(report.reference.images_per_second)
    blocks.append(Paragraph(f"Native Paddle (eager), the reference: {ref_speed} images/s on the same inputs."))
    blocks += [figures["errors"], figures["runtimes"]]
    blocks += [Heading("Largest errors", 2), _worst_table(report)]
    blocks += _drift_tolerances(report)
    blocks.append(Paragraph(_DRIFT_DEFINITIONS))
    if report.inputs.type == "folder":
        blocks += failure_blocks(report.inputs)
    blocks += reproduce_blocks(report, report.reference, report.runtimes)
    return title, blocks


# -- accuracy ----------------------------------------------------------------------------------------------------


def _accuracy_summary(report: AccuracyReport) -> list[Block]:
    """One plain sentence per runtime: its top-1, Paddle's, the difference and the agreement."""
    ref = report.reference
    lines = [
        f"native Paddle top-1 {ref.top1:.2f}% (chance {report.chance_top1:.1f}%), top-5 {ref.top5:.2f}% "
        f"on {ref.images} images"
    ]
    for name, e in report.runtimes.items():
        lines.append(
            f"{name}: top-1 {e.top1:.2f}% vs native Paddle {ref.top1:.2f}% "
            f"(difference {e.top1_diff:+.2f} points), top-5 {e.top5:.2f}% "
            f"({e.top5_diff:+.2f}); same top-1 prediction as Paddle on {e.agreement:.2f}% of the images "
            f"({e.disagreements} differ)"
        )
    return [Bullets(lines)]


def _accuracy_table(report: AccuracyReport) -> Table:
    ref = report.reference
    rows = [[f"{ref.name} (reference)", str(ref.images), _pct(ref.top1), _pct(ref.top5), "", "", "", "",
             _speed(ref.images_per_second)]]  # fmt: skip
    for name, e in report.runtimes.items():
        rows.append([name, str(e.images), _pct(e.top1), _pct(e.top5), _points(e.top1_diff), _points(e.top5_diff),
                     _pct(e.agreement), str(e.disagreements), _speed(e.images_per_second)])  # fmt: skip
    header = ["runtime", "images", "top-1", "top-5", "Δ top-1 (points)", "Δ top-5 (points)",
              "agreement with Paddle", "disagreements", "images / s"]  # fmt: skip
    return Table(header, rows)


def _accuracy_intro(report: AccuracyReport) -> Paragraph:
    inputs = report.inputs
    source = {
        "label-file": f"labels from {inputs.label_file}",
        "class-folders": f"one folder per class ({len(inputs.classes or [])} classes)",
    }.get(inputs.kind or "", inputs.kind or "")
    left_out = len(inputs.unreadable or []) + len(inputs.skipped_files or []) + len(inputs.bad_label_lines or [])
    return Paragraph(
        f"{inputs.images_evaluated} real labelled images evaluated of {inputs.images_listed} listed in "
        f"{inputs.root} ({source}); "
        + (f"{left_out} file(s) or line(s) left out, listed below. " if left_out else "nothing left out. ")
        + f"{report.num_classes} classes; wall time {report.wall_seconds:.1f}s."
    )


def accuracy_blocks(report: AccuracyReport, figures: Figures) -> tuple[str, list[Block]]:
    names = list(report.runtimes)
    root = Path(report.inputs.root or "").name or report.inputs.root
    preset = report.model.preset if report.model else "model"
    title = f"Accuracy report: {preset} on {root}" + (
        f" ({', '.join(names)} vs native Paddle)" if names else " (native Paddle)"
    )
    blocks: list[Block] = [Heading(title, 1), _accuracy_intro(report)]
    blocks += about_blocks(report.model, _run_lines(report))
    blocks += [Heading("Verdict", 2), *_accuracy_summary(report), *gate_verdicts(report, "(accuracy gate)")]
    blocks += [Heading("Accuracy per runtime", 2), _accuracy_table(report)]
    blocks.append(
        Paragraph(
            f"Throughput: images per second inside each runtime at batch {report.batch_size}, after one untimed "
            f"warm-up batch; preprocessing ran in {report.workers} prefetching threads and is not counted."
        )
    )
    blocks += [figures["accuracy"], figures["classes"]]
    if report.tolerance:
        blocks.append(Heading("Tolerance", 2))
        blocks.append(Table(["limit", "value", "meaning"], limit_rows(report.limits, report.tolerance)))
    blocks += failure_blocks(report.inputs)
    blocks += reproduce_blocks(report, report.reference, report.runtimes)
    return title, blocks
