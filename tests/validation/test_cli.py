"""`python -m validation`'s command line: one flag vocabulary, old spellings as hidden deprecated aliases, the
tools as subcommands, `--engine` from the engine registry, and typed options read once from the Namespace."""

from __future__ import annotations

from pathlib import Path

import pytest

from validation.cli import COMMANDS, build_parser


def _parse(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "dest", "value", "old"),
    [
        (["bench", "--preset", "lvvit_s", "--output", "r"], "report_dir", Path("r"), "--output"),
        (["bench", "--preset", "lvvit_s", "--workdir", "w"], "work_dir", Path("w"), "--workdir"),
        (["bench", "--preset", "lvvit_s", "--limit-images", "3"], "limit", 3, "--limit-images"),
        (["report", "x.json", "--output-dir", "r"], "report_dir", Path("r"), "--output-dir"),
        (["engine-bench", "--workdir", "w"], "work_dir", Path("w"), "--workdir"),
        (["engine-bench", "--images", "5"], "count", 5, "--images"),
        (["export-memory", "--work", "w"], "work_dir", Path("w"), "--work"),
        (["ov-layers", "f.onnx", "--batch", "2", "--runs", "1"], "batch_size", 2, "--batch"),
        (["ort-fusions", "--batch", "2"], "batch_size", 2, "--batch"),
    ],
)
def test_old_spellings_still_work_with_a_note_and_stay_out_of_help(capsys, argv, dest, value, old):
    args = _parse(*argv)
    assert getattr(args, dest) == value
    assert f"{old} is deprecated, use --" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(argv[0], "--help")
    assert f"{old} " not in capsys.readouterr().out


@pytest.mark.parametrize("command", ["drift", "accuracy", "reference", "report", "bench", "locate",
                                     "engine-bench", "export-memory", "ov-layers", "ort-fusions", "stream-latency",
                                     "photos"])  # fmt: skip
def test_help_lists_only_the_new_spellings(capsys, command):
    with pytest.raises(SystemExit):
        _parse(command, "--help")
    text = capsys.readouterr().out
    for old in ("--output-dir", "--workdir", "--limit-images", "--calibration", "--runs "):
        assert old not in text
    if command in ("drift", "accuracy", "reference", "locate", "bench"):
        assert "--no-progress" in text
    if command in ("drift", "accuracy", "locate", "bench", "report"):
        assert "--report-dir" in text
    if command in ("drift", "accuracy", "locate", "bench", "report"):
        assert "--name" in text


def test_reference_lists_no_flag_it_ignores(capsys):
    with pytest.raises(SystemExit):
        _parse("reference", "--help")
    text = capsys.readouterr().out
    assert "--images" in text and "--cache" in text
    assert not any(flag in text for flag in ("--onnx", "--paddle-inference", "--work-dir", "--report-dir"))


def test_locate_lists_no_paddle_inference_file(capsys):
    with pytest.raises(SystemExit):
        _parse("locate", "--help")
    text = capsys.readouterr().out
    assert "--onnx" in text and "--paddle-inference" not in text  # it compares the .onnx file only


def test_the_positional_folder_of_accuracy_and_reference_is_a_deprecated_images(capsys, tmp_path):
    from validation.cli.accuracy import DataOptions
    from validation.cli.reference import ReferenceOptions
    from validation.errors import DatasetError

    args = _parse("accuracy", str(tmp_path), "--preset", "lvvit_s")
    assert DataOptions.from_args(args).images == tmp_path
    assert "the positional DATA is deprecated, use --images DATA" in capsys.readouterr().err
    args = _parse("reference", "--images", str(tmp_path), "--cache", "c", "--preset", "lvvit_s")
    assert ReferenceOptions.from_args(args).images == tmp_path
    with pytest.raises(DatasetError, match="accuracy needs --images DIR"):
        DataOptions.from_args(_parse("accuracy", "--preset", "lvvit_s"))


def test_agreement_is_a_fraction_on_both_commands(capsys):
    from validation.cli.accuracy import agreement_as_percent
    from validation.core import gate

    assert agreement_as_percent(("agreement=0.995", "top1_diff=0.5")) == ["agreement=99.5", "top1_diff=0.5"]
    assert capsys.readouterr().err == ""
    assert agreement_as_percent(("agreement=99",)) == ["agreement=99"]  # an old percent, taken as it is
    assert "is deprecated, use a fraction" in capsys.readouterr().err
    limits = gate.parse_tolerance(agreement_as_percent(("agreement=0.9",)), gate.ACCURACY_LIMITS, {})
    assert limits == {"agreement": 90.0}  # the report's unit, so reports written before keep loading
    with pytest.raises(SystemExit):
        _parse("accuracy", "--help")
    assert "agreement=0.995" in capsys.readouterr().out.replace("\n", " ").replace("  ", "")


def test_engine_choices_come_from_the_registry(monkeypatch, capsys):
    from validation.engines import local

    monkeypatch.setitem(local.ENGINES, "standin", local.EngineKind("standin", "a test's engine", local._open_local))
    args = _parse("drift", "--preset", "lvvit_s", "--engine", "standin")
    assert args.engine == "standin"
    with pytest.raises(SystemExit):
        _parse("drift", "--help")
    assert "standin: a test's engine" in capsys.readouterr().out


def test_every_command_module_has_add_parser_and_main():
    import importlib

    for name in COMMANDS:
        module = importlib.import_module(f"validation.cli.{name}")
        assert callable(module.add_parser) and callable(module.main), name


def test_typed_options_are_read_once_and_frozen(tmp_path):
    import dataclasses

    from validation.cli.options import ImageOptions, ModelOptions, ReportOptions, RunOptions

    args = _parse("drift", "--preset", "lvvit_s", "--report-dir", str(tmp_path), "--name", "n", "--no-progress",
                  "--synthetic", "3", "--engine", "local")  # fmt: skip
    args.argv = ("python", "-m", "validation", "drift")
    options = RunOptions.from_args(args)
    assert options.model == ModelOptions(preset="lvvit_s")
    assert options.report == ReportOptions(tmp_path, "n", (), False, ("python", "-m", "validation", "drift"))
    assert options.runtimes == ("ort",) and options.engine.engine == "local"
    inputs = ImageOptions.from_args(args).inputs(seed=0, default_synthetic=16)
    assert inputs.synthetic == 3 and inputs.folder is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.report.name = "other"  # type: ignore[misc]
