"""The int8 journey of a new user: missing packages named before any work, progress, a failed gate's file kept."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import onnx
import pytest

from exporters.errors import Int8GateError
from exporters.onnx import FastPath
from lvvit.common.install import install_command
from tests.conftest import ROOT
from tests.exporters.test_export_fast_paths import _export

INSTALL_INT8 = f"pip install -e {shlex.quote(f'{ROOT}[int8]')}"


def _hidden(module: str, code: str) -> list[str]:
    """A Python command line that runs `code` as if `module` were not installed."""
    return [sys.executable, "-c", f"import sys; sys.modules[{module!r}] = None\n{code}"]


def test_the_install_command_installs_into_this_checkout():
    assert install_command("int8") == INSTALL_INT8


def test_missing_nncf_is_named_before_any_work(tmp_path):
    code = "from exporters.onnx.__main__ import main; sys.exit(main(sys.argv[1:]))"
    args = ["--preset", "lvvit_l_448", "--quantize", "int8", "--images", str(tmp_path), "--output", str(tmp_path)]
    started = time.perf_counter()
    run = subprocess.run([*_hidden("nncf", code), *args], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2, run.stderr
    assert (
        "error: missing packages, nothing was started:\n"
        f"  nncf: {INSTALL_INT8}  (--quantize int8 --quantizer nncf; or use --quantizer ort)\n"
    ) in run.stderr
    assert "building" not in run.stderr and list(tmp_path.iterdir()) == []
    assert time.perf_counter() - started < 30  # lvvit_l_448 was not built (that alone takes longer here)


def test_the_ort_quantizer_does_not_need_nncf(tmp_path):
    code = (
        "from exporters.onnx.preflight import check_requirements\n"
        "from exporters.onnx import FastPath\n"
        f"check_requirements(FastPath(quantize='int8', calibration={str(tmp_path)!r}, quantizer='ort'), True)\n"
        "print('ok')"
    )
    run = subprocess.run(_hidden("nncf", code), capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0 and run.stdout == "ok\n", run.stderr


def test_calibration_shows_its_progress(tmp_path, photo_folder, capfd):  # noqa: F811
    # int8_target vnni on every CPU: its SmoothQuant adds a second pass over the images (avx2 files have none)
    fast = FastPath(
        quantize="int8", calibration=photo_folder, calibration_count=6, min_int8_agreement=0.0, int8_target="vnni"
    )
    _export(tmp_path, fast)
    err = capfd.readouterr().err
    assert "calibrating int8 (nncf), pass 1: " in err and "6/6 [" in err
    # NNCF reads the images once per algorithm; each pass is shown
    assert "calibrating int8 (nncf), pass 2: " in err
    _export(tmp_path / "quiet", FastPath(quantize="int8", calibration=photo_folder, calibration_count=6,
                                         min_int8_agreement=0.0, progress=False))  # fmt: skip
    assert "calibrating int8" not in capfd.readouterr().err


def _negated(real):
    """`quantize_int8` whose graph answers with negated logits: an int8 file that surely fails the gate."""

    def quantize(proto, *args, **kwargs):
        quantized = real(proto, *args, **kwargs)
        output = quantized.graph.output[0].name
        for node in quantized.graph.node:
            node.output[:] = [f"{name}.raw" if name == output else name for name in node.output]
        quantized.graph.node.append(onnx.helper.make_node("Neg", [f"{output}.raw"], [output]))
        return quantized

    return quantize


def test_a_failed_gate_keeps_the_file_as_rejected_and_says_what_next(tmp_path, photo_folder, monkeypatch):  # noqa: F811
    import exporters.onnx.quantize as quantize

    monkeypatch.setattr(quantize, "quantize_int8", _negated(quantize.quantize_int8))
    target = tmp_path / "lvvit_s_64_int8.onnx"
    target.write_bytes(b"older")
    with pytest.raises(Int8GateError) as failure:
        _export(tmp_path, FastPath(quantize="int8", calibration=photo_folder, calibration_count=6))
    error = failure.value
    rejected = tmp_path / "lvvit_s_64_int8.rejected.onnx"
    assert error.rejected == rejected and target.read_bytes() == b"older"
    measured = error.checks[0].top1_agreement
    assert measured < 0.99
    message = str(error)
    assert (f"int8 top-1 agreement with Paddle fp32 is {measured:.1%} on 38 images, below the gate: top-1 agreement "
            ">= 99.0% (--min-int8-agreement); not written there") in message  # fmt: skip
    assert f"The rejected file is kept as {rejected}" in message
    assert "--accuracy-control: keeps the stages that lose the most in float" in message
    *_, accept, note = message.splitlines()
    assert "--min-int8-agreement " in accept
    assert "random initialisation (no --weights)" in note and "median gap" in note  # why it failed: no trained weights
    kept = onnx.load(str(rejected))  # the int8 graph that was measured, with its metadata and memory record
    props = {p.key for p in kept.metadata_props}
    assert {"lvvit.precision", "lvvit.export_memory"} <= props
    assert any(n.op_type == "QuantizeLinear" for n in kept.graph.node)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([rejected.name, target.name])


def test_sample_photos_without_scikit_image_name_the_extra(tmp_path):
    code = "from validation.cli import main; sys.exit(main(['photos', *sys.argv[1:]]))"
    run = subprocess.run([*_hidden("skimage", code), str(tmp_path / "photos")], capture_output=True, text=True,
                         cwd=ROOT)  # fmt: skip
    assert run.returncode == 2
    assert f"install -e {shlex.quote(f'{ROOT}[photos]')}" in run.stderr
    assert "error: the sample photographs ship in scikit-image's wheel, which is not installed" in run.stderr


def test_accuracy_control_on_openvino_needs_openvino_before_any_work(tmp_path):
    code = (
        "from exporters.onnx.preflight import check_requirements\n"
        "from exporters.onnx import FastPath\n"
        f"fast = FastPath(quantize='int8', calibration={str(tmp_path)!r}, quantizer='ort', accuracy_control=True, "
        "control_runtime='openvino')\n"
        "check_requirements(fast, True)\n"
    )
    run = subprocess.run(_hidden("openvino", code), capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0 and "missing packages, nothing was started" in run.stderr
    assert "openvino: " in run.stderr and "(--control-runtime openvino; or --control-runtime ort)" in run.stderr


@pytest.mark.parametrize("kind", ["zen3", "skylake_sp", "zen4", "sapphire_rapids"])
def test_accuracy_control_at_bf16_is_refused_up_front_on_a_cpu_without_bf16(kind, tmp_path, monkeypatch):
    """Every branch on every CPU: the CPU is read from stored cpuinfo files (Zen 3 and Skylake-SP have no bf16)."""
    from exporters.errors import ExportError
    from exporters.onnx.preflight import check_requirements
    from tests.conftest import CPUINFO_DIR

    pytest.importorskip("openvino")
    monkeypatch.setenv("LVVIT_CPUINFO", str(CPUINFO_DIR / f"{kind}.txt"))
    fast = FastPath(quantize="int8", calibration=tmp_path, quantizer="ort", accuracy_control=True,
                    control_runtime="openvino", control_precision="bf16")  # fmt: skip
    if kind in ("zen3", "skylake_sp"):
        with pytest.raises(ExportError, match=r"--control-precision bf16 needs a CPU with native bf16 \(avx512_bf16 "
                                              rf"or amx_bf16\), and .*{kind}\.txt lists neither"):  # fmt: skip
            check_requirements(fast, True)
    else:
        check_requirements(fast, True)  # nothing to refuse
    check_requirements(FastPath(quantize="int8", calibration=tmp_path, quantizer="ort"), True)  # f32: any CPU


def test_a_failed_gate_on_trained_weights_blames_no_random_initialisation(tmp_path, photo_folder, monkeypatch):  # noqa: F811
    import exporters.onnx.quantize as quantize
    from exporters.onnx import export_onnx
    from validation.datasets import digits

    monkeypatch.setattr(quantize, "quantize_int8", _negated(quantize.quantize_int8))
    fast = FastPath(quantize="int8", calibration=photo_folder, calibration_count=6)
    with pytest.raises(Int8GateError) as failure:
        export_onnx(digits.digits_spec(), weights=digits.WEIGHTS, output=tmp_path / "m/", fast=fast, log=lambda m: None)
    assert "--min-int8-agreement " in str(failure.value).splitlines()[-1]
    assert "random initialisation" not in str(failure.value)


def test_calibration_spreads_over_a_folder_sorted_by_class(tmp_path):
    """ImageNet's layout is one folder per class, sorted: the first images by path are one class. Calibration and
    the gate must see every class, and an unreadable pick is replaced, not lost."""
    import numpy as np
    from PIL import Image

    from exporters.onnx.quantize import EVALUATION_LIMIT, find_calibration_images
    from lvvit import resolve_preset

    classes, per_class = 8, 40  # 320 images: more than the gate's EVALUATION_LIMIT
    rng = np.random.default_rng(0)
    for c in range(classes):
        (tmp_path / f"n{c:08d}").mkdir()
        for i in range(per_class):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / f"n{c:08d}" / f"{i:03d}.png")
    broken = tmp_path / "n00000000" / "000.png"  # the first pick of every spread
    broken.write_bytes(b"not a png")

    found = find_calibration_images(tmp_path, resolve_preset("lvvit_s").preprocess, limit=classes)
    assert sorted(path.parent.name for path in found.used) == [f"n{c:08d}" for c in range(classes)]
    assert len(found.evaluation) == EVALUATION_LIMIT and set(found.used) <= set(found.evaluation)
    counts = {f"n{c:08d}": 0 for c in range(classes)}
    for path in found.evaluation:
        counts[path.parent.name] += 1
    assert min(counts.values()) >= EVALUATION_LIMIT // classes - 1, counts
    assert found.evaluation == sorted(found.evaluation)
    assert [path for path, _ in found.skipped] == [broken]
