"""Export memory: the program-only conversion, streamed weights, the peak sampler, --max-memory, a bounded export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import psutil
import pytest
from onnx import numpy_helper

from exporters.onnx.preflight import BASE, FACTOR, MEMORY_KEY, weight_bytes
from exporters.onnx.stream import append_metadata, write_model
from lvvit import create_model, resolve_preset
from lvvit.common.memory import MemoryBudgetError, PeakSampler, format_size, parse_size
from lvvit.macs import count_weights
from lvvit.presets import get_preset, list_presets
from tests.conftest import ROOT, TINY

RES = 64


def _run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exporters.onnx", *args], capture_output=True, text=True, cwd=ROOT, **kwargs
    )


# -- the conversion without weights gives the graph a conversion with them gives ----------------------------------

_WITH_WEIGHTS = """
import sys
import paddle2onnx
raw = paddle2onnx.export(sys.argv[1], sys.argv[2], save_file=None, opset_version=17, auto_upgrade_opset=False,
                         enable_onnx_checker=True, enable_optimize=True, verbose=False)
open(sys.argv[3], "wb").write(raw)
"""


def _graph(proto: onnx.ModelProto) -> tuple:
    g = proto.graph
    nodes = [(n.op_type, list(n.input), list(n.output), [a.SerializeToString() for a in n.attribute]) for n in g.node]
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    shapes = sorted(v.SerializeToString() for v in g.value_info)
    return nodes, values, shapes, [v.SerializeToString() for v in g.input]


@pytest.mark.parametrize("fusable", [False, True], ids=["exported", "fusable"])
def test_the_program_alone_converts_to_the_graph_a_conversion_with_the_weights_gives(tmp_path, fusable):
    from exporters.fusable import fusable_copy
    from exporters.onnx.convert import _fold_constants, _name_inputs_and_outputs, _rename, convert_program
    from exporters.paddle_static import model_file, save_inference_model

    model = create_model("lvvit_s", resolution=RES, seed=3, **TINY)
    model = fusable_copy(model) if fusable else model
    prefix = tmp_path / "model"
    names = save_inference_model(model, prefix, None)  # a traced copy: `model` stays eager
    state = model.state_dict()
    # paddle2onnx as it converts by default, weights included (the kit's conversion until this change)
    subprocess.run([sys.executable, "-c", _WITH_WEIGHTS, str(model_file(prefix)), str(prefix) + ".pdiparams",
                    str(tmp_path / "full.onnx")], check=True, capture_output=True)  # fmt: skip
    full = _fold_constants(onnx.load(str(tmp_path / "full.onnx")))
    _rename(full, names)
    _name_inputs_and_outputs(full, None)

    shapes = {name: list(t.shape) for name, t in state.items()}
    called = []
    converted = convert_program(model_file(prefix), names, shapes, lambda n: called.append(n) or state[n].numpy(),
                                17, None)  # fmt: skip
    assert not converted.proto.graph.initializer or all(
        i.name not in state or i.name in called for i in converted.proto.graph.initializer
    )
    assert len(called) <= 2  # only the weights that feed constant subgraphs (a bias reshaped)
    write_model(tmp_path / "streamed.onnx", converted.proto, ((n, state[n].numpy()) for n in converted.weights))
    streamed = onnx.load(str(tmp_path / "streamed.onnx"))
    nodes, values, shapes_seen, inputs = _graph(streamed)
    want_nodes, want_values, want_shapes, want_inputs = _graph(full)
    assert nodes == want_nodes and shapes_seen == want_shapes and inputs == want_inputs
    assert values.keys() == want_values.keys()
    assert all(np.array_equal(values[k], want_values[k]) for k in values)
    onnx.checker.check_model(streamed, full_check=True)


def test_a_streamed_file_is_one_model_to_every_reader(tmp_path):
    import onnxruntime as ort

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    node = onnx.helper.make_node("Add", ["x", "w"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [x], [y])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "m.onnx"
    size = write_model(path, proto, iter([("w", w)]))
    append_metadata(path, {"lvvit.note": "appended"})
    assert size < path.stat().st_size
    loaded = onnx.load(str(path))
    assert [i.name for i in loaded.graph.initializer] == ["w"]
    assert {p.key: p.value for p in loaded.metadata_props} == {"lvvit.note": "appended"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((2, 3), np.float32)})[0]
    np.testing.assert_array_equal(out, w + 1)
    assert session.get_modelmeta().custom_metadata_map == {"lvvit.note": "appended"}


# -- sizes ---------------------------------------------------------------------------------------------------------


def test_weight_bytes_come_from_the_architecture_without_a_model():
    for kwargs in (TINY, {}, {**TINY, "order": ("tr", "mha", "ffn")}):
        spec = resolve_preset("lvvit_s", RES, **kwargs)
        model = create_model("lvvit_s", resolution=RES, **kwargs)
        assert count_weights(spec.arch, RES) == sum(int(np.prod(t.shape)) for t in model.state_dict().values())
    for name in list_presets():  # the authors' table, in millions (it leaves out the BatchNorm statistics)
        spec = get_preset(name)
        assert abs(count_weights(spec.arch, spec.resolution) / 1e6 - spec.params_m) < 0.01, name


@pytest.mark.parametrize(
    ("text", "size"),
    [("4GiB", 4 * 2**30), ("3.5 GB", 3_500_000_000), ("800MiB", 800 * 2**20), ("1e9", 10**9), ("2g", 2 * 10**9)],
)
def test_memory_sizes_read_as_people_write_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "4 gigs", "-1GiB", "0", "GiB", "1e40"])
def test_unreadable_memory_sizes_are_refused(text):
    with pytest.raises(MemoryBudgetError, match=r"memory size .* (expected a number and a unit|must be positive)"):
        parse_size(text)


def test_the_sampler_sees_a_childs_memory():
    child = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.0)"
    with PeakSampler() as memory:
        memory.phase("child")
        subprocess.run([sys.executable, "-c", child], check=True)
        memory.phase("after")
    own = psutil.Process().memory_info().rss
    assert memory.phases["child"] > own + 250 * 2**20  # the child's 300 MiB, counted with this process
    assert memory.peak == max(memory.phases.values()) == memory.summary()["peak"]


# -- --max-memory ----------------------------------------------------------------------------------------------------


def test_max_memory_below_the_need_is_refused_before_any_work(tmp_path):
    spec = get_preset("lvvit_l_448")
    need = FACTOR * weight_bytes(spec) + BASE
    started = time.perf_counter()
    run = _run_cli("--preset", "lvvit_l_448", "--max-memory", "2GiB", "--output", str(tmp_path))
    assert run.returncode == 2, run.stderr
    assert (
        f"error: --max-memory 2.00 GiB is below what exporting lvvit_l_448 at 448px needs: about "
        f"{format_size(need)} at its peak (3 x 574.0 MiB of weights + 1.00 GiB); "
        "nothing was started" in run.stderr
    )
    assert "building" not in run.stderr and list(tmp_path.iterdir()) == []
    assert time.perf_counter() - started < 30  # no model was built (lvvit_l_448 alone takes longer here)


def test_max_memory_with_room_exports_and_records_the_peak(tmp_path):
    target = tmp_path / "m.onnx"
    run = _run_cli("--preset", "lvvit_s", "--resolution", str(RES), "--max-memory", "4GiB", "--output", str(target),
                   "--no-verify")  # fmt: skip
    assert run.returncode == 0, run.stderr
    record = json.loads({p.key: p.value for p in onnx.load(str(target)).metadata_props}[MEMORY_KEY])
    assert record["peak_tree_rss"] <= 4 * 2**30 and record["estimate"] <= 4 * 2**30
    assert "peak memory (RSS of the process tree): " in run.stderr


def test_an_int8_budget_is_refused_as_not_estimated(tmp_path):
    run = _run_cli("--preset", "lvvit_s", "--quantize", "int8", "--images", str(tmp_path), "--max-memory", "8GiB",
                   "--output", str(tmp_path))  # fmt: skip
    assert run.returncode == 2
    assert "error: --max-memory is not estimated for --quantize int8: NNCF's calibration memory grows" in run.stderr
    assert "nothing was started" in run.stderr and list(tmp_path.iterdir()) == []


def test_an_unreadable_budget_is_a_usage_error():
    run = _run_cli("--preset", "lvvit_s", "--max-memory", "lots")
    assert run.returncode == 2
    assert "argument --max-memory: unreadable memory size 'lots'" in run.stderr


# -- the goal, enforced from outside ---------------------------------------------------------------------------------


def _run_bounded(args: list[str], limit: int, timeout: float) -> tuple[int, int]:
    """Run the exporter, killing its whole tree the moment the tree's RSS passes `limit` (as an OOM killer
    of a machine with that much memory would); returns (exit status, the largest tree RSS seen)."""
    process = psutil.Popen([sys.executable, "-m", "exporters.onnx", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    seen, deadline = 0, time.monotonic() + timeout
    try:
        while process.poll() is None:
            rss = 0
            try:
                for member in [process, *process.children(recursive=True)]:
                    rss += member.memory_info().rss
            except psutil.Error:
                pass
            seen = max(seen, rss)
            if rss > limit or time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                why = "over the limit" if rss > limit else "out of time"
                pytest.fail(f"export killed {why}: tree RSS {format_size(rss)}, limit {format_size(limit)}")
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, process.stderr.read().decode()[-3000:]
    return process.returncode, seen


@pytest.mark.slow
def test_lvvit_s_exports_and_verifies_within_its_memory_goal(tmp_path):
    """The goal: the tree's peak at most 3x the weight bytes + 1 GiB; the limit is the goal plus 5%."""
    spec = get_preset("lvvit_s")
    limit = int(1.05 * (3 * weight_bytes(spec) + 2**30))
    target = tmp_path / "lvvit_s.onnx"
    _, seen = _run_bounded(["--preset", "lvvit_s", "--output", str(target)], limit, timeout=600)
    record = json.loads({p.key: p.value for p in onnx.load(str(target)).metadata_props}[MEMORY_KEY])
    assert record["peak_tree_rss"] <= limit and seen <= limit
    assert record["phases"]["verify"] > 0  # verification ran inside the limit too
