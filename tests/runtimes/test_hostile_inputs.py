"""Hostile inputs (issue 11): images, data set folders, label files and ONNX metadata made by an attacker.

Every file here is crafted by the test and small. Each case asserts the kit's typed error and its message;
the ones that could hang or allocate run in a child under a time and an address-space limit
(`tests.bounded.run_bounded`) and must finish cleanly below both.
"""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lvvit.errors import ImageError, LvvitError
from lvvit.metadata import MAX_PROPS_BYTES, MetadataError, ModelMetadata
from lvvit.preprocess import MAX_IMAGE_PIXELS, MAX_RESIZED_PIXELS, preprocess
from lvvit.presets import PreprocessConfig
from tests.bounded import run_bounded
from validation.core.data import labelled_folder, stream_batches
from validation.errors import LabelFileError

CONFIG = PreprocessConfig(input_size=32, crop_pct=0.9)
# The child imports numpy, PIL and the kit's Paddle-free modules (~200 MB of address space): 1 GiB is far
# below what the crafted files used to cost (5 GB for a 20000x1 strip, 6.4 GB and more elsewhere).
SMALL_MEMORY = 1 << 30
TIME_LIMIT_S = 20.0  # generous on a shared 2-core machine; the readers take well under a second


def _png(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """A grayscale PNG of `width` x `height` zeros, streamed so that the parent never holds the pixels.

    `rows` < height writes only that many rows: a file that declares a large image but stays small.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height if rows is None else rows)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _photo(path: Path, seed: int = 0, size: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _bounded_preprocess(path: Path, memory_limit: int = SMALL_MEMORY):
    return run_bounded(
        f"""
        from lvvit.preprocess import preprocess
        from lvvit.presets import PreprocessConfig
        preprocess({str(path)!r}, PreprocessConfig(input_size=224, crop_pct=0.9))
        """,
        memory_limit=memory_limit,
        timeout_s=TIME_LIMIT_S,
    )


def _assert_clean(result, error: type[BaseException], *fragments: str) -> None:
    assert result.raised(error), f"{result.outcome} {result.error_type}: {result.message}\n{result.output[-2000:]}"
    for fragment in fragments:
        assert fragment in result.message, result.message
    assert result.seconds < TIME_LIMIT_S


# -- images --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [20_000, 100_000])
def test_a_long_strip_is_refused_in_bounded_memory(tmp_path, width):
    """A 99-byte 20000x1 PNG used to take 5 GB and 8 s; 100000x1 raised an uncaught MemoryError."""
    path = _png(tmp_path / "strip.png", width, 1)
    assert path.stat().st_size < 200
    result = _bounded_preprocess(path)
    _assert_clean(result, ImageError, "strip.png: unreadable image", f"{width}x1", str(MAX_RESIZED_PIXELS))


def test_an_ordinary_panorama_still_works(tmp_path):
    image = preprocess(_png(tmp_path / "pano.png", 4000, 500), PreprocessConfig(input_size=224, crop_pct=0.9))
    assert image.shape == (3, 224, 224) and np.isfinite(image).all()


@pytest.mark.parametrize(
    ("side", "fragment"),
    [(10_000, f"over the decompression-bomb limit of {MAX_IMAGE_PIXELS}"), (20_000, "decompression-bomb limit")],
)
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, side, fragment):
    """A small file that declares 100M (the kit's check) or 400M pixels (PIL's own, over 2x its limit)."""
    path = _png(tmp_path / "bomb.png", side, side, rows=1)
    assert path.stat().st_size < 1000
    result = _bounded_preprocess(path)
    _assert_clean(result, ImageError, "bomb.png: unreadable image", fragment)


def test_a_fifo_named_jpg_does_not_hang(tmp_path):
    fifo = tmp_path / "cat.jpg"
    os.mkfifo(fifo)
    result = _bounded_preprocess(fifo)
    _assert_clean(result, ImageError, "cat.jpg: cannot open the image file", "FIFO")


def test_a_link_to_dev_zero_or_a_loop_is_not_read(tmp_path):
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    _assert_clean(_bounded_preprocess(tmp_path / "zero.jpg"), ImageError, "zero.jpg", "character device")
    with pytest.raises(ImageError, match="loop.jpg: cannot open the image file .*symbolic link loop"):
        preprocess(tmp_path / "loop.jpg", CONFIG)
    with pytest.raises(ImageError, match="broken.jpg: no such image file"):
        preprocess(tmp_path / "broken.jpg", CONFIG)


def test_predict_refuses_a_fifo_without_hanging(tmp_path):
    """The predictor's own path (`predict`) goes through the same reader."""
    model = _tiny_onnx(tmp_path / "tiny.onnx", _good_props())
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    result = run_bounded(
        f"""
        from runtimes import OrtPredictor
        OrtPredictor({str(model)!r}).predict([{str(fifo)!r}])
        """,
        timeout_s=60,
    )
    _assert_clean(result, ImageError, "photo.jpg", "FIFO")


def test_running_out_of_memory_on_one_image_is_a_listed_failure(tmp_path):
    """MemoryError while decoding one image becomes that image's failure; the images after it still run."""
    folder = tmp_path / "images"
    folder.mkdir()
    _png(folder / "a_big.png", 9000, 9000)  # 81M pixels: under the pixel limit, but 81 MB (L) + 243 MB (RGB)
    _photo(folder / "b_small.png")
    code = f"""
        import resource
        from lvvit.presets import PreprocessConfig
        from validation.core.data import image_folder, stream_batches
        used = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (used + (160 << 20), used + (160 << 20)))  # room for 160 MB more
        dataset = image_folder({str(folder)!r})
        batches = list(stream_batches(dataset.samples, PreprocessConfig(32, 0.9), 4, workers=1, progress=False))
        kept = [s.name for b in batches for s in b.samples]
        failed = {{f.name: f.reason for b in batches for f in b.failures}}
        assert kept == ["b_small.png"], (kept, failed)
        assert "out of memory" in failed["a_big.png"], failed
    """
    result = run_bounded(code, timeout_s=60)
    assert result.outcome == "returned", f"{result.error_type}: {result.message}\n{result.output[-2000:]}"


_SEEDS = {}


def _seed_image(fmt: str) -> bytes:
    """A small valid image file of `fmt`, the starting point of the byte mutations below."""
    if fmt not in _SEEDS:
        rng = np.random.default_rng(3)
        buffer = io.BytesIO()
        image = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        (image.convert("P") if fmt == "GIF" else image).save(buffer, format=fmt)
        _SEEDS[fmt] = buffer.getvalue()
    return _SEEDS[fmt]


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"]),
    edits=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, 4000),
)
def test_fuzz_corrupted_images_give_only_image_errors(tmp_path, fmt, edits, cut):
    """Valid small files with bytes overwritten and the tail cut: an image, or an ImageError naming the file."""
    data = bytearray(_seed_image(fmt))
    for position, value in edits:
        data[position % len(data)] = value
    path = tmp_path / f"fuzz.{fmt.lower()}"
    path.write_bytes(bytes(data[: max(1, len(data) - cut % len(data))]))
    try:
        out = preprocess(path, CONFIG)
    except ImageError as exc:
        assert str(exc).startswith(str(path)), exc
    else:
        assert out.shape == (3, 32, 32) and np.isfinite(out).all()


