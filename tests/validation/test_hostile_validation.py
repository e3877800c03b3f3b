"""Hostile and stale files around a validation run: shards, the reference cache, specs, reports, Ray addresses.

What a report certifies must be what ran: a resumed run never reuses numbers computed under other versions or
from images that changed since, an edited shard or cache is never read as if the kit had written it, and every
bad file gets the kit's typed error naming the file, in bounded time and memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal

import numpy as np
import pytest

from lvvit.common import versions as version_module
from tests.validation.scale_fixtures import make_digits_model, numbers, write_digits_subset
from validation import run_accuracy
from validation.core.data import Sample, labelled_folder
from validation.core.runners import ModelSource
from validation.datasets import digits
from validation.engines.local import engine_for
from validation.engines.reference_cache import ReferenceCache, ReferenceCacheError, reference_key
from validation.engines.shards import ShardError
from validation.reports.write import write_reports


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_digits_model(tmp_path_factory.mktemp("hostile_validation"))


@pytest.fixture(scope="module")
def local(model):
    """The digits model's paddle and ort runners, opened once for the module (the engine is stateless per run)."""
    _, _, specs = model
    with engine_for(specs, batch_size=8) as opened:
        yield opened


def accuracy(local, data, folder, shard_size=15, **kwargs):
    reference, others, engine = local
    dataset = labelled_folder(data, num_classes=10)
    report = run_accuracy(
        reference, others, dataset, engine=engine, shard_dir=folder, shard_size=shard_size, progress=False, **kwargs
    )
    return report.to_json()


def write_bmp_digits(folder):
    """An ImageNet-layout folder of BMP digits: every file has the same size, so a changed image keeps its size."""
    write_digits_subset(folder, 45, "d{:02d}.bmp")
    return folder, digits.load_digits()[0]


def source_of(model):
    onnx, _, _ = model
    return ModelSource(spec=digits.digits_spec(), weights=digits.WEIGHTS, onnx=onnx)


# -- defect 1: an upgrade between two runs ---------------------------------------------------------------------------


def test_an_upgraded_runtime_recomputes_every_shard_and_the_report_names_what_computed(
    model, local, tmp_path, monkeypatch, capsys
):
    import onnxruntime

    _, data, _ = model
    folder = tmp_path / "acc.shards"
    first = accuracy(local, data, folder)
    installed = onnxruntime.__version__
    assert first["shards"]["computed"] == 3
    assert first["runtimes"]["ort"]["describe"]["versions"]["onnxruntime"] == installed
    monkeypatch.setattr(onnxruntime, "__version__", "9.9.9")  # what `pip install onnxruntime==9.9.9` changes
    capsys.readouterr()
    upgraded = accuracy(local, data, folder)
    said = capsys.readouterr().err
    assert upgraded["shards"]["computed"] == 3  # not one shard of the older version reused
    assert f"ort: onnxruntime {installed} -> 9.9.9" in said and "computing them again" in said
    assert upgraded["runtimes"]["ort"]["describe"]["versions"]["onnxruntime"] == "9.9.9"
    assert numbers(upgraded["runtimes"]["ort"]) == numbers(first["runtimes"]["ort"])
    again = accuracy(local, data, folder)
    assert again["shards"]["computed"] == 0  # the same versions resume as before


def test_a_reference_cache_is_rebuilt_after_a_paddle_upgrade_and_reports_the_paddle_that_computed_it(
    model, tmp_path, monkeypatch, capsys
):
    _, data, specs = model
    samples = labelled_folder(data, num_classes=10).samples
    source = source_of(model)
    cache = ReferenceCache.create(tmp_path / "cache", reference_key(source), classes=10)
    with engine_for({"paddle": specs["paddle"]}, batch_size=8) as (_, _, engine):
        assert cache.build(samples, 20, engine) == 3
        real = version_module.package_version
        monkeypatch.setattr(version_module, "package_version", lambda n: "9.9.9" if n == "paddlepaddle" else real(n))
        capsys.readouterr()
        upgraded = ReferenceCache.create(tmp_path / "cache", reference_key(source), classes=10)
        assert upgraded.build(samples, 20, engine) == 3
    assert "paddlepaddle" in capsys.readouterr().err
    monkeypatch.setattr(version_module, "package_version", real)  # Paddle "downgraded": the cache is still used
    opened = ReferenceCache.open(tmp_path / "cache", reference_key(source))
    with engine_for({"ort": specs["ort"]}, batch_size=8, reference_cache=opened) as (reference, others, engine):
        report = run_accuracy(
            reference, others, labelled_folder(data, num_classes=10), engine=engine, progress=False
        ).to_json()
    assert report["reference"]["describe"]["versions"]["paddlepaddle"] == "9.9.9"  # what computed the logits
    assert "paddlepaddle 9.9.9" in report["engine"]["reference"]


