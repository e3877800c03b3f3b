from __future__ import annotations

import os
import stat

import pytest

from lvvit.common.atomic import OutputPathError, atomic_output


def test_result_replaces_the_target_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.bin"]


def test_an_empty_result_is_an_error(tmp_path):
    with pytest.raises(OutputPathError, match=r"out\.bin: the writer produced an empty file"):
        with atomic_output(tmp_path / "out.bin"):
            pass
    assert os.listdir(tmp_path) == []


def test_result_gets_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model.onnx").stat().st_mode) == 0o644
