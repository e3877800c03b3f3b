"""`python -m serving predict`: a folder or a list of images into JSON Lines or CSV, with the bad files listed,
resumable after an interruption."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from runtimes import OrtPredictor
from serving.errors import ServingSetupError
from serving.folder import predict_folder
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def predictor(tiny):
    with OrtPredictor(tiny.onnx, threads=1, batch_size=2) as p:
        yield p


@pytest.fixture
def folder(tmp_path, photos):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(photos[0]).save(root / "a.png")
    Image.fromarray(photos[1]).save(root / "sub" / "b.jpg")
    Image.fromarray(photos[4]).save(root / "c.png")
    (root / "fake.jpg").write_text("not a picture")
    (root / "half.png").write_bytes((root / "a.png").read_bytes()[:2000])
    (root / "notes.txt").write_text("not an image name: not listed")
    os.mkfifo(root / "pipe.jpg")
    return root


GOOD = ["a.png", "c.png", "sub/b.jpg"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_to_jsonl(predictor, folder, tmp_path):
    out = tmp_path / "preds.jsonl"
    messages: list[str] = []
    summary = predict_folder(predictor, folder, out, topk=3, progress=False, log=messages.append)
    records = read_jsonl(out)
    assert [r["source"] for r in records] == ["a.png", "c.png", "fake.jpg", "half.png", "sub/b.jpg"]
    expected = {p.source: p for p in predictor.predict([folder / name for name in GOOD], topk=3)}
    for record in records:
        if record["source"] in GOOD:
            assert record["error"] is None
            assert record["class_ids"] == list(expected[str(folder / record["source"])].class_ids)
            assert len(record["probs"]) == 3
    assert "not an image" in records[2]["error"] and "unreadable image" in records[3]["error"]
    assert summary.written == 5 and [f[0] for f in summary.failed] == ["fake.jpg", "half.png"]
    assert summary.skipped == [(str(folder / "pipe.jpg"), "a FIFO (named pipe)")]
    assert f"skipped {folder / 'pipe.jpg'}: a FIFO (named pipe)" in messages
    assert any(m.startswith("failed fake.jpg: ") for m in messages)
    assert messages[-1] == f"{out}: 5 images written (2 failed), 0 resumed, 1 paths skipped"


def test_resume_after_an_interruption(predictor, folder, tmp_path):
    out = tmp_path / "preds.jsonl"
    predict_folder(predictor, folder, out, progress=False, log=lambda m: None)
    complete = out.read_text()
    lines = complete.splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:25])  # killed while writing the third record
    with pytest.raises(ServingSetupError, match="preds.jsonl exists: pass --resume to continue it"):
        predict_folder(predictor, folder, out, progress=False)
    messages: list[str] = []
    summary = predict_folder(predictor, folder, out, resume=True, progress=False, log=messages.append)
    assert summary.resumed == 2 and summary.written == 3
    assert f"{out}: 2 images already done, 3 to go" in messages
    assert out.read_text() == complete


def test_csv(predictor, folder, tmp_path):
    out = tmp_path / "preds.csv"
    predict_folder(predictor, folder, out, topk=2, progress=False, log=lambda m: None)
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["source"] for r in rows] == ["a.png", "c.png", "fake.jpg", "half.png", "sub/b.jpg"]
    top = predictor.predict(folder / "a.png", topk=2)[0]
    assert rows[0]["error"] == "" and int(rows[0]["class_id"]) == top.class_id and rows[0]["label"] == top.label
    assert json.loads(rows[0]["class_ids"]) == list(top.class_ids)
    assert "not an image" in rows[2]["error"] and rows[2]["class_id"] == ""
    # resume a CSV cut mid-row
    text = out.read_text()
    out.write_text(text[: text.index("c.png") + 8])
    predict_folder(predictor, folder, out, topk=2, resume=True, progress=False, log=lambda m: None)
    assert out.read_text() == text


def test_list_file(predictor, folder, tmp_path):
    listing = folder / "val_list.txt"
    listing.write_text("a.png 3\nsub/b.jpg 7\n../outside.png 1\n/etc/passwd 0\nmissing.png 2\n\n")
    out = tmp_path / "preds.jsonl"
    predict_folder(predictor, listing, out, progress=False, log=lambda m: None)
    records = {r["source"]: r for r in read_jsonl(out)}
    assert list(records) == ["a.png", "sub/b.jpg", "../outside.png", "/etc/passwd", "missing.png"]
    assert records["a.png"]["error"] is None and records["sub/b.jpg"]["error"] is None
    assert records["../outside.png"]["error"] == f"{listing}:3: '../outside.png' is not inside {folder}"
    assert records["/etc/passwd"]["error"] == f"{listing}:4: '/etc/passwd' is not inside {folder}"
    assert records["missing.png"]["error"] == f"{folder / 'missing.png'}: no such image file"


def test_bad_output_names(predictor, folder, tmp_path):
    with pytest.raises(ServingSetupError, match=r"preds\.txt: write \.jsonl or \.csv"):
        predict_folder(predictor, folder, tmp_path / "preds.txt")


def test_command(tiny, folder, tmp_path):
    out = tmp_path / "preds.jsonl"
    command = [sys.executable, "-m", "serving", "predict", "--images", str(folder), "--model", str(tiny.onnx)]
    command += ["--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([*command, "--runtime", "openvino"], capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(out)) == 5 and "5 images written (2 failed)" in result.stderr
    assert "5/5 [" in result.stderr  # the progress bar
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 1 and "exists: pass --resume" in result.stderr
    # the old positional spelling still works; naming the images twice, or not at all, is a usage error
    old = [sys.executable, "-m", "serving", "predict", str(folder), "--model", str(tiny.onnx), "--limit", "2"]
    result = subprocess.run([*old, "--out", str(tmp_path / "two.jsonl"), "--no-progress"], **run_args(env))
    assert result.returncode == 0, result.stderr
    assert [r["source"] for r in read_jsonl(tmp_path / "two.jsonl")] == ["a.png", "c.png"]
    result = subprocess.run([*command[:4], *command[6:], "--resume"], **run_args(env))
    assert result.returncode == 2 and "--images DIR" in result.stderr


def run_args(env):
    return {"capture_output": True, "text": True, "timeout": 180, "env": env}


def test_limit_takes_the_first_images_in_path_order(predictor, folder, tmp_path):
    out = tmp_path / "preds.jsonl"
    summary = predict_folder(predictor, folder, out, limit=3, progress=False, log=lambda m: None)
    assert summary.written == 3
    assert [r["source"] for r in read_jsonl(out)] == ["a.png", "c.png", "fake.jpg"]


def test_runtimes_and_the_serverless_commands_import_no_server_package():
    code = (
        "import sys, runtimes, serving.folder, serving.triton, serving.cli\n"
        "from runtimes import OrtPredictor\n"
        "print([m for m in ('fastapi', 'uvicorn', 'starlette', 'ray', 'prometheus_client') if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
