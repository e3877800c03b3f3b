"""The pages' blocks of the drift and accuracy reports, and the formatting that every report kind shares.

`validation.reports.write` writes the pages; the bench and locate reports draw theirs in `bench_report` and
`locate_report` with the helpers here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lvvit.common.gate import GateCheck
from validation.reports import plots
from validation.reports.document import Block, Bullets, Code, Figure, Heading, Paragraph, Table, Verdict

_SHOWN_FILES = 200  # unreadable/skipped files listed on the pages (the JSON has all)


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


def model_lines(model: dict[str, Any]) -> list[str]:
    if not model:
        return []
    lines = [f"preset: {model.get('preset')} at {model.get('resolution')}px"]
    arch = model.get("arch") or {}
    if arch:
        lines.append("architecture: " + ", ".join(f"{k}={v}" for k, v in arch.items()))
    if model.get("weights"):
        identity = model.get("weights_tensors_sha256")  # older reports have the file's hash only
        tensors = f"; tensors_sha256 {identity}, the weights' identity" if identity else ""
        lines.append(f"weights: {model['weights']} (file sha256 {model.get('weights_sha256')}{tensors})")
    else:
        lines.append(f"weights: NONE, a deterministic random initialisation (seed {model.get('seed')})")
    return lines


def _run_lines(report: dict[str, Any]) -> list[str]:
    """How the run was executed: the engine, the shards, and a cached reference (older reports have none)."""
    engine, shards = report.get("engine"), report.get("shards")
    if not engine or not shards:
        return []
    where = f" at {engine['address']}" if engine.get("address") else ""
    lines = [
        f"engine: {engine['name']}{where}; {shards['count']} shard(s) of {shards['size']} images, "
        f"{shards['computed']} computed in this run"
        + (f", the others resumed from {shards['folder']}" if shards["computed"] < shards["count"] else "")
    ]
    if engine.get("reference"):
        lines.append(f"reference: native Paddle's logits {engine['reference']} (Paddle was not run)")
    return lines


def _runtime_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    entries = [(report["reference"]["name"], report["reference"]["describe"])]
    entries += [(name, entry["describe"]) for name, entry in report["runtimes"].items()]
    for name, described in entries:
        facts = []
        for key in ("runtime", "engine", "device", "providers", "execution_devices", "precision", "threads", "onednn"):
            if described.get(key) is not None:
                value = described[key]
                facts.append(f"{key}: {', '.join(map(str, value)) if isinstance(value, list) else value}")
        files = described.get("model_files") or {}
        hashes = "; ".join(f"{Path(p).name} sha256 {h[:16]}…" for p, h in files.items()) or described.get("model", "")
        versions = described.get("versions") or {}
        shown = ", ".join(f"{k} {v}" for k, v in versions.items() if k not in ("python", "numpy", "pillow"))
        rows.append([name, "; ".join(facts), hashes, shown])
    return rows


def failure_blocks(inputs: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    unreadable = inputs.get("unreadable") or []
    skipped = inputs.get("skipped_files") or []
    bad_lines = inputs.get("bad_label_lines") or []
    blocks.append(Heading("Files left out", 2))
    if not (unreadable or skipped or bad_lines):
        blocks.append(Paragraph("None: every listed image was read."))
        return blocks
    if unreadable:
        blocks.append(Paragraph(f"{len(unreadable)} unreadable image(s), left out for every runtime:"))
        rows = [[f["name"], f["reason"]] for f in unreadable[:_SHOWN_FILES]]
        blocks.append(Table(["file", "why"], rows))
    if bad_lines:
        blocks.append(Paragraph(f"{len(bad_lines)} bad line(s) of the label file, skipped (--skip-bad-lines):"))
        rows = [[str(b["line"]), b["text"], b["reason"]] for b in bad_lines[:_SHOWN_FILES]]
        blocks.append(Table(["line", "text", "why"], rows))
    if skipped:
        blocks.append(Paragraph(f"{len(skipped)} file(s) without an image suffix, not read:"))
        blocks.append(Table(["file", "why"], [[f["name"], f["reason"]] for f in skipped[:_SHOWN_FILES]]))
    hidden = max(len(unreadable), len(bad_lines), len(skipped)) - _SHOWN_FILES
    if hidden > 0:
        blocks.append(Paragraph(f"(lists cut at {_SHOWN_FILES}; the JSON report has every entry)"))
    return blocks


def reproduce_blocks(report: dict[str, Any]) -> list[Block]:
    env = report["environment"]
    blocks: list[Block] = [Heading("Runtimes", 2)]
    blocks.append(Table(["runtime", "what runs", "model files", "versions"], _runtime_rows(report)))
    pre = report["preprocess"]
    blocks.append(Heading("Preprocessing (identical inputs for every runtime)", 2))
    blocks.append(
        Paragraph(
            f"RGB, resize the shorter side to {pre['resize_size']} ({pre['interpolation']}), center crop "
            f"{pre['input_size']}x{pre['input_size']}, scale to [0, 1], normalise with mean {pre['mean']} and "
            f"std {pre['std']}, {pre['layout']} float32 (crop_pct {pre['crop_pct']})."
        )
    )
    blocks.append(Heading("Reproduce", 2))
    if env.get("command"):
        blocks.append(Code(" ".join(env["command"])))
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    blocks.append(
        Bullets(
            [
                f"created {env['created']} in {env['cwd']}",
                f"Python {env['python']} on {env['platform']} ({env['machine']}, {env['cpu_count']} CPUs)",
                f"packages: {packages}",
            ]
        )
    )
    return blocks


def _gate_verdicts(report: dict[str, Any], what: str) -> list[Block]:
    blocks: list[Block] = []
    for name, entry in report["runtimes"].items():
        checks = entry.get("gate", [])
        passed = all(c["passed"] for c in checks)
        detail = "; ".join(GateCheck.from_dict(c).describe() for c in checks) or "no limits set"
        blocks.append(Verdict(passed, f"{name} vs native Paddle {what}: {detail}"))
    return blocks


FIGURES = ("errors", "runtimes", "accuracy", "classes")  # every figure a report may have: `<stem>_<name>.png`


MAX_PLOTTED_RUNTIMES = 12  # a figure costs ~0.1 s per runtime drawn; a run compares a handful


def figure(name: str, caption: str, draw: Callable[[dict[str, Any]], bytes], report: dict[str, Any]) -> Block:
    """The figure, or a paragraph naming it and why it could not be drawn: a plot never costs the report.

    A report from elsewhere with many runtimes has the first `MAX_PLOTTED_RUNTIMES` drawn (the tables list all),
    so that rendering it takes bounded time.
    """
    runtimes = report.get("runtimes")
    if isinstance(runtimes, dict) and len(runtimes) > MAX_PLOTTED_RUNTIMES:
        report = {**report, "runtimes": dict(list(runtimes.items())[:MAX_PLOTTED_RUNTIMES])}
        caption += f" (the first {MAX_PLOTTED_RUNTIMES} of {len(runtimes)} runtimes; the tables list every one)"
    try:
        return Figure(name, caption, draw(report))
    except Exception as exc:  # matplotlib and numpy raise many types on odd data; the numbers are in the tables
        return Paragraph(f"Figure '{caption}' ({name}) could not be drawn: {type(exc).__name__}: {exc}")


def limit_rows(report: dict[str, Any]) -> list[list[str]]:
    limits = report["limits"]
    return [
        [n, f"{'<=' if limits[n]['kind'] == 'max' else '>='} {fmt_num(v, 6)}", limits[n]["help"]]
        for n, v in report["tolerance"].items()
    ]


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


def inputs_sentence(inputs: dict[str, Any]) -> str:
    if inputs["type"] == "synthetic":
        return (
            f"{inputs['images']} SYNTHETIC images (seed {inputs['seed']}): {inputs['generator']}. "
            "Not real photographs: use a folder of images for drift on real data."
        )
    limit = f" (the first {inputs['limit']})" if inputs.get("limit") else ""
    return (
        f"{inputs['images_used']} real images from the folder {inputs['root']}{limit}; "
        f"{len(inputs['unreadable'])} unreadable and {len(inputs['skipped_files'])} non-image files left out."
    )


def drift_blocks(report: dict[str, Any]) -> tuple[str, list[Block]]:
    model = report.get("model") or {}
    names = list(report["runtimes"])
    title = f"Drift report: {model.get('preset', 'model')} {', '.join(names)} vs native Paddle"
    blocks: list[Block] = [Heading(title, 1), Paragraph(inputs_sentence(report["inputs"]))]
    blocks += [Bullets(model_lines(model) + _run_lines(report))] if model or _run_lines(report) else []
    blocks.append(Heading("Verdict", 2))
    blocks += _gate_verdicts(report, "(tolerance gate)")
    output = report["output"]
    blocks.append(Heading(f"Drift of output '{output}' against native Paddle (eager)", 2))
    header = ["metric", *names]
    rows = []
    for label, key, fmt in _DRIFT_ROWS:
        cells = []
        for name in names:
            stats = report["runtimes"][name]["outputs"][output]
            if key is None:
                cells.append(f"{stats['top1_disagreements']} ({stats['near_ties']})")
            else:
                cells.append(fmt(stats[key]))
        rows.append([label, *cells])
    speeds = [_speed(report["runtimes"][n]["images_per_second"]) for n in names]
    rows.append(["images / s (incl. first-call setup)", *speeds])
    blocks.append(Table(header, rows))
    ref_speed = _speed(report["reference"]["images_per_second"])
    blocks.append(Paragraph(f"Native Paddle (eager), the reference: {ref_speed} images/s on the same inputs."))
    blocks.append(figure("errors", "Distribution of the absolute logit error against native Paddle",
                          plots.error_histogram, report))  # fmt: skip
    blocks.append(figure("runtimes", "Absolute and relative error per runtime", plots.drift_by_runtime, report))
    blocks.append(Heading("Largest errors", 2))
    worst_rows = []
    for name in names:
        for item in report["runtimes"][name]["outputs"][output]["worst"][:3]:
            flip = "" if item["top1"] == item["reference_top1"] else " (top-1 differs)"
            worst_rows.append([name, item["image"], fmt_num(item["max_abs"]),
                               f"{item['reference_top1']} / {item['top1']}{flip}"])  # fmt: skip
    blocks.append(Table(["runtime", "image", "max abs error", "top-1 Paddle / runtime"], worst_rows))
    blocks.append(Heading("Tolerance", 2))
    blocks.append(Table(["limit", "value", "meaning"], limit_rows(report)))
    for name in names:  # a runtime in reduced precision is gated by its own defaults (lvvit.common.metrics)
        own = report["runtimes"][name].get("tolerance")
        if own is not None and own != report["tolerance"]:
            precision = report["runtimes"][name]["describe"].get("precision")
            blocks.append(Paragraph(f"{name} computes in {precision} and is gated by its precision's defaults:"))
            blocks.append(Table(["limit", "value", "meaning"], limit_rows({**report, "tolerance": own})))
    blocks.append(
        Paragraph(
            "Definitions: max_rel is the largest per-image max error divided by that image's max |logit|; "
            "a top-1 disagreement is a near-tie (excused by the top1_agreement limit) when Paddle's top-2 margin is at "
            "most twice the error the tolerance allows for that image (max_abs, or max_rel x its max |logit|). "
            "KL is KL(softmax(Paddle) || softmax(runtime))."
        )
    )
    if report["inputs"]["type"] == "folder":
        blocks += failure_blocks(report["inputs"])
    blocks += reproduce_blocks(report)
    return title, blocks


# -- accuracy ----------------------------------------------------------------------------------------------------


def _accuracy_summary(report: dict[str, Any]) -> list[Block]:
    """One plain sentence per runtime: its top-1, Paddle's, the difference and the agreement."""
    ref = report["reference"]
    lines = [
        f"native Paddle top-1 {ref['top1']:.2f}% (chance {report['chance_top1']:.1f}%), top-5 {ref['top5']:.2f}% "
        f"on {ref['images']} images"
    ]
    for name, entry in report["runtimes"].items():
        lines.append(
            f"{name}: top-1 {entry['top1']:.2f}% vs native Paddle {ref['top1']:.2f}% "
            f"(difference {entry['top1_diff']:+.2f} points), top-5 {entry['top5']:.2f}% "
            f"({entry['top5_diff']:+.2f}); same top-1 prediction as Paddle on {entry['agreement']:.2f}% of the images "
            f"({entry['disagreements']} differ)"
        )
    return [Bullets(lines)]


