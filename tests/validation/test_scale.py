"""Validation at scale without Ray: predictor specs, shards that merge exactly, a resumed run that redoes nothing."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from runtimes import ModelFileError, PredictorSpec, read_model_metadata
from tests.validation.scale_fixtures import make_digits_model, numbers
from validation import ModelSource, run_accuracy, run_drift
from validation.core.data import labelled_folder
from validation.datasets import digits
from validation.engines import shards as shard_module
from validation.engines.local import engine_for
from validation.engines.shards import ShardError
from validation.run.drift import DriftInputs


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    return make_digits_model(tmp_path_factory.mktemp("scale"))


def test_a_spec_pickles_small_opens_and_checks_its_bytes(digits_model, tmp_path):
    onnx, _, _ = digits_model
    spec = PredictorSpec.for_model("ort", onnx, threads=1, batch_size=4)
    assert len(pickle.dumps(spec)) < 2000 and spec.files[0].sha256 and spec.describe()["options"]["threads"] == 1
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with spec.open() as predictor:
        expected = predictor.logits(x)
    # shipped: the bytes, checked, in another folder; the driver's copy is gone
    moved = tmp_path / "driver"
    moved.mkdir()
    blobs = spec.read_files()
    shutil.copy(onnx, moved / onnx.name)
    worker_spec = PredictorSpec.for_model("ort", moved / onnx.name, threads=1, batch_size=4)
    (moved / onnx.name).unlink()
    with pytest.raises(ModelFileError, match="missing on this machine"):
        worker_spec.open()
    opened = worker_spec.materialize(blobs, tmp_path / "worker")
    with opened.open() as predictor:
        np.testing.assert_array_equal(predictor.logits(x), expected)
    with pytest.raises(ModelFileError, match=r"the shipped bytes hash to [0-9a-f]{64}, the spec says"):
        worker_spec.materialize({onnx.name: blobs[onnx.name][:-1]}, tmp_path / "bad")
    # a file changed after the spec was made is refused with both sizes and hashes
    changed = tmp_path / "changed.onnx"
    shutil.copy(onnx, changed)
    changed_spec = PredictorSpec.for_model("ort", changed)
    with changed.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelFileError, match=r"changed\.onnx: \d+ bytes, .*the spec was made for \d+ bytes"):
        changed_spec.open()


def test_public_metadata_reader(digits_model, tmp_path):
    onnx, _, _ = digits_model
    metadata = read_model_metadata(onnx)
    assert metadata.preset == "lvvit_s" and metadata.resolution == 32
    assert metadata.weights["sha256"] == PredictorSpec.eager(digits.digits_spec(), digits.WEIGHTS).files[0].sha256
    with pytest.raises(ModelFileError, match="not an ONNX model"):
        (tmp_path / "text.onnx").write_text("hello")
        read_model_metadata(tmp_path / "text.onnx")


def test_one_shard_and_many_shards_give_the_same_report(digits_model):
    _, data, specs = digits_model
    dataset = labelled_folder(data, num_classes=10)
    with engine_for(specs, batch_size=8) as (reference, others, engine):
        whole = run_accuracy(reference, others, dataset, engine=engine, shard_size=1000, progress=False).to_json()
        cut = run_accuracy(reference, others, dataset, engine=engine, shard_size=7, progress=False).to_json()
        drift_whole = run_drift(reference, others, DriftInputs(folder=data), engine=engine, shard_size=1000).to_json()
        # shards of whole batches, so that every runtime sees the very batches of the single run
        drift_cut = run_drift(reference, others, DriftInputs(folder=data), engine=engine, shard_size=16).to_json()
    assert cut["shards"]["count"] == 7 and whole["shards"]["count"] == 1
    assert numbers(cut["runtimes"]["ort"]) == numbers(whole["runtimes"]["ort"])
    assert numbers(cut["reference"]) == numbers(whole["reference"])
    # drift statistics, p99 and histogram included, are equal, not approximately equal
    assert drift_cut["runtimes"]["ort"]["outputs"] == drift_whole["runtimes"]["ort"]["outputs"]


def test_a_run_stopped_halfway_resumes_without_redoing_a_shard(digits_model, tmp_path, monkeypatch):
    _, data, specs = digits_model
    dataset = labelled_folder(data, num_classes=10)
    folder = tmp_path / "acc.shards"
    saved: list[int] = []

    class Stop(Exception):
        pass

    def stop_after_three(shard):
        saved.append(shard.index)
        if len(saved) == 3:
            raise Stop  # as a killed process would: the third shard is on disk, nothing after it

    monkeypatch.setattr(shard_module, "shard_saved_hooks", [stop_after_three])
    with engine_for(specs, batch_size=8) as (reference, others, engine):
        with pytest.raises(Stop):
            run_accuracy(reference, others, dataset, engine=engine, shard_dir=folder, shard_size=5, progress=False)
        assert sorted(p.name for p in folder.glob("shard-*.jsonl")) == [f"shard-0000{i}.jsonl" for i in range(3)]
        monkeypatch.setattr(shard_module, "shard_saved_hooks", [lambda shard: saved.append(shard.index)])
        resumed = run_accuracy(reference, others, dataset, engine=engine, shard_dir=folder, shard_size=5).to_json()
        assert saved == list(range(9))  # each of the 9 shards computed exactly once across both runs
        fresh = run_accuracy(reference, others, dataset, engine=engine, shard_size=5, progress=False).to_json()
    assert resumed["shards"]["computed"] == 6 and fresh["shards"]["computed"] == 9
    assert numbers(resumed["runtimes"]["ort"]) == numbers(fresh["runtimes"]["ort"])
    assert numbers(resumed["reference"]) == numbers(fresh["reference"])
    assert resumed["inputs"] == fresh["inputs"]


def test_a_shard_folder_of_another_run_is_refused(digits_model, tmp_path):
    _, data, specs = digits_model
    folder = tmp_path / "s"
    with engine_for(specs, batch_size=8) as (reference, others, engine):
        run_accuracy(reference, others, labelled_folder(data, num_classes=10), engine=engine, shard_dir=folder)
        with pytest.raises(ShardError, match="holds the shards of another run .*differs in samples"):
            dataset = labelled_folder(data, num_classes=10).limited(10)
            run_accuracy(reference, others, dataset, engine=engine, shard_dir=folder)
        run = json.loads((folder / "run.json").read_text())
        (folder / "shard-00000.jsonl").write_text('{"key": "' + run["key"] + '", "shard": 0}\n')
        with pytest.raises(ShardError, match=r"shard-00000\.jsonl: has no closing checksum line"):
            run_accuracy(reference, others, labelled_folder(data, num_classes=10), engine=engine, shard_dir=folder)


# -- the reference cache ---------------------------------------------------------------------------------------------


def test_a_cached_reference_runs_no_paddle_and_gives_the_same_drift(digits_model, tmp_path, monkeypatch):
    from runtimes import paddle_native
    from validation.engines.reference_cache import ReferenceCache, reference_key

    onnx, data, specs = digits_model
    source = ModelSource(spec=digits.digits_spec(), weights=digits.WEIGHTS, onnx=onnx)
    calls = []
    real_run = paddle_native._EagerEngine.run
    monkeypatch.setattr(paddle_native._EagerEngine, "run", lambda self, x: calls.append(len(x)) or real_run(self, x))
    cache = ReferenceCache.create(tmp_path / "cache", reference_key(source), classes=10)
    dataset = labelled_folder(data, num_classes=10)
    with engine_for({"paddle": specs["paddle"]}, batch_size=8) as (_, _, engine):
        assert cache.build(dataset.samples, 16, engine) == 3
        assert cache.build(dataset.samples, 16, engine) == 0  # resumed: nothing left
    assert sum(calls) == 45 + 8  # every image once, and the untimed warm-up batch
    with engine_for(specs, batch_size=8) as (reference, others, engine):
        live = run_drift(reference, others, DriftInputs(folder=data), engine=engine, shard_size=16).to_json()
    calls.clear()
    opened = ReferenceCache.open(tmp_path / "cache", reference_key(source))
    with engine_for({"ort": specs["ort"]}, batch_size=8, reference_cache=opened) as (reference, others, engine):
        cached = run_drift(reference, others, DriftInputs(folder=data), engine=engine, shard_size=16).to_json()
        accuracy = run_accuracy(reference, others, dataset, engine=engine, progress=False).to_json()
    assert calls == []  # not one Paddle call
    assert cached["runtimes"]["ort"]["outputs"] == live["runtimes"]["ort"]["outputs"]
    assert cached["reference"]["describe"]["cached"] == str(tmp_path / "cache")
    assert accuracy["runtimes"]["ort"]["agreement"] == 100.0 and accuracy["reference"]["images"] == 45


def test_a_stale_reference_cache_is_refused_naming_what_differs(digits_model, tmp_path):
    from dataclasses import replace

    from validation.engines.reference_cache import ReferenceCache, ReferenceCacheError, reference_key

    onnx, _, _ = digits_model
    source = ModelSource(spec=digits.digits_spec(), weights=digits.WEIGHTS, onnx=onnx)
    ReferenceCache.create(tmp_path / "cache", reference_key(source), classes=10)
    from lvvit import create_model
    from lvvit.weights.state_dict import save_state_dict

    other_weights = save_state_dict(create_model(digits.digits_spec(), seed=1), tmp_path / "other.safetensors")
    differs = r"differs in weights_tensors_sha256: cache '[0-9a-f]{64}', this run '"
    with pytest.raises(ReferenceCacheError, match=differs):
        ReferenceCache.open(tmp_path / "cache", reference_key(replace(source, weights=other_weights)))
    spec = digits.digits_spec()
    cropped = replace(spec, preprocess=replace(spec.preprocess, crop_pct=1.0))
    with pytest.raises(ReferenceCacheError, match=r"differs in preprocess: cache \{.*'crop_pct': 0\.9"):
        ReferenceCache.open(tmp_path / "cache", reference_key(replace(source, spec=cropped)))


def test_reference_and_accuracy_command_lines_with_a_cache(digits_model, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    onnx, data, _ = digits_model
    model = [*digits.cli_model_args(), "--onnx", str(onnx)]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "validation", *args], capture_output=True, text=True, cwd=ROOT)

    cache = ("--cache", str(tmp_path / "c"))
    made = cli("reference", "--images", str(data), *digits.cli_model_args(), *cache, "--shard-size", "20")
    assert made.returncode == 0, made.stderr
    assert "logits of 45 images (3 shard(s) computed now)" in made.stdout
    reused = ("--reference-cache", str(tmp_path / "c"), "--report-dir", str(tmp_path))
    run = cli("accuracy", "--images", str(data), *model, *reused)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "accuracy_lvvit_s_32.json").read_text())
    assert report["reference"]["describe"]["cached"] == str(tmp_path / "c") and report["passed"]
    again = cli("accuracy", "--images", str(data), *model, *reused)
    resumed = json.loads((tmp_path / "accuracy_lvvit_s_32.json").read_text())
    assert again.returncode == 0 and resumed["shards"]["computed"] == 0  # the same command: every shard was done
    markdown = (tmp_path / "accuracy_lvvit_s_32.md").read_text()
    assert "engine: local; 1 shard(s) of 1000 images, 0 computed in this run, the others resumed from" in markdown
    assert "(Paddle was not run)" in markdown
    assert numbers(resumed["runtimes"]["ort"]) == numbers(report["runtimes"]["ort"])
    stale = cli("accuracy", "--images", str(data), "--onnx", str(onnx), "--reference-cache", str(tmp_path / "c"))
    assert stale.returncode == 2 and "differs in" in stale.stderr and "weights_tensors_sha256" in stale.stderr


def test_the_ray_engine_without_ray_says_how_to_install_it(monkeypatch):
    import sys

    from validation.engines.ray import _import_ray
    from validation.errors import EngineError

    monkeypatch.setitem(sys.modules, "ray", None)  # as in a base install
    with pytest.raises(EngineError, match=r"--engine ray needs Ray: pip install 'lvvit-deploy\[ray\]'"):
        _import_ray()


def test_validation_imports_no_ray():
    import subprocess
    import sys

    code = "import sys, validation, validation.engines.local, validation.run.accuracy; assert 'ray' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_a_ray_client_address_is_refused_with_the_way_that_works():
    from validation.engines.ray import RayEngine
    from validation.errors import EngineError

    with pytest.raises(EngineError, match=r"Ray Data does not run through Ray Client .*--ray-address auto"):
        with RayEngine.start({}, "ray://head:10001"):
            pass