# -- edited files ----------------------------------------------------------------------------------------------------


def reseal(path):
    """Recompute a shard file's closing checksum, as a careful forger would."""
    lines = path.read_bytes().splitlines(keepends=True)[:-1]
    digest = hashlib.sha256(b"".join(lines)).hexdigest()
    path.write_bytes(b"".join(lines) + (json.dumps({"sha256": digest}) + "\n").encode())


def _edit_label(lines):
    record = json.loads(lines[1])
    record["label"] = (record["label"] + 1) % 10
    lines[1] = json.dumps(record)


def _duplicate_header(lines):
    lines.insert(1, lines[0])


def _negative_count(lines):
    header = json.loads(lines[0])
    header["histograms"] = {"x": [-1]}
    lines[0] = json.dumps(header)


def _edit_prediction(lines):
    record = json.loads(lines[1])
    record["top5"]["ort"] = list(reversed(record["top5"]["ort"]))
    lines[1] = json.dumps(record)


def _label_as_text(lines):
    record = json.loads(lines[1])
    record["label"] = str(record["label"])
    lines[1] = json.dumps(record)


def _empty_record(lines):
    lines[1] = "{}"


def _reshaped_top5(lines):
    record = json.loads(lines[1])
    record["top5"]["paddle"] = [record["top5"]["paddle"]]
    lines[1] = json.dumps(record)


def _deep_nesting(lines):
    lines[1] = "[" * 100_000 + "]" * 100_000


def _nan_seconds(lines):
    header = json.loads(lines[0])
    header["seconds"]["ort"] = float("nan")
    lines[0] = json.dumps(header)


SHARD_EDITS = {  # what the kit says once the forger has also recomputed the closing checksum
    "a changed label": (_edit_label, r"label \d, the run's label is \d"),
    "a duplicated header": (_duplicate_header, "holds 16 records for 15 images"),
    "negative histogram counts": (_negative_count, "histograms"),
    "a label as text": (_label_as_text, 'label "\\d"'),
    "an empty record": (_empty_record, r"has the fields \[\]"),
    "reshaped top-5 rows": (_reshaped_top5, "paddle's top-5 is not a list of 5 class ids"),
    "deep nesting": (_deep_nesting, "nested too deeply"),
    "NaN seconds": (_nan_seconds, "seconds"),
}
CASES = [(case, False) for case in [*SHARD_EDITS, "an edited prediction"]] + [(case, True) for case in SHARD_EDITS]


@pytest.mark.parametrize(("case", "resealed"), CASES, ids=[f"{c}-{'resealed' if r else 'edited'}" for c, r in CASES])
def test_an_edited_shard_is_refused_naming_the_file(model, local, tmp_path, case, resealed):
    edit, message = SHARD_EDITS.get(case, (_edit_prediction, None))
    _, data, _ = model
    folder = tmp_path / "acc.shards"
    before = accuracy(local, data, folder)
    shard = folder / "shard-00000.jsonl"
    lines = shard.read_text().splitlines()
    closing = lines.pop()
    edit(lines)
    shard.write_text("\n".join(lines) + "\n" + closing + "\n")
    if resealed:
        reseal(shard)
    match = message if resealed else "checksum does not match|nested too deeply"
    with pytest.raises(ShardError, match=r"shard-00000\.jsonl: .*(" + match + ")"):
        accuracy(local, data, folder)
    shard.unlink()  # the documented way out: remove the file, and the same command computes it again
    assert numbers(accuracy(local, data, folder)["runtimes"]["ort"]) == numbers(before["runtimes"]["ort"])