def accuracy_blocks(report: dict[str, Any]) -> tuple[str, list[Block]]:
    model = report.get("model") or {}
    inputs = report["inputs"]
    names = list(report["runtimes"])
    root = Path(inputs["root"]).name or inputs["root"]
    title = f"Accuracy report: {model.get('preset', 'model')} on {root}" + (
        f" ({', '.join(names)} vs native Paddle)" if names else " (native Paddle)"
    )
    source = {
        "label-file": f"labels from {inputs['label_file']}",
        "class-folders": f"one folder per class ({len(inputs['classes'] or [])} classes)",
    }.get(inputs["kind"], inputs["kind"])
    left_out = len(inputs["unreadable"]) + len(inputs["skipped_files"]) + len(inputs["bad_label_lines"])
    blocks: list[Block] = [
        Heading(title, 1),
        Paragraph(
            f"{inputs['images_evaluated']} real labelled images evaluated of {inputs['images_listed']} listed in "
            f"{inputs['root']} ({source}); "
            + (f"{left_out} file(s) or line(s) left out, listed below. " if left_out else "nothing left out. ")
            + f"{report['num_classes']} classes; wall time {report['wall_seconds']:.1f}s."
        ),
    ]
    blocks += [Bullets(model_lines(model) + _run_lines(report))] if model or _run_lines(report) else []
    blocks.append(Heading("Verdict", 2))
    blocks += _accuracy_summary(report)
    blocks += _gate_verdicts(report, "(accuracy gate)")
    blocks.append(Heading("Accuracy per runtime", 2))
    rows = []
    ref = report["reference"]
    rows.append([f"{ref['name']} (reference)", str(ref["images"]), _pct(ref["top1"]), _pct(ref["top5"]), "", "", "",
                 "", _speed(ref["images_per_second"])])  # fmt: skip
    for name, e in report["runtimes"].items():
        rows.append([name, str(e["images"]), _pct(e["top1"]), _pct(e["top5"]), _points(e["top1_diff"]),
                     _points(e["top5_diff"]), _pct(e["agreement"]), str(e["disagreements"]),
                     _speed(e["images_per_second"])])  # fmt: skip
    header = ["runtime", "images", "top-1", "top-5", "Δ top-1 (points)", "Δ top-5 (points)",
              "agreement with Paddle", "disagreements", "images / s"]  # fmt: skip
    blocks.append(Table(header, rows))
    blocks.append(
        Paragraph(
            f"Throughput: images per second inside each runtime at batch {report['batch_size']}, after one untimed "
            f"warm-up batch; preprocessing ran in {report['workers']} prefetching threads and is not counted."
        )
    )
    blocks.append(figure("accuracy", "Accuracy and throughput per runtime", plots.accuracy_by_runtime, report))
    blocks.append(figure("classes", "Per-class top-1", plots.accuracy_per_class, report))
    tolerance = report["tolerance"]
    if tolerance:
        blocks.append(Heading("Tolerance", 2))
        blocks.append(Table(["limit", "value", "meaning"], limit_rows(report)))
    blocks += failure_blocks(inputs)
    blocks += reproduce_blocks(report)
    return title, blocks
