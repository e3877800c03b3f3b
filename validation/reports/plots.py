"""The report's figures as PNG bytes, drawn from the typed report (`validation.reports.types`).

matplotlib's Agg canvas, no pyplot state.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def error_histogram(report: Any) -> bytes:
    """Distribution of |runtime - Paddle| over every logit, one line per runtime, log-spaced bins."""
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    used: list[float] = []  # edges of the bins that hold errors, to zoom on them
    for i, name in enumerate(report.runtimes):
        hist = report.stats(name).histogram
        edges = np.asarray(hist["edges"])
        counts = np.asarray(hist["counts"], dtype=float)
        filled = np.flatnonzero(counts)
        if len(filled):
            used += [float(edges[filled[0]]), float(edges[filled[-1] + 1])]
        total = counts.sum() + hist["zero"] + hist["below"] + hist["above"]
        label = f"{name} ({hist['zero']} exact zeros of {int(total)})"
        ax.stairs(counts / max(total, 1), edges, label=label, color=_COLORS[i % len(_COLORS)], linewidth=1.8)
    ax.set_xscale("log")
    if used:
        ax.set_xlim(min(used) / 3, max(used) * 3)
    ax.set_xlabel("absolute error of a logit vs native Paddle")
    ax.set_ylabel("fraction of logits")
    inputs = report.inputs
    ax.set_title(f"Error histogram ({inputs.images_used if inputs.images_used is not None else inputs.images} images)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def drift_by_runtime(report: Any) -> bytes:
    """Max / p99 / mean absolute error per runtime, and the max relative error, on log scales."""
    names = list(report.runtimes)
    stats = [report.stats(n) for n in names]
    fig = _figure(8, 3.6)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    x = np.arange(len(names))
    width = 0.26
    floor = 1e-12  # an exact match still gets a visible bar on the log scale
    for j, key in enumerate(("max_abs", "p99_abs", "mean_abs")):
        values = [max(getattr(s, key), floor) for s in stats]
        ax.bar(x + (j - 1) * width, values, width, label=key.replace("_", " "), color=_COLORS[j])
    ax.set_yscale("log")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("absolute logit error")
    ax.set_title("Absolute error per runtime")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    ax2.bar(x, [max(s.max_rel, floor) for s in stats], 0.5, color=_COLORS[3])
    limit = report.tolerance.get("max_rel")
    if limit:
        ax2.axhline(limit, color="#d62728", linestyle="--", linewidth=1, label=f"limit {limit:g}")
        ax2.legend(fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xticks(x, names, fontsize=8, rotation=20)
    ax2.set_title("Max relative error")
    ax2.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def _all_entries(report: Any) -> list[tuple[str, Any]]:
    return [(f"{report.reference.name} (reference)", report.reference), *report.runtimes.items()]


def accuracy_by_runtime(report: Any) -> bytes:
    """Top-1 / top-5 per runtime (with the reference) and their throughput."""
    entries = _all_entries(report)
    names = [n for n, _ in entries]
    fig = _figure(8, 4.2)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    x = np.arange(len(names))
    for j, key in enumerate(("top1", "top5")):
        values = [getattr(e, key) for _, e in entries]
        bars = ax.bar(x + (j - 0.5) * 0.38, values, 0.38, label=key.replace("top", "top-"), color=_COLORS[j])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(report.chance_top1, color="#888", linestyle=":", label="chance (top-1)")
    ax.set_ylim(0, 105)
    ax.set_xticks(x, names, fontsize=8, rotation=15)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy on {report.inputs.images_evaluated} images")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=3)
    speeds = [e.images_per_second or 0.0 for _, e in entries]
    bars = ax2.bar(x, speeds, 0.5, color=_COLORS[2])
    ax2.bar_label(bars, fmt="%.0f", fontsize=7)
    ax2.set_xticks(x, names, fontsize=8, rotation=15)
    ax2.set_ylabel("images / s (inside the runtime)")
    ax2.set_title(f"Throughput, batch {report.batch_size}")
    return _png(fig)


def accuracy_per_class(report: Any) -> bytes:
    """Per-class top-1: grouped bars for up to 40 classes, otherwise each runtime's classes sorted."""
    entries = _all_entries(report)
    classes = report.num_classes
    fig = _figure(9, 4.2)
    ax = fig.add_subplot()
    if classes <= 40:
        x = np.arange(classes)
        width = 0.8 / len(entries)
        for i, (name, entry) in enumerate(entries):
            values = [v if v is not None else 0.0 for v in entry.per_class_top1]
            ax.bar(x + (i - (len(entries) - 1) / 2) * width, values, width, label=name, color=_COLORS[i % 8])
        names = report.inputs.classes or [str(c) for c in range(classes)]
        ax.set_xticks(x, names, fontsize=8)
        ax.set_xlabel("class")
        low = min((v for _, e in entries for v in e.per_class_top1 if v is not None), default=0.0)
        ax.set_ylim(max(0.0, low - 5), 100.5)
    else:
        for i, (name, entry) in enumerate(entries):
            values = np.sort([v for v in entry.per_class_top1 if v is not None])
            ax.plot(np.linspace(0, 100, len(values)), values, label=name, color=_COLORS[i % 8])
        ax.set_xlabel("classes, sorted by top-1 (percentile)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Per-class top-1")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=min(len(entries), 4))
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def stage_growth(report: Any) -> bytes:
    """A locate report's relative error along the network, one line per runtime, the threshold dashed."""
    stages = report.stages
    fig = _figure(max(8.0, 0.45 * len(stages)), 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(stages))
    floor = 1e-12  # an exact match still shows on the log scale
    for i, (name, entry) in enumerate(report.runtimes.items()):
        color = _COLORS[i % len(_COLORS)]
        for key, style in (("max_rel", "-"), ("mean_rel", ":")):
            values = [max(getattr(entry.stages[s], key), floor) if entry.stages[s].mapped else np.nan for s in stages]
            ax.plot(x, values, style, marker="o", markersize=3, color=color, label=f"{name} {key.replace('_', ' ')}")
        if entry.first_jump is not None:
            j = stages.index(entry.first_jump)
            ax.plot([j], [max(entry.stages[stages[j]].max_rel, floor)], "D", color="#ff7f0e", markersize=8,
                    fillstyle="none", markeredgewidth=2, label=f"{name}: first divergent stage")  # fmt: skip
        if entry.first_over is not None:
            j = stages.index(entry.first_over)
            ax.plot([j], [max(entry.stages[stages[j]].max_rel, floor)], "x", color="#d62728", markersize=11,
                    markeredgewidth=2.5, label=f"{name}: first over the threshold")  # fmt: skip
    limit = report.tolerance.get("max_rel")
    if limit:
        ax.axhline(limit, color="#d62728", linestyle="--", linewidth=1, label=f"max_rel threshold {limit:g}")
    ax.set_yscale("log")
    ax.set_xticks(x, stages, fontsize=7, rotation=60)
    ax.set_ylabel("relative error vs native Paddle")
    ax.set_title("Error along the network (gaps: stages not mapped)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)