def _cache(model, tmp_path, samples):
    _, _, specs = model
    cache = ReferenceCache.create(tmp_path / "cache", reference_key(source_of(model)), classes=10)
    with engine_for({"paddle": specs["paddle"]}, batch_size=8) as (_, _, engine):
        cache.build(samples, 20, engine)
    return cache


def _logits_edited(folder):
    path = folder / "logits-00000.npy"
    logits = np.load(path)
    logits[0, 0] += 1.0
    np.save(path, logits)
    return r"logits-00000\.npy: its SHA-256 is not the one images-00000\.json recorded"


def _logits_nan_resealed(folder):
    from validation.core.stored import file_sha256, sealed

    path = folder / "logits-00000.npy"
    logits = np.load(path)
    logits[0, 0] = np.nan
    np.save(path, logits)
    images = json.loads((folder / "images-00000.json").read_text())
    images.pop("sha256")
    images["logits_sha256"] = file_sha256(path)[1]
    (folder / "images-00000.json").write_text(json.dumps(sealed(images)))
    return r"logits-00000\.npy: holds 1 NaN or infinite logit"


def _logits_empty(folder):
    (folder / "logits-00001.npy").write_bytes(b"")
    return r"logits-00001\.npy: its SHA-256"


def _logits_truncated(folder):
    path = folder / "logits-00002.npy"
    path.write_bytes(path.read_bytes()[:100])
    return r"logits-00002\.npy: its SHA-256"


def _images_deep(folder):
    (folder / "images-00000.json").write_text("[" * 100_000 + "]" * 100_000)
    return r"images-00000\.json: its JSON is nested too deeply"


def _images_name_edited(folder):
    path = folder / "images-00000.json"
    path.write_text(path.read_text().replace("digit_0000", "digit_0001", 1))
    return r"images-00000\.json: its checksum does not match"


def _key_deep(folder):
    (folder / "reference.json").write_text("[" * 100_000 + "]" * 100_000)
    return r"reference\.json: its JSON is nested too deeply"


CACHE_EDITS = {
    "edited logits": _logits_edited,
    "NaN logits, resealed": _logits_nan_resealed,
    "an empty logits file": _logits_empty,
    "a truncated logits file": _logits_truncated,
    "deep nesting in an images file": _images_deep,
    "an edited image list": _images_name_edited,
    "deep nesting in reference.json": _key_deep,
}


@pytest.mark.parametrize("case", list(CACHE_EDITS))
def test_an_edited_reference_cache_is_refused_naming_the_file(model, tmp_path, case):
    _, data, _ = model
    samples = labelled_folder(data, num_classes=10).samples
    cache = _cache(model, tmp_path, samples)
    match = CACHE_EDITS[case](cache.folder)
    with pytest.raises(ReferenceCacheError, match=match):
        ReferenceCache.open(cache.folder, reference_key(source_of(model))).lookup(samples)


# -- stale data ------------------------------------------------------------------------------------------------------


def test_images_changed_on_disk_are_computed_again_and_refused_by_the_cache(model, local, tmp_path, capsys):
    data, images = write_bmp_digits(tmp_path / "bmp")
    folder = tmp_path / "acc.shards"
    before = accuracy(local, data, folder)
    sizes = {p.name: p.stat().st_size for p in (data / "val").iterdir()}
    for i in range(10):  # ten images replaced by other digits: same names, same sizes
        digits.digit_image(images[100 + i]).save(data / "val" / f"d{i:02d}.bmp")
    assert {p.name: p.stat().st_size for p in (data / "val").iterdir()} == sizes
    capsys.readouterr()
    resumed = accuracy(local, data, folder)
    assert "10 image(s) changed since it was computed (val/d00.bmp" in capsys.readouterr().err
    assert resumed["shards"]["computed"] == 1  # the one shard that holds them
    fresh = accuracy(local, data, tmp_path / "fresh.shards")
    assert numbers(resumed["reference"]) == numbers(fresh["reference"])
    assert resumed["reference"]["top1"] != before["reference"]["top1"]
    samples = labelled_folder(data, num_classes=10).samples
    cache = _cache(model, tmp_path, samples)
    digits.digit_image(images[200]).save(data / "val" / "d44.bmp")
    with pytest.raises(ReferenceCacheError, match=r"d44\.bmp: \d+ bytes, sha256 .* now; the cached reference saw"):
        ReferenceCache.open(cache.folder, reference_key(source_of(model))).lookup(samples)


