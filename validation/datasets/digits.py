"""A real labelled image set and a tiny LV-ViT trained on it: scikit-learn's handwritten digits.

The data: `sklearn.datasets.load_digits()`, the 1,797 8x8 images (16 gray
levels) of the UCI "Optical Recognition of Handwritten Digits" set, shipped
inside scikit-learn, so nothing downloads. Each becomes a 32x32 8-bit gray PNG
(dark ink on white paper, upscaled bicubically), in the ImageNet layout:

    OUT/val/digit_0012.png ...     + OUT/val_list.txt   ("val/digit_0012.png 3" lines)
    OUT/train/3/digit_0042.png ... (one folder per class)
    OUT/labels.txt                 (class names, one a line)

The split is stratified and fixed (a quarter of each class to `val`, seed 0).

The model: `lvvit_s` at 32px with embed_dim 32, depth 2, 4 heads and 10
classes (the `4_2` stem makes 2x2 = 4 patch tokens), ~237k parameters, trained
in Paddle for 10 epochs on the `train` split through the kit's own
preprocessing (`lvvit.preprocess`, crop_pct 0.9, ImageNet mean/std), with
AdamW, a one-cycle learning rate and +-2 px shifts; a minute or two on 2 cores.
Everything is seeded, so a run on the same machine and library versions writes
the same file; the committed `validation/assets/digits_lvvit.safetensors` is
its output.

    python -m validation digits --out DIR        # write the image folders
    python -m validation digits train            # retrain, rewrite the committed weights
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from lvvit.common.progress import Log, to_stderr
from lvvit.presets import Preset, at_resolution, get_preset

PRESET = "lvvit_s"
RESOLUTION = 32
ARCH = {"embed_dim": 32, "depth": 2, "num_heads": 4, "num_classes": 10}
IMAGE_SIZE = 32  # pixels of the written PNGs
VAL_FRACTION = 0.25
SPLIT_SEED = 0
TRAIN_SEED = 0
EPOCHS = 10
BATCH_SIZE = 64
MAX_LR = 2e-3
WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "digits_lvvit.safetensors"
CLASSES = [str(d) for d in range(10)]


def digits_spec() -> Preset:
    """The tiny digits model as a kit preset (no Paddle import): `lvvit_s`, 32px, the `ARCH` overrides."""
    base = get_preset(PRESET)
    return at_resolution(replace(base, arch=replace(base.arch, **ARCH)), RESOLUTION)


def cli_model_args(weights: Path = WEIGHTS) -> list[str]:
    """The `python -m validation` options that name this model."""
    arch = ",".join(f"{k}={v}" for k, v in ARCH.items())
    return ["--preset", PRESET, "--resolution", str(RESOLUTION), "--arch", arch, "--weights", str(weights)]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] float in 0..16, labels [1797]) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise ImportError("the digits data set ships with scikit-learn: pip install scikit-learn") from exc
    bunch = sklearn_digits()
    return np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def digit_image(values: np.ndarray, size: int = IMAGE_SIZE) -> Image.Image:
    """An 8x8 digit (0..16 ink) -> a `size` x `size` 8-bit gray image, dark ink on white."""
    gray = np.clip(np.rint(255.0 - values * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BICUBIC)


def split(
    labels: np.ndarray, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): `val_fraction` of every class to val, chosen by a seeded shuffle."""
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        val.extend(members[: int(round(len(members) * val_fraction))].tolist())
    val_idx = np.array(sorted(val), dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx


@dataclass(frozen=True)
class DigitsFolder:
    root: Path
    val_list: Path
    val_images: int
    train_images: int


def write_folder(out: str | Path, log: Log = to_stderr) -> DigitsFolder:
    """Write the val split (flat + `val_list.txt`) and the train split (one folder per class) under `out`."""
    root = Path(out)
    images, labels = load_digits()
    train_idx, val_idx = split(labels)
    (root / "val").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in val_idx:
        name = f"val/digit_{i:04d}.png"
        digit_image(images[i]).save(root / name)
        lines.append(f"{name} {labels[i]}")
    (root / "val_list.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for i in train_idx:
        folder = root / "train" / CLASSES[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        digit_image(images[i]).save(folder / f"digit_{i:04d}.png")
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    log(f"wrote {len(val_idx)} val images (+ val_list.txt) and {len(train_idx)} train images under {root}")
    return DigitsFolder(root, root / "val_list.txt", len(val_idx), len(train_idx))


@dataclass(frozen=True)
class TrainResult:
    weights: Path
    val_top1: float  # percent, on the val split, in eval mode
    train_top1: float
    seconds: float


def _inputs(images: np.ndarray, spec: Preset) -> np.ndarray:
    from lvvit.preprocess import preprocess

    return np.stack([preprocess(digit_image(values), spec.preprocess) for values in images])


def _top1(model, inputs: np.ndarray, labels: np.ndarray) -> float:
    import paddle

    model.eval()
    with paddle.no_grad():
        predicted = np.concatenate(
            [model(paddle.to_tensor(inputs[i : i + 256])).numpy().argmax(1) for i in range(0, len(inputs), 256)]
        )
    return float((predicted == labels).mean() * 100)


def train(
    output: str | Path = WEIGHTS, epochs: int = EPOCHS, seed: int = TRAIN_SEED, log: Log = to_stderr
) -> TrainResult:
    """Train the tiny model on the train split and write its weights (Paddle layout, safetensors) to `output`."""
    import paddle

    from lvvit import create_model
    from lvvit.weights.state_dict import save_state_dict

    started = time.perf_counter()
    spec = digits_spec()
    images, labels = load_digits()
    train_idx, val_idx = split(labels)
    x_train, y_train = _inputs(images[train_idx], spec), labels[train_idx]
    x_val, y_val = _inputs(images[val_idx], spec), labels[val_idx]
    rng = np.random.default_rng(seed)
    model = create_model(spec, seed=seed)
    steps_per_epoch = len(x_train) // BATCH_SIZE
    schedule = paddle.optimizer.lr.OneCycleLR(max_learning_rate=MAX_LR, total_steps=epochs * steps_per_epoch)
    optimizer = paddle.optimizer.AdamW(learning_rate=schedule, parameters=model.parameters(), weight_decay=0.05)
    log(f"training {spec.name} {spec.resolution}px {ARCH} on {len(x_train)} digits, {epochs} epochs")
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(x_train))
        for step in range(steps_per_epoch):
            batch = order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
            shift = tuple(int(s) for s in rng.integers(-2, 3, size=2))
            x = np.roll(x_train[batch], shift=shift, axis=(2, 3))
            logits = model.forward_head(model.forward_features(paddle.to_tensor(x)))  # the inference output
            loss = paddle.nn.functional.cross_entropy(logits, paddle.to_tensor(y_train[batch]))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            schedule.step()
        log(f"  epoch {epoch + 1}/{epochs}: loss {float(loss):.4f}, val top-1 {_top1(model, x_val, y_val):.2f}%")
    model.eval()
    path = save_state_dict(model, output)
    result = TrainResult(
        path, _top1(model, x_val, y_val), _top1(model, x_train, y_train), time.perf_counter() - started
    )
    log(
        f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): val top-1 {result.val_top1:.2f}%, "
        f"train top-1 {result.train_top1:.2f}%, {result.seconds:.0f}s"
    )
    return result
