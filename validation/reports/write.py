"""Reports: the JSON data of a run, and the Markdown and HTML pages that people read, with figures.

`write_reports` writes `<stem>.json`, `<stem>.md` (+ `<stem>_*.png`) and a
self-contained `<stem>.html`. The pages are drawn from the typed report
(`validation.reports.types`) that the JSON holds, so `python -m validation report RUN.json`
reads it back (`load_report`, any kind, any version) and renders them again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from lvvit.common.atomic import atomic_files, sweep_leftovers
from validation.errors import ValidationError
from validation.reports.document import Figure, to_html, to_markdown
from validation.reports.kinds import FIGURES, from_json, pages
from validation.reports.types import REPORT_VERSION, Report

# -- files -------------------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot write a {type(value).__name__} into the JSON report")


def _finite(value: Any) -> Any:
    """The report with non-finite floats as None, so that the JSON is strict (RFC 8259)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def typed(report: Report | Mapping[str, Any]) -> Report:
    """A typed report as it is; a JSON object (a report from a file, or from elsewhere) read by its kind."""
    return report if isinstance(report, Report) else from_json(report)


def _pages(report: Report, folder: Path, stem: str) -> dict[str, Path]:
    """Write `<stem>.md`, its PNG figures and `<stem>.html` into `folder`; returns them by kind."""
    title, blocks = pages(report)
    written: dict[str, Path] = {}
    for block in blocks:
        if isinstance(block, Figure):
            written[f"png:{block.name}"] = folder / f"{stem}_{block.name}.png"
            written[f"png:{block.name}"].write_bytes(block.png)
    written["markdown"] = folder / f"{stem}.md"
    written["markdown"].write_text(to_markdown(blocks, stem), encoding="utf-8")
    written["html"] = folder / f"{stem}.html"
    written["html"].write_text(to_html(blocks, title), encoding="utf-8")
    return written


def _write_set(out_dir: str | Path, stem: str, write: Callable[[Path], dict[str, Path]]) -> dict[str, Path]:
    """Run `write` in a staging folder and move its files into `out_dir` as a unit (all replaced or none).

    An older set's figures that the new set lacks are removed with it, so that
    no page of the set shows an older run's figure.
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        sweep_leftovers(out_dir)  # staging folders of a killed run
    stale = [f"{stem}_{name}.png" for name in FIGURES]
    with atomic_files(out_dir, stale) as staging:
        staged = write(staging)
    return {kind: out_dir / path.name for kind, path in staged.items()}


def render(report: Report | Mapping[str, Any], out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write `<stem>.md` (+ PNG figures) and `<stem>.html` from the report, as a unit."""
    report = typed(report)
    return _write_set(out_dir, stem, lambda folder: _pages(report, folder, stem))


def write_reports(report: Report | Mapping[str, Any], out_dir: str | Path, stem: str) -> dict[str, Path]:
    """`<stem>.json` with every number, and the Markdown and HTML pages drawn from it: all files or none replaced."""
    report = replace(typed(report), version=REPORT_VERSION)  # written now: in this version's format
    data = json.loads(json.dumps(report.to_json(), default=_json_default))  # numpy scalars and paths as JSON
    text = json.dumps(_finite(data), indent=2, allow_nan=False)

    def write(folder: Path) -> dict[str, Path]:
        path = folder / f"{stem}.json"
        path.write_text(text + "\n", encoding="utf-8")
        return {"json": path, **_pages(report, folder, stem)}

    return _write_set(out_dir, stem, write)


MAX_REPORT_BYTES = 64 << 20  # reports are kilobytes to a few MB (unreadable files listed); parsed JSON takes ~10x


def load_report(path: str | Path) -> Report:
    """The typed report a JSON file holds (any kind, any version)."""
    path = Path(path)
    if not path.is_file():  # a FIFO or a device would block or never end
        raise ValidationError(f"{path}: not a regular file; expected a JSON report of drift, accuracy, locate or bench")
    try:
        with path.open("rb") as file:
            data = file.read(MAX_REPORT_BYTES + 1)
        if len(data) > MAX_REPORT_BYTES:
            raise ValidationError(f"{path}: larger than {MAX_REPORT_BYTES >> 20} MiB; not a report of this kit")
        report = json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{path}: cannot read the JSON report ({type(exc).__name__}: {exc})") from exc
    if not isinstance(report, dict):
        raise ValidationError(f"{path}: holds a JSON {type(report).__name__}, not a report object")
    return from_json(report)