def test_a_limited_reference_then_a_full_build_covers_every_image(model, tmp_path, capsys):
    _, data, specs = model
    samples = labelled_folder(data, num_classes=10).samples
    cache = ReferenceCache.create(tmp_path / "cache", reference_key(source_of(model)), classes=10)
    with engine_for({"paddle": specs["paddle"]}, batch_size=8) as (_, _, engine):
        assert cache.build(samples[:5], 1000, engine) == 1
        assert cache.build(samples, 1000, engine) == 1  # shard 0 held 5 images, not the first 1000: computed again
    assert "45 image(s) differ from the ones it was computed from" in capsys.readouterr().err
    assert ReferenceCache.open(cache.folder, reference_key(source_of(model))).lookup(samples).shape == (45, 10)


def test_image_names_are_compared_normalised(model, tmp_path):
    _, data, _ = model
    cache = _cache(model, tmp_path, labelled_folder(data, num_classes=10).samples)
    dotted = [Sample(s.path, "./" + s.name, s.label) for s in labelled_folder(data, num_classes=10).samples]
    found = ReferenceCache.open(cache.folder, reference_key(source_of(model))).lookup(dotted)
    assert found.shape == (45, 10) and np.isfinite(found).all()


def test_a_killed_writers_leftovers_are_swept_on_resume(model, local, tmp_path):
    import subprocess
    import sys

    _, data, _ = model
    folder = tmp_path / "acc.shards"
    accuracy(local, data, folder)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended: what kill -9 leaves
    left = [folder / f".run.json.pid{pid}-x1.part", folder / f".shard-00001.jsonl.pid{pid}-x2.part"]
    staging = tmp_path / f".lvvit-staging-pid{pid}-x3.part"
    for path in left:
        path.write_text("partial")
    staging.mkdir()
    (staging / "accuracy.md").write_text("partial")
    live = folder / f".run.json.pid{os.getpid()}-x4.part"  # a writer at work: left alone
    live.write_text("partial")
    report = accuracy(local, data, folder)
    assert not any(p.exists() for p in left) and live.exists()
    write_reports(report, tmp_path, "acc")  # the report folder's staging leftovers go when a report set is written
    assert not staging.exists() and (tmp_path / "acc.md").is_file()


# -- untyped crashes and unbounded costs -----------------------------------------------------------------------------


