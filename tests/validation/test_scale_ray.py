"""The Ray engine on this machine: the same reports as the local engine, and models shipped through the object store.

Each test starts Ray (embedded, or a two-node `ray.cluster_utils.Cluster`) with a tiny
model and a handful of images, and shuts it down.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.validation.scale_fixtures import make_digits_model, numbers
from validation import ModelSource, RuntimeOptions, run_accuracy, run_drift
from validation.core.data import labelled_folder
from validation.core.runners import runner_specs
from validation.datasets import digits
from validation.engines.local import engine_for
from validation.run.drift import DriftInputs

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    return make_digits_model(tmp_path_factory.mktemp("scale_ray"))


@pytest.fixture(autouse=True)
def no_ray_left_running():
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_local_and_ray_engines_give_the_same_reports(digits_model):
    _, data, specs = digits_model
    dataset = labelled_folder(data, num_classes=10).limited(24)
    reports = {}
    for kind in ("local", "ray"):
        with engine_for(specs, kind, batch_size=8) as (reference, others, engine):
            accuracy = run_accuracy(reference, others, dataset, engine=engine, shard_size=10, progress=False)
            drift = run_drift(reference, others, DriftInputs(folder=data, limit=24), engine=engine, shard_size=10)
            synthetic = run_drift(reference, others, DriftInputs(synthetic=5), engine=engine, shard_size=2)
        reports[kind] = accuracy, drift, synthetic
        assert not ray.is_initialized()  # the embedded Ray is shut down with the engine
    (acc_local, drift_local, syn_local), (acc_ray, drift_ray, syn_ray) = reports["local"], reports["ray"]
    assert acc_ray["engine"]["name"] == "ray" and acc_ray["engine"]["address"] == "embedded"
    assert numbers(acc_ray["reference"]) == numbers(acc_local["reference"])
    assert numbers(acc_ray["runtimes"]["ort"]) == numbers(acc_local["runtimes"]["ort"])  # top-1 per image, identical
    for local, remote in ((drift_local, drift_ray), (syn_local, syn_ray)):
        a, b = local["runtimes"]["ort"]["outputs"]["logits"], remote["runtimes"]["ort"]["outputs"]["logits"]
        assert a["top1_agreement"] == b["top1_agreement"] == 1.0 and a["samples"] == b["samples"]
        assert abs(a["max_abs"] - b["max_abs"]) <= 1e-6 and abs(a["mean_abs"] - b["mean_abs"]) <= 1e-6
        assert [w["image"] for w in a["worst"]] and a["worst"][0]["top1"] == b["worst"][0]["top1"]


def test_two_nodes_receive_the_model_through_the_object_store(digits_model, tmp_path):
    """The head has no CPUs, so every actor runs on the second node; the driver's model folder is gone by then."""
    from ray.cluster_utils import Cluster

    onnx, data, _ = digits_model
    driver = tmp_path / "driver"
    driver.mkdir()
    shutil.copy(onnx, driver / onnx.name)
    source = ModelSource(spec=digits.digits_spec(), weights=digits.WEIGHTS, onnx=driver / onnx.name)
    specs = runner_specs(["ort"], source, RuntimeOptions(batch_size=8, threads=1), lambda m: None)
    specs.pop("paddle")  # the ONNX model alone: its file is the one the workers must not read from disk
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker = cluster.add_node(num_cpus=2, object_store_memory=100 << 20)
    try:
        from validation.engines.ray import RayEngine

        with RayEngine.start(specs, cluster.address, batch_size=8) as engine:
            shutil.rmtree(driver)  # what the workers open now can only have come through the object store
            (participant,) = engine.participants()
            assert participant.describe()["ray_node"] == worker.node_id
            samples = labelled_folder(data, num_classes=10).limited(12).samples
            (shard,) = list(engine([(0, samples)]))
            assert engine.describe()["nodes"] == 2
        assert shard.logits["ort"].shape == (12, 10) and np.isfinite(shard.logits["ort"]).all()
        assert participant.describe()["spec"]["files"][0]["sha256"] == specs["ort"].files[0].sha256
    finally:
        ray.shutdown()
        cluster.shutdown()
