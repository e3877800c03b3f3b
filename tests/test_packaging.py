"""Packaging: exactly one ONNX Runtime wheel per install.

The onnxruntime and onnxruntime-gpu wheels both write the one `onnxruntime` package, so an install that pulls
both ends with whichever wrote last, file by file. The base requirements name neither; the extras `cpu` and
`gpu` name one each, no other extra names any, and the Quick start's `make run` / `make test` install one.
(The resolved sets, checked once with `pip install --dry-run --report` in a fresh venv, are quoted in the
README's GPU section.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
ORT_WHEELS = {"onnxruntime", "onnxruntime-gpu"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _closure(extras: set[str]) -> set[str]:
    """Distribution names a `pip install .[extras]` asks for directly (following the project's own extras)."""
    project = _project()
    self_name, optional = project["name"], project["optional-dependencies"]
    names = {_name(r) for r in project["dependencies"]}
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            if _name(requirement) == self_name:
                todo.extend(re.search(r"\[(.*)\]", requirement).group(1).split(","))
            else:
                names.add(_name(requirement))
    return names


def test_the_base_install_names_no_onnxruntime_wheel():
    assert not {_name(r) for r in _project()["dependencies"]} & ORT_WHEELS


def test_cpu_and_gpu_extras_each_install_one_wheel_and_no_other_extra_adds_one():
    assert _closure({"cpu"}) & ORT_WHEELS == {"onnxruntime"}
    assert _closure({"gpu"}) & ORT_WHEELS == {"onnxruntime-gpu"}
    for extra in set(_project()["optional-dependencies"]) - {"cpu", "gpu"}:
        assert not _closure({extra}) & ORT_WHEELS, f"extra [{extra}] pulls an ONNX Runtime wheel"
        assert _closure({extra, "gpu"}) & ORT_WHEELS == {"onnxruntime-gpu"}


def test_the_quick_start_installs_exactly_one_onnxruntime_wheel():
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"pip install -q -e '?\.\[([^\]]*)\]'?", makefile)
    assert installs, "the Makefile's pip install lines were not found"
    for extras in installs:
        assert _closure(set(extras.split(","))) & ORT_WHEELS == {"onnxruntime"}, extras
