"""Triton model repositories: every generated config.pbtxt parses into Triton's own `ModelConfig` (the schema
that ships with `tritonclient`), and its inputs and outputs match the ONNX file."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lvvit.common.provenance import sha256_of
from runtimes import ModelFileError
from serving.errors import ServingSetupError
from serving.triton import TritonOptions, write_triton_repository
from tests.conftest import ROOT

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")

ORT_TYPES = {"tensor(float)": model_config_pb2.TYPE_FP32}


def parse(folder) -> model_config_pb2.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def graph_of(path):
    """The ONNX file's inputs and outputs as ONNX Runtime reads them: an independent reader of the same graph."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_inputs(), session.get_outputs()


def assert_matches_graph(tensors, graph, dynamic: bool) -> None:
    assert [t.name for t in tensors] == [g.name for g in graph]
    for tensor, value in zip(tensors, graph, strict=True):
        assert tensor.data_type == ORT_TYPES[value.type]
        shape = [d if isinstance(d, int) else -1 for d in value.shape]
        assert list(tensor.dims) == (shape[1:] if dynamic else shape)


@pytest.mark.parametrize(
    "options",
    [TritonOptions(), TritonOptions(instance="gpu", instances=2), TritonOptions(backend="openvino", max_batch_size=16)],
    ids=["onnxruntime-cpu", "onnxruntime-gpu", "openvino-cpu"],
)
def test_dynamic_batch_repository(tiny, tmp_path, options):
    folder = write_triton_repository(tiny.onnx, tmp_path / "repo", options=options)
    assert folder == tmp_path / "repo" / "tiny"
    config = parse(folder)
    inputs, outputs = graph_of(tiny.onnx)
    assert config.name == "tiny" and config.backend == options.backend
    assert config.max_batch_size == options.max_batch_size
    assert_matches_graph(config.input, inputs, dynamic=True)
    assert_matches_graph(config.output, outputs, dynamic=True)
    assert list(config.input[0].dims) == [3, 64, 64] and list(config.output[0].dims) == [10]
    assert config.dynamic_batching.max_queue_delay_microseconds == options.max_queue_delay_us
    assert list(config.dynamic_batching.preferred_batch_size) == [b for b in (4, 8, 16) if b <= options.max_batch_size]
    group = config.instance_group[0]
    kind = (
        model_config_pb2.ModelInstanceGroup.KIND_GPU
        if options.instance == "gpu"
        else model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
    assert group.kind == kind and group.count == options.instances
    warmup = config.model_warmup[0]
    assert (
        warmup.batch_size == 1 and list(warmup.inputs["image"].dims) == [3, 64, 64] and warmup.inputs["image"].zero_data
    )
    assert config.default_model_filename == ("model.onnx" if options.backend == "openvino" else "")
    # the model itself, the labels Triton's classification uses, and what Triton cannot know
    assert sha256_of(folder / "1" / "model.onnx") == sha256_of(tiny.onnx)
    assert config.output[0].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines() == [f"class_{i}" for i in range(10)]
    assert config.parameters["lvvit.model_sha256"].string_value == sha256_of(tiny.onnx)
    assert '"input_size": 64' in config.parameters["lvvit.preprocess"].string_value


def test_fixed_batch_repository_keeps_the_full_dims(tiny, tmp_path):
    config = parse(write_triton_repository(tiny.onnx_fixed, tmp_path, name="fixed"))
    inputs, outputs = graph_of(tiny.onnx_fixed)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert_matches_graph(config.input, inputs, dynamic=False)
    assert_matches_graph(config.output, outputs, dynamic=False)
    assert list(config.input[0].dims) == [2, 3, 64, 64]
    assert list(config.model_warmup[0].inputs["image"].dims) == [2, 3, 64, 64]


def test_model_without_kit_metadata(tiny, tmp_path):
    config = parse(write_triton_repository(tiny.onnx_bare, tmp_path))
    assert config.name == "tiny_bare" and "lvvit.preset" not in config.parameters
    assert config.parameters["lvvit.model_sha256"].string_value == sha256_of(tiny.onnx_bare)


def test_rewriting_replaces_the_older_entry(tiny, tmp_path):
    write_triton_repository(tiny.onnx, tmp_path, options=TritonOptions(max_batch_size=4))
    config = parse(write_triton_repository(tiny.onnx, tmp_path, options=TritonOptions(max_batch_size=32)))
    assert config.max_batch_size == 32
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["1", "config.pbtxt", "labels.txt"]


def test_bad_requests_are_refused(tiny, tmp_path):
    with pytest.raises(ServingSetupError, match="openvino backend runs on the CPU"):
        TritonOptions(backend="openvino", instance="gpu")
    with pytest.raises(ServingSetupError, match="Triton backend 'tensorflow'"):
        TritonOptions(backend="tensorflow")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(ModelFileError, match="fake.onnx"):
        write_triton_repository(fake, tmp_path / "repo")
    with pytest.raises(ServingSetupError, match="model name 'a b'"):
        write_triton_repository(tiny.onnx, tmp_path / "repo", name="a b")
    assert not (tmp_path / "repo").exists()


def test_command(tiny, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "serving", "triton-repo", str(tiny.onnx), "--repo", str(tmp_path), "--name", "m"]
    result = subprocess.run([*command, "--backend", "openvino"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'm' / 'config.pbtxt'} and {tmp_path / 'm' / '1' / 'model.onnx'}"
    assert parse(tmp_path / "m").backend == "openvino"
    result = subprocess.run(
        [*command, "--backend", "openvino", "--instance", "gpu"], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 1 and "error: Triton's openvino backend runs on the CPU" in result.stderr
