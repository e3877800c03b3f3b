"""The runtime registry: a runtime is one row; registering one makes every command accept it by name."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import runtimes
from runtimes import ConfigurationError, PredictorClosedError, PredictorSpec, open_probe, registry

from . import standin_runtime as standin


@pytest.fixture
def standin_row():
    """The stand-in runtime registered for one test, and removed after it."""
    registry.register(standin.ROW)
    try:
        yield standin.ROW
    finally:
        registry.unregister(standin.NAME)


# -- the rows ------------------------------------------------------------------------------------------------------


def test_the_kits_runtimes_are_rows():
    assert registry.names() == ["paddle", "ort", "openvino", "paddle-inference"]
    assert dict(runtimes.RUNTIMES) == {row.name: row.description for row in registry.rows()}
    assert registry.REFERENCE == "paddle" and registry.get("paddle").model_kind is None
    assert registry.with_model_files() == ["ort", "openvino", "paddle-inference"]
    assert registry.with_model_files(["onnx"]) == ["ort", "openvino"]
    assert registry.with_extra_outputs() == ["ort", "openvino"]
    assert {"onnxruntime", "onnxruntime-gpu", "openvino", "paddlepaddle"} <= set(registry.distributions())
    assert registry.get("openvino").install_hint == "pip install 'lvvit-deploy[openvino]'"


def test_an_unknown_runtime_names_the_valid_ones():
    with pytest.raises(ConfigurationError, match=r"unknown runtime 'tensorflow'; valid: paddle, ort, openvino"):
        registry.get("tensorflow")
    with pytest.raises(ConfigurationError, match=r"runtime 'paddle' takes no model file; valid: ort, openvino"):
        registry.model_files("paddle", "x.onnx")
    with pytest.raises(ConfigurationError, match=r"model kind 'tflite'"):
        registry.Runtime("tfl", "TFLite", "x", "Y", "tflite")


def test_one_name_per_runtime_and_the_old_one_still_reads():
    assert registry.canonical("onnxruntime") == "ort" and registry.canonical("openvino") == "openvino"
    with pytest.raises(ConfigurationError, match=r"already registered"):
        registry.register(registry.Runtime("onnxruntime", "again", "runtimes.ort", "OrtPredictor", "onnx"))
    assert runtimes.OrtPredictor.runtime == "ort"


def test_messages_name_a_precision_only_where_it_ran():
    """OpenVINO's float parts run at the precision asked for, so its messages say so; f32 (every runtime's
    default) goes unsaid, and no message claims bf16 for ONNX Runtime, which has no such option."""
    assert registry.precision_note("openvino", "bf16") == " at bf16"
    assert registry.precision_note("openvino", "f32") == ""
    assert registry.precision_note("ort", "bf16") == ""


def test_importing_the_registry_imports_no_runtime():
    import subprocess
    import sys

    code = (
        "import sys, runtimes; from runtimes import registry; registry.names(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('paddle', 'openvino', 'onnxruntime')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]


# -- flags generated from the rows ---------------------------------------------------------------------------------


def _parser(only=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    registry.add_runtime_arguments(parser.add_argument_group("runtimes"), only)
    return parser


def test_flags_keep_their_spellings_and_fill_the_options():
    args = _parser().parse_args(["--ort-device", "auto", "--openvino-precision", "bf16"])
    assert (args.ort_device, args.openvino_device, args.openvino_precision) == ("auto", "CPU", "bf16")
    assert registry.options_from(vars(args), "ort") == {"device": "auto"}
    assert registry.options_from(vars(args), "openvino") == {"device": "CPU", "precision": "bf16"}
    assert registry.options_from({}, "openvino") == registry.get("openvino").defaults()
    assert registry.options_from(vars(args), "paddle-inference") == {}
    with pytest.raises(SystemExit):
        _parser().parse_args(["--ort-device", "tpu"])


def test_a_registered_row_adds_its_flag_and_goes_away_again(standin_row):
    assert standin.NAME in runtimes.RUNTIMES and standin.NAME in registry.names()
    assert runtimes.StandinPredictor is standin.StandinPredictor  # `from runtimes import ...`, as for the kit's
    assert "--ort-standin-flavour" in _parser().format_help()
    args = _parser().parse_args(["--ort-standin-flavour", "spicy"])
    assert registry.options_from(vars(args), standin.NAME) == {"flavour": "spicy"}
    assert "--ort-standin-flavour" not in _parser(["ort"]).format_help()


def test_after_unregistering_the_name_is_unknown():
    assert standin.NAME not in registry.names() and standin.NAME not in runtimes.RUNTIMES
    with pytest.raises(ConfigurationError, match=rf"unknown runtime '{standin.NAME}'"):
        registry.get(standin.NAME)


# -- a registered runtime opens through the kit's own paths ----------------------------------------------------------


def test_a_spec_opens_the_registered_backend(standin_row, tiny):
    spec = PredictorSpec.for_model(standin.NAME, tiny.onnx, flavour="spicy", threads=1)
    with spec.open() as predictor, runtimes.OrtPredictor(tiny.onnx, threads=1) as reference:
        assert isinstance(predictor, standin.StandinPredictor) and predictor.describe()["flavour"] == "spicy"
        x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
        np.testing.assert_allclose(predictor.logits(x), reference.logits(x), atol=1e-6)


@pytest.mark.parametrize("runtime", registry.with_extra_outputs())
def test_a_probe_returns_the_marked_outputs_by_name(tiny, runtime):
    import onnx

    if runtime == "openvino":
        pytest.importorskip("openvino")
    from exporters.onnx.stage_map import with_outputs

    proto = onnx.load(str(tiny.onnx))
    inner = next(n.output[0] for n in proto.graph.node if n.op_type == "LayerNormalization")
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with open_probe(with_outputs(proto, [inner]), runtime, threads=1) as probe:
        values = probe.run(x)
        assert set(values) == set(probe.outputs) and inner in values and probe.has(inner)
        assert values[inner].shape[0] == 2 and probe.describe()["runtime"] == runtime
    with pytest.raises(PredictorClosedError, match=rf"this {runtime} probe is closed"):
        probe.run(x)
    with runtimes.OrtPredictor(tiny.onnx) as predictor:
        np.testing.assert_allclose(values[proto.graph.output[0].name], predictor.logits(x), atol=1e-5)


def test_a_runtime_without_a_probe_says_which_have_one(tiny):
    with pytest.raises(ConfigurationError, match=r"'paddle-inference' cannot expose .*valid: ort, openvino"):
        open_probe(str(tiny.onnx), "paddle-inference")


# -- every command accepts a registered runtime by name ---------------------------------------------------------------

TINY_MODEL = ["--preset", "lvvit_s", "--resolution", "64", "--arch", "embed_dim=64,depth=2,num_heads=4,num_classes=10"]


def _validate(*argv: str) -> int:
    from validation.cli import main

    return main(list(argv))


@pytest.mark.parametrize("command", ["drift", "accuracy", "locate"])
def test_a_registered_runtime_is_in_every_commands_help(standin_row, command, capsys):
    with pytest.raises(SystemExit) as done:
        _validate(command, "--help")
    page = capsys.readouterr().out
    assert done.value.code == 0 and standin.NAME in page
    if command != "locate":  # locate runs every runtime on the CPU, with its own settings
        assert "--ort-standin-flavour" in page and "--ort-device" in page


def test_bench_lists_a_registered_runtime_for_a_users_file(standin_row, tiny, capsys):
    from lvvit import resolve_preset
    from validation.perf.bench import user_file_paths

    with pytest.raises(SystemExit):
        _validate("bench", "--help")
    assert f"file-{standin.NAME}" in capsys.readouterr().out
    spec = resolve_preset("lvvit_s", 64, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    paths = {p.name: p for p in user_file_paths(tiny.onnx, spec, None, threads=1, streams=1)}
    assert set(paths) == {"file-ort", "file-openvino", f"file-{standin.NAME}"}
    with paths[f"file-{standin.NAME}"].spec(None, spec, None).open() as predictor:
        assert isinstance(predictor, standin.StandinPredictor)


def test_drift_and_locate_run_a_registered_runtime(standin_row, tiny, tmp_path, capsys):
    common = [*TINY_MODEL, "--onnx", str(tiny.onnx), "--synthetic", "4", "--report-dir", str(tmp_path), "--no-progress"]
    assert _validate("drift", *common, "--runtime", standin.NAME, "--ort-standin-flavour", "spicy") == 0
    report = json.loads((tmp_path / "drift_lvvit_s_64.json").read_text())
    described = report["runtimes"][standin.NAME]["describe"]
    assert described["runtime"] == standin.NAME and described["flavour"] == "spicy"
    assert report["runtimes"][standin.NAME]["outputs"]["logits"]["max_abs"] < 1e-4
    assert _validate("locate", *common, "--runtime", standin.NAME) == 0
    located = json.loads((tmp_path / "locate_lvvit_s_64.json").read_text())
    assert located["runtimes"][standin.NAME]["first_over"] is None
    assert f"{standin.NAME}: " in capsys.readouterr().out


def test_accuracy_runs_a_registered_runtime(standin_row, tiny, tmp_path):
    from lvvit.synthetic import synthetic_image

    for label in ("cat", "dog"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for k in range(2):
            synthetic_image(k + 3 * len(label)).save(tmp_path / "data" / label / f"{k}.png")
    argv = ["accuracy", "--images", str(tmp_path / "data"), *TINY_MODEL, "--onnx", str(tiny.onnx)]
    argv += ["--runtime", standin.NAME]
    assert _validate(*argv, "--report-dir", str(tmp_path / "reports"), "--no-progress") == 0
    (written,) = (tmp_path / "reports").glob("accuracy_*.json")
    entry = json.loads(written.read_text())["runtimes"][standin.NAME]
    assert entry["describe"]["runtime"] == standin.NAME and entry["agreement"] == 100.0  # a percent