# -- folders -------------------------------------------------------------------------------------------------------


def _hostile_entries(folder: Path) -> dict[str, str]:
    """A FIFO, a link to /dev/zero, a broken link, a link loop and a folder loop; returns name -> reason."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "broken.jpg").symlink_to(folder / "gone.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "again").symlink_to(folder)  # a folder loop
    return {
        "fifo.jpg": "FIFO",
        "zero.jpg": "character device",
        "broken.jpg": "broken symbolic link",
        "loop.jpg": "symbolic link loop",
        "again": "already walked",
    }


def _walk_bounded(code: str):
    return run_bounded(
        f"""
        import json
        from validation.core.data import image_folder, labelled_folder
        dataset = {code}
        skipped = [vars(f) for f in dataset.skipped]
        print(json.dumps({{"samples": [s.name for s in dataset.samples], "skipped": skipped}}))
        """,
        memory_limit=SMALL_MEMORY,
        timeout_s=TIME_LIMIT_S,
    )


def _walk_result(result) -> dict:
    assert result.outcome == "returned", f"{result.error_type}: {result.message}\n{result.output[-2000:]}"
    return json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))


def test_image_folder_lists_what_is_not_a_regular_file(tmp_path):
    expected = _hostile_entries(tmp_path / "images")
    _photo(tmp_path / "images" / "ok.png")
    found = _walk_result(_walk_bounded(f"image_folder({str(tmp_path / 'images')!r})"))
    assert found["samples"] == ["ok.png"]
    skipped = {s["name"]: s["reason"] for s in found["skipped"]}
    assert set(skipped) == set(expected)
    for name, reason in expected.items():
        assert reason in skipped[name], (name, skipped[name])


def test_class_folders_list_what_is_not_a_regular_file(tmp_path):
    root = tmp_path / "classes"
    expected = _hostile_entries(root / "cat")
    _photo(root / "cat" / "ok.png")
    (root / "dog").mkdir()
    _photo(root / "dog" / "ok.png")
    os.mkfifo(root / "stray.jpg")
    (root / ".cache").mkdir()
    found = _walk_result(_walk_bounded(f"labelled_folder({str(root)!r})"))
    assert found["samples"] == ["cat/ok.png", "dog/ok.png"]
    skipped = {s["name"]: s["reason"] for s in found["skipped"]}
    assert "FIFO" in skipped["stray.jpg"] and "hidden folder" in skipped[".cache"]
    for name, reason in expected.items():
        assert reason in skipped[f"cat/{name}"], (name, skipped)


def test_calibration_folders_list_image_names_that_are_not_regular_files(tmp_path):
    from exporters.onnx.quantize import find_calibration_images
    from lvvit import resolve_preset

    expected = _hostile_entries(tmp_path / "calibration")
    _photo(tmp_path / "calibration" / "ok.png")
    found = find_calibration_images(tmp_path / "calibration", resolve_preset("lvvit_s").preprocess, limit=4)
    assert [p.name for p in found.used] == ["ok.png"]
    skipped = {path.name: reason for path, reason in found.skipped}
    assert set(skipped) == set(expected) - {"again"}  # the folder loop is no image name
    for name, reason in skipped.items():
        assert expected[name] in reason, (name, reason)


# -- label files ---------------------------------------------------------------------------------------------------


def test_a_label_file_with_a_byte_order_mark_parses(tmp_path):
    _photo(tmp_path / "a.png")
    (tmp_path / "val_list.txt").write_bytes("a.png 3\n".encode("utf-8-sig"))
    dataset = labelled_folder(tmp_path)
    assert [(s.name, s.label) for s in dataset.samples] == [("a.png", 3)]
    assert dataset.describe()["label_file_sha256"] is not None


@pytest.mark.parametrize("label", ["1_0", "+1", "\u0661", "1.0", "0x1", " "])
def test_labels_are_decimal_digits_only(tmp_path, label):
    _photo(tmp_path / "a.png")
    _photo(tmp_path / "b.png")
    (tmp_path / "val_list.txt").write_text(f"a.png 1\nb.png {label}\n", encoding="utf-8")
    with pytest.raises(LabelFileError, match="line 2: .*(is not a class id|expected)"):
        labelled_folder(tmp_path, num_classes=20)


def test_paths_that_leave_the_data_folder_are_refused_by_line(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    _photo(root / "a.png")
    _photo(tmp_path / "secret.png")
    lines = ["a.png 0", "../secret.png 1", f"{tmp_path / 'secret.png'} 2", "sub/../../secret.png 3", "./a.png 4"]
    (root / "val_list.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelFileError) as caught:
        labelled_folder(root)
    message = str(caught.value)
    assert "4 bad line(s) of 5" in message
    assert "line 2: '../secret.png 1': the path leaves the data folder" in message
    assert "line 3: " in message and "absolute path; paths are relative to the data folder" in message
    assert "line 4: 'sub/../../secret.png 3': the path leaves the data folder" in message
    assert "line 5: './a.png 4': duplicate of line 1" in message
    dataset = labelled_folder(root, skip_bad_lines=True)
    assert [s.path for s in dataset.samples] == [root / "a.png"]


def test_a_label_file_that_is_a_fifo_or_too_big_is_refused(tmp_path):
    _photo(tmp_path / "a.png")
    os.mkfifo(tmp_path / "fifo.txt")
    result = run_bounded(
        f"""
        from validation.core.data import labelled_folder
        labelled_folder({str(tmp_path)!r}, {str(tmp_path / "fifo.txt")!r})
        """,
        memory_limit=SMALL_MEMORY,
        timeout_s=TIME_LIMIT_S,
    )
    _assert_clean(result, LabelFileError, "fifo.txt: cannot read the label file", "FIFO")
    (tmp_path / "val_list.txt").symlink_to(tmp_path / "fifo.txt")
    with pytest.raises(LabelFileError, match="val_list.txt: cannot read the label file .*FIFO"):
        labelled_folder(tmp_path)
    sparse = tmp_path / "huge.txt"
    with sparse.open("wb") as f:
        f.truncate(300 << 20)  # 300 MB that take no disk
    with pytest.raises(LabelFileError, match=r"huge.txt: cannot read the label file .*over the limit of 268435456"):
        labelled_folder(tmp_path, sparse)


def test_the_seed_imagenet_layout(tmp_path, monkeypatch):
    """`accuracy data/ILSVRC2012 --labels data/data68594/val_list.txt`: paths join the data folder (PaddleClas)."""
    monkeypatch.chdir(tmp_path)
    images = Path("data/ILSVRC2012")
    (images / "val").mkdir(parents=True)
    Path("data/data68594").mkdir(parents=True)
    for i in (1, 2):
        _photo(images / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", seed=i)
    labels = Path("data/data68594/val_list.txt")
    labels.write_text("val/ILSVRC2012_val_00000001.JPEG 65\nval/ILSVRC2012_val_00000002.JPEG 970\n")
    dataset = labelled_folder(images, labels, num_classes=1000)
    assert [(s.path, s.label) for s in dataset.samples] == [
        (images / "val/ILSVRC2012_val_00000001.JPEG", 65),
        (images / "val/ILSVRC2012_val_00000002.JPEG", 970),
    ]
    batches = list(stream_batches(dataset.samples, CONFIG, 2, workers=1, progress=False))
    assert batches[0].labels.tolist() == [65, 970] and not batches[0].failures
    # The same lines with the images beside the label file instead: the error says where they are.
    (Path("data/data68594/val")).mkdir()
    _photo(Path("data/data68594/val/ILSVRC2012_val_00000003.JPEG"))
    labels.write_text("val/ILSVRC2012_val_00000003.JPEG 1\n")
    with pytest.raises(LabelFileError, match="exists relative to the label file's folder.*as PaddleClas does"):
        labelled_folder(images, labels)


# -- ONNX metadata -------------------------------------------------------------------------------------------------


def _good_metadata() -> ModelMetadata:
    return ModelMetadata(
        preset="lvvit_s",
        preprocess=CONFIG,
        num_classes=10,
        batch=None,
        opset=17,
        weights={"source": "random-init", "seed": 0},
        versions={"kit": "test"},
        arch={"embed_dim": 64, "depth": 2},
    )


def _good_props() -> dict[str, str]:
    return _good_metadata().to_props()


def _with_preprocess(**changes) -> dict[str, str]:
    props = _good_props()
    pre = json.loads(props["lvvit.preprocess"])
    pre.update(changes)
    props["lvvit.preprocess"] = json.dumps(pre)
    return props


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE_PROPS = {
    "tiny crop_pct": (_with_preprocess(crop_pct=1e-4, resize_size=320000), "lvvit.preprocess.crop_pct"),
    "huge input_size": (_with_preprocess(input_size=20000, resize_size=22222), "lvvit.preprocess.input_size"),
    "input_size as bool": (_with_preprocess(input_size=True), "lvvit.preprocess.input_size"),
    "preprocess null": ({**_good_props(), "lvvit.preprocess": "null"}, "lvvit.preprocess must be a JSON object"),
    "deep JSON": ({**_good_props(), "lvvit.weights": _nested(30_000)}, "lvvit.weights nests 30000 levels"),
    "long value": ({**_good_props(), "lvvit.weights": " " * 100_000}, "lvvit.weights is 100000 characters"),
    "mean of 2": (_with_preprocess(mean=[0.5, 0.5]), "lvvit.preprocess.mean must be three finite numbers"),
    "mean of 1": (_with_preprocess(mean=[0.5]), "lvvit.preprocess.mean must be three finite numbers"),
    "mean text": (_with_preprocess(mean="abc"), "lvvit.preprocess.mean must be three finite numbers"),
    "mean NaN": (_with_preprocess(mean=[float("nan"), 0, 0]), "lvvit.preprocess.mean must be three finite"),
    "std zero": (_with_preprocess(std=[0, 0, 0]), "lvvit.preprocess.std must be three positive finite numbers"),
    "std inf": (_with_preprocess(std=[1, float("inf"), 1]), "lvvit.preprocess.std must be three positive finite"),
    "BGR": (_with_preprocess(channel_order="BGR"), "lvvit.preprocess.channel_order is not supported"),
    "NHWC": (_with_preprocess(layout="NHWC"), "lvvit.preprocess.layout is not supported"),
    "bilinear": (_with_preprocess(interpolation="bilinear"), "lvvit.preprocess.interpolation is not supported"),
    "unknown key": (_with_preprocess(gamma=2.2), "lvvit.preprocess has unknown keys ['gamma']"),
    "resize_size": (_with_preprocess(resize_size=999), "lvvit.preprocess.resize_size contradicts"),
    "input NHWC": (
        {**_good_props(), "lvvit.input": json.dumps({"layout": "NHWC"})},
        "lvvit.input.layout is not supported",
    ),
    "resolution": ({**_good_props(), "lvvit.resolution": "64"}, "lvvit.resolution contradicts"),
    "batch zero": ({**_good_props(), "lvvit.batch": "0"}, "lvvit.batch must be an integer in 1..4096"),
    "classes": ({**_good_props(), "lvvit.num_classes": "-1"}, "lvvit.num_classes must be an integer"),
    "huge int": ({**_good_props(), "lvvit.opset": "9" * 5000}, "lvvit.opset is not valid JSON"),
    "no versions": ({k: v for k, v in _good_props().items() if k != "lvvit.versions"}, "no lvvit.versions"),
}


def test_good_metadata_round_trips():
    assert ModelMetadata.from_props(_good_props(), "m.onnx") == _good_metadata()


@pytest.mark.parametrize("case", sorted(HOSTILE_PROPS))
def test_hostile_metadata_names_the_key(case):
    props, fragment = HOSTILE_PROPS[case]
    start = time.perf_counter()
    with pytest.raises(MetadataError) as caught:
        ModelMetadata.from_props(props, "m.onnx")
    assert str(caught.value).startswith("m.onnx: ") and fragment in str(caught.value), str(caught.value)
    assert time.perf_counter() - start < 2.0


def _tiny_onnx(path: Path, props: dict[str, str], extra: int = 0) -> Path:
    """An ONNX classifier (flatten + one MatMul) taking [N, 3, 32, 32] with `props` as metadata_props.

    `extra` adds a metadata entry of that many bytes from another tool.
    """
    path.write_bytes(_tiny_onnx_bytes(tuple(props.items()), extra))
    return path


@functools.cache
def _tiny_onnx_bytes(props: tuple[tuple[str, str], ...], extra: int = 0) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((3 * 32 * 32, 10), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in props:
        model.metadata_props.add(key=key, value=value)
    if extra:
        model.metadata_props.add(key="other.tool", value="x" * extra)
    return model.SerializeToString()


@pytest.mark.parametrize("runtime", ["OrtPredictor", "OpenVinoPredictor"])
def test_every_runtime_checks_the_metadata_when_it_opens_the_model(tmp_path, runtime):
    import runtimes

    predictor = getattr(runtimes, runtime)
    good = _tiny_onnx(tmp_path / "good.onnx", _good_props())
    try:
        with predictor(good) as opened:
            assert opened.preprocess_config == CONFIG
    except runtimes.BackendNotInstalledError as exc:
        pytest.skip(str(exc))
    for case in ("tiny crop_pct", "std zero", "NHWC"):
        props, fragment = HOSTILE_PROPS[case]
        path = _tiny_onnx(tmp_path / "bad.onnx", props)
        with pytest.raises(MetadataError, match=f"bad.onnx: {fragment}"):
            predictor(path)


def test_paddle_artifact_metadata_goes_through_the_same_checks(tmp_path):
    from runtimes.paddle_native import PaddlePredictor

    (tmp_path / "m.json").write_text("{}")
    (tmp_path / "m.pdiparams").write_bytes(b"\0")
    props, fragment = HOSTILE_PROPS["mean of 2"]
    (tmp_path / "m.lvvit.json").write_text(json.dumps(props))
    with pytest.raises(MetadataError, match=f"m.lvvit.json: {fragment}"):
        PaddlePredictor(tmp_path / "m.pdiparams")
    (tmp_path / "m.lvvit.json").write_text(_nested(100_000))
    with pytest.raises(MetadataError, match="nests 100000 levels deep; the limit is 8"):
        PaddlePredictor(tmp_path / "m.pdiparams")


def test_oversized_metadata_is_refused_in_bounded_memory(tmp_path):
    path = _tiny_onnx(tmp_path / "fat.onnx", _good_props(), extra=MAX_PROPS_BYTES + 1)
    result = run_bounded(
        f"""
        from runtimes.onnx_file import read_onnx_file
        read_onnx_file({str(path)!r})
        """,
        memory_limit=SMALL_MEMORY,
        timeout_s=TIME_LIMIT_S,
    )
    _assert_clean(result, MetadataError, "fat.onnx: metadata_props take", f"the limit is {MAX_PROPS_BYTES}")


def test_deep_json_metadata_in_bounded_memory():
    result = run_bounded(
        """
        from lvvit.metadata import ModelMetadata
        props = {"lvvit.preset": "lvvit_s", "lvvit.preprocess": "[" * 30000 + "]" * 30000}
        ModelMetadata.from_props(props, "deep.onnx")
        """,
        memory_limit=SMALL_MEMORY,
        timeout_s=TIME_LIMIT_S,
    )
    _assert_clean(result, MetadataError, "deep.onnx: lvvit.preprocess nests 30000 levels")


# -- fuzzing -------------------------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_GOOD = _good_props()
_PRE_KEYS = sorted(json.loads(_GOOD["lvvit.preprocess"]))


@st.composite
def _mutated_props(draw) -> dict[str, str]:
    """Valid props with some values (or preprocessing fields) replaced by arbitrary JSON, text or nothing."""
    props = dict(_GOOD)
    for key in draw(st.lists(st.sampled_from(sorted(_GOOD)), max_size=4)):
        props[key] = draw(st.one_of(_json_values.map(json.dumps), st.text(max_size=40)))
    for key in draw(st.lists(st.sampled_from(_PRE_KEYS), max_size=3)):
        pre = json.loads(props["lvvit.preprocess"]) if props["lvvit.preprocess"].startswith("{") else {}
        pre[key] = draw(_json_values)
        props["lvvit.preprocess"] = json.dumps(pre)
    for key in draw(st.lists(st.sampled_from(sorted(_GOOD)), max_size=2)):
        props.pop(key, None)
    return props


def _parse_or_kit_error(props: dict[str, str]) -> None:
    try:
        metadata = ModelMetadata.from_props(props, "fuzz.onnx")
    except MetadataError as exc:
        assert str(exc).startswith("fuzz.onnx"), exc
        assert len(str(exc)) < 2000  # bounded messages, whatever the value
        return
    pre = metadata.preprocess
    assert 1 <= pre.input_size <= 1024 and 0.5 <= pre.crop_pct <= 1.0
    assert np.isfinite(pre.mean).all() and (np.asarray(pre.std) > 0).all() and np.isfinite(pre.std).all()
    assert (pre.channel_order, pre.layout) == ("RGB", "NCHW")


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_props())
def test_fuzz_metadata_parser_raises_only_metadata_error(props):
    _parse_or_kit_error(props)


@settings(max_examples=200, deadline=2000)
@given(st.dictionaries(st.text(max_size=30), st.text(max_size=60), max_size=8))
def test_fuzz_metadata_parser_on_arbitrary_props(props):
    _parse_or_kit_error({**props, "lvvit.preset": "lvvit_s"})


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), cut=st.integers(0, 400))
def test_fuzz_onnx_reader_raises_only_kit_errors(tmp_path, data, cut):
    """Random bytes, and a real model's bytes cut or spliced with them: ModelFileError/MetadataError, or props."""
    from runtimes.onnx_file import kit_metadata, read_onnx_file

    base = _tiny_onnx_bytes(tuple(_GOOD.items()))
    for blob in (data, base[:cut] + data, base[: len(base) - cut] + data[:8]):
        path = tmp_path / "fuzz.onnx"
        path.write_bytes(blob)
        try:
            found, props = read_onnx_file(path)
            kit_metadata(props, found)
        except LvvitError:
            pass