def test_a_huge_shard_line_is_refused_in_bounded_memory(model, local, tmp_path):
    """A 128 MiB record line: refused after reading its first 256 KiB, in a child that measures its peak memory."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    _, data, _ = model
    folder = tmp_path / "acc.shards"
    accuracy(local, data, folder)
    shard = folder / "shard-00000.jsonl"
    with shard.open("r+b") as f:
        first = f.readline()
        f.seek(len(first))
        f.write(b'{"name": "' + b"x" * (128 << 20) + b'"}\n')
    code = (
        "from validation.engines.shards import read_shard_file, ShardError\n"
        "try:\n"
        f"    read_shard_file(__import__('pathlib').Path({str(shard)!r}))\n"
        "except ShardError as exc:\n"
        "    print(exc)\n"
        # VmHWM, the peak of this process's own memory (ru_maxrss would carry pytest's over the exec)
        "print(next(int(x.split()[1]) >> 10 for x in open('/proc/self/status') if x.startswith('VmHWM')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    message, peak = done.stdout.strip().splitlines()
    assert "shard-00000.jsonl: line 2 is longer than 262144 bytes" in message, done.stderr
    assert int(peak) < 200, f"{peak} MiB to refuse one line"


def _report(tmp_path, model, local):
    _, data, _ = model
    report = accuracy(local, data, tmp_path / "acc.shards")
    write_reports(report, tmp_path, "acc")
    return json.loads((tmp_path / "acc.json").read_text())


def test_a_report_with_a_huge_integer_or_a_thousand_runtimes_renders_in_bounded_time(model, local, tmp_path):
    import time

    from validation.errors import ValidationError
    from validation.reports.write import render

    report = _report(tmp_path, model, local)
    huge = {**report, "chance_top1": 10**4000}
    with pytest.raises(ValidationError, match=r"the accuracy report lacks or garbles a field .*OverflowError"):
        render(huge, tmp_path / "huge", "huge")
    many = {**report, "runtimes": {f"rt{i}": report["runtimes"]["ort"] for i in range(300)}}
    started = time.perf_counter()
    written = render(many, tmp_path / "many", "many")
    seconds = time.perf_counter() - started
    page = written["markdown"].read_text()
    assert "(the first 12 of 300 runtimes; the tables list every one)" in page and "rt299" in page
    assert page.count("**PASS**: rt") == 300  # every runtime's verdict is on the page
    assert seconds < 40, f"{seconds:.1f} s to render 300 runtimes"


SPECS = {
    "a file name with ../": (lambda f: {"files": (f.__class__("../escaped.sh", 1, "0" * 64),)}, "bare file names"),
    "an absolute file name": (lambda f: {"files": (f.__class__("/tmp/x.onnx", 1, "0" * 64),)}, "bare file names"),
    "no file": (lambda f: {"files": ()}, "this ort spec names no model file"),
    "files as strings": (lambda f: {"files": ("model.onnx",)}, "files must be ModelFile entries, got str"),
    "a bad hash": (lambda f: {"files": (f.__class__(f.name, f.size, "nope"),)}, "'nope' is not a hex SHA-256"),
    "a negative size": (lambda f: {"files": (f.__class__(f.name, -1, f.sha256),)}, "size -1 is not a number"),
    "an unknown runtime": (lambda f: {"runtime": "tensorflow"}, "unknown runtime 'tensorflow'"),
    "options not pairs": (lambda f: {"options": ("threads",)}, "options must be \\(name, value\\) pairs"),
}


@pytest.mark.parametrize("case", list(SPECS))
def test_a_malformed_or_escaping_spec_is_refused_on_both_sides(model, tmp_path, case):
    """Built here, or unpickled from elsewhere (no __init__ runs): refused before anything is read or written."""
    import dataclasses
    import pickle

    from runtimes.errors import ConfigurationError, ModelFileError

    _, _, specs = model
    spec = specs["ort"]
    change, message = SPECS[case]
    fields = change(spec.files[0])
    with pytest.raises((ConfigurationError, ModelFileError), match=message):
        dataclasses.replace(spec, **fields)
    forged = pickle.loads(pickle.dumps(spec))
    for name, value in fields.items():
        object.__setattr__(forged, name, value)  # what a crafted pickle gives: no __init__, no check
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    if "files" in fields and fields["files"] and not isinstance(fields["files"][0], str):
        object.__setattr__(forged, "folder", str(tmp_path / "folder"))
    for use in (forged.read_files, lambda: forged.materialize({"../escaped.sh": b"x"}, tmp_path / "w"), forged.open):
        with pytest.raises((ConfigurationError, ModelFileError), match=message):
            use()
    assert not (tmp_path / "escaped.sh").exists() and not (tmp_path / "w").exists()


def test_markdown_pages_show_hostile_names_as_text(model, local, tmp_path):
    from validation.reports.write import render

    report = _report(tmp_path, model, local)
    report["inputs"]["unreadable"] = [
        {"name": "<script>alert(1)</script>.png", "reason": "<svg onload=alert(1)>"},
        {"name": "[click](javascript:alert(1)).png", "reason": "a | pipe\nand a new line"},
    ]
    report["environment"]["command"] = ["python", "-m", "validation", "```", "<img src=x onerror=alert(1)>"]
    page = render(report, tmp_path / "r", "r")["markdown"].read_text()
    code = "````\npython -m validation ``` <img src=x onerror=alert(1)>\n````"  # a fence that the text cannot close
    assert code in page
    outside_code = page.replace(code, "")
    for raw in ("<script>", "<svg", "<img"):
        assert raw not in outside_code
    assert not re.search(r"(?<!\\)\]\(javascript:", outside_code)  # no link: its brackets are escaped
    assert "&lt;script>alert(1)&lt;/script>.png" in page and "&lt;svg onload=alert(1)>" in page
    assert "\\[click\\](javascript:alert(1)).png" in page and "a \\| pipe and a new line" in page


# -- Ray -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("junk", r"--ray-address 'junk': expected 'auto' .* or HOST:PORT"),
        ("", r"--ray-address '': expected 'auto'"),
        ("head:99999", r"--ray-address 'head:99999': expected"),
        ("127.0.0.1:1", r"--ray-address 127\.0\.0\.1:1: nothing answers there within 15 s"),
    ],
)
def test_a_bad_ray_address_is_a_typed_error_at_once(address, message):
    import time

    from validation.engines.ray import RayEngine
    from validation.errors import EngineError

    started = time.perf_counter()
    with pytest.raises(EngineError, match=message):
        with RayEngine.start({}, address):
            pass
    assert time.perf_counter() - started < 20


def _lvvit_temporaries():
    import tempfile
    from pathlib import Path

    return {p.name for pattern in ("lvvit-ort-*", "lvvit-paddle-*") for p in Path(tempfile.gettempdir()).glob(pattern)}


def test_a_poison_image_ends_a_ray_run_naming_it_and_no_model_copy_stays(model, monkeypatch):
    """A reader that dies on one image is restarted twice, then the run ends naming the image."""
    ray = pytest.importorskip("ray")
    from validation.engines import ray as ray_engine
    from validation.errors import EngineError

    class Poisoned(ray_engine.ReadImages):  # defined here, so Ray ships it by value to the worker
        def _decode(self, path):
            if path.endswith("digit_0007.png"):
                os._exit(1)  # as a decoder that crashes the process would
            return super()._decode(path)

    _, data, specs = model
    monkeypatch.setattr(ray_engine, "ReadImages", Poisoned)
    before = _lvvit_temporaries()
    samples = labelled_folder(data, num_classes=10).limited(12).samples

    def endless(signum, frame):
        raise TimeoutError("the run did not end in 300 s: Ray restarts the reader for ever")

    previous = signal.signal(signal.SIGALRM, endless)
    signal.alarm(300)
    try:
        with engine_for(specs, "ray", batch_size=4) as (_, _, engine):
            with pytest.raises(EngineError, match=r"digit_0007\.png: reading this image killed the Ray worker"):
                list(engine([(0, samples)]))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if ray.is_initialized():
            ray.shutdown()
    assert _lvvit_temporaries() <= before  # each actor removed its model copy once it had opened it


def test_an_interrupted_ray_run_leaves_no_ray_process(model, tmp_path):
    import subprocess
    import sys
    import time

    import psutil

    pytest.importorskip("ray")
    from tests.conftest import ROOT

    onnx, data, _ = model
    command = [sys.executable, "-m", "validation", "accuracy", "--images", str(data), *digits.cli_model_args()]
    command += ["--onnx", str(onnx), "--engine", "ray", "--shard-size", "5", "--batch-size", "1"]
    command += ["--report-dir", str(tmp_path)]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        shards = tmp_path / "accuracy_lvvit_s_32.shards"
        deadline = time.monotonic() + 240
        while not (shards / "shard-00000.jsonl").exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if run.poll() is not None:  # ended before its first shard: say why (Ray's progress lines left out)
            err = run.communicate()[1].splitlines(keepends=True)
            pytest.fail("".join(line for line in err if "INFO" not in line)[-3000:])
        ray_processes = psutil.Process(run.pid).children(recursive=True)
        assert ray_processes, "Ray started no process"
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=90)
    finally:
        run.kill()
    assert run.returncode == 130, err[-2000:]
    gone, alive = psutil.wait_procs(ray_processes, timeout=15)
    assert not alive, ([p.name() for p in alive], err[-2000:])
