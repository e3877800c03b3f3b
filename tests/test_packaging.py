"""Packaging: exactly one ONNX Runtime wheel per install.

The onnxruntime and onnxruntime-gpu wheels both write the one `onnxruntime` package, so an install that pulls
both ends with whichever wrote last, file by file. The base requirements name neither; the extras `cpu` and
`gpu` name one each, no other extra names any, and the Quick start's `make run` / `make test` install one.
Without either, the predictor and the export's verification say which extras to install.
(The resolved sets, checked once with `pip install --dry-run --report` in a fresh venv, are quoted in the
GPU page, docs/gpu.md.)
"""

from __future__ import annotations

import builtins
import re
from pathlib import Path

import pytest

from exporters.errors import ExportError
from exporters.onnx.verify import Tolerance, verify_export
from runtimes import BackendNotInstalledError, OrtPredictor

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


@pytest.fixture
def no_onnxruntime(monkeypatch):
    """`import onnxruntime` fails, as in a base install without the cpu or gpu extra."""
    real_import = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)


def test_without_onnxruntime_the_predictor_names_the_two_extras(no_onnxruntime, tmp_path):
    with pytest.raises(
        BackendNotInstalledError,
        match=r"no onnxruntime module is installed: pip install 'lvvit-deploy\[cpu\]' \(the onnxruntime wheel\) "
        r"or 'lvvit-deploy\[gpu\]' \(onnxruntime-gpu\), one of them",
    ):
        OrtPredictor(tmp_path / "model.onnx")


def test_without_onnxruntime_the_export_verification_names_the_extras(no_onnxruntime, tmp_path):
    with pytest.raises(
        ExportError,
        match=r"verifying model\.onnx needs ONNX Runtime: pip install 'lvvit-deploy\[cpu\]' \(or \[gpu\], not both\), "
        r"or export with --no-verify",
    ):
        verify_export(tmp_path / "model.onnx", [], Tolerance(atol=1e-4))


SCRIPTS = {
    "lvvit-export": "exporters.onnx.__main__:main",
    "lvvit-validate": "validation.cli:main",
    "lvvit-serve": "serving.cli:main",
    "lvvit-convert": "lvvit.convert:main",
}


def _entry_point(target: str):
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_the_console_scripts_are_declared_and_point_at_mains_that_take_argv():
    import inspect

    assert _project()["scripts"] == SCRIPTS
    for name, target in SCRIPTS.items():
        main = _entry_point(target)
        parameter = inspect.signature(main).parameters.get("argv")
        assert callable(main) and parameter is not None and parameter.default is None, name


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_console_script_prints_its_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _entry_point(SCRIPTS[name])(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_a_console_script_runs_from_another_folder(tmp_path):
    """What the installed `lvvit-validate` runs (`sys.exit(main())`, as pip's launcher), started in a folder that is
    not the checkout: the kit is found on its path (as installed), never through the working directory."""
    import os
    import subprocess
    import sys

    module, _, attr = SCRIPTS["lvvit-validate"].partition(":")
    launcher = f"import sys; from {module} import {attr}; sys.exit({attr}())"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", launcher, "--help"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "drift" in run.stdout and "ov-layers" in run.stdout
    installed = Path(sys.executable).parent / "lvvit-validate"
    if installed.is_file():  # an install made after [project.scripts] existed: the real launcher too
        run = subprocess.run([str(installed), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "usage:" in run.stdout, run.stderr
