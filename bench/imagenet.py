"""Shared ImageNet helpers for the benchmarks: data from ../shared, top-1 evaluation.

Why: every benchmark calibrates on the same 256 images and scores on the same 1300, so
the loading rules (sorted names, TF preprocessing for EfficientNet-Lite) live here once.
Preprocessed arrays are cached in the system temp folder, never in the repository.
"""

from __future__ import annotations

import csv
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import onnx

from onnxmp import calib_data, runtime
from onnxmp.calib_data import Preprocess

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EFFICIENTNET = SHARED / "models" / "efficientnet_lite0.onnx"
CACHE = Path(tempfile.gettempdir()) / "onnxmp-bench-cache"


def _cached(name: str, build) -> dict[str, np.ndarray]:
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{name}.npz"
    if not path.exists():
        arrays = build()
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def calibration_images(model: onnx.ModelProto, count: int = 256, size: int = 224) -> calib_data.CalibrationSet:
    """The first `count` images of imagenet/samples (sorted by name), TF preprocessing."""
    def build():
        files = sorted((SHARED / "imagenet" / "samples").glob("*.JPEG"))[:count]
        return {"input": np.stack([calib_data.preprocess_image(f, size, Preprocess.TF) for f in files])}

    arrays = _cached(f"samples-{count}-{size}-tf", build)
    return calib_data.validate(arrays, calib_data.model_inputs(model), "imagenet/samples")


def validation_set(size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """All 1300 imagenet/val images (TF preprocessing) and their labels."""
    def build():
        with open(SHARED / "imagenet" / "labels.csv") as f:
            rows = [r for r in csv.DictReader(f) if r["file"].startswith("val/")]
        rows.sort(key=lambda r: r["file"])
        images = np.stack([calib_data.preprocess_image(SHARED / "imagenet" / r["file"], size, Preprocess.TF) for r in rows])
        return {"input": images, "label": np.array([int(r["label_index"]) for r in rows])}

    arrays = _cached(f"val-{size}-tf", build)
    return arrays["input"], arrays["label"]


def top1(model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray, batch_size: int = 50) -> float:
    """Top-1 accuracy (%) of `model` in ONNX Runtime (simulation settings)."""
    sess = runtime.session(model)
    name = sess.get_inputs()[0].name
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = sess.run(None, {name: images[start : start + batch_size]})[0]
        correct += int((logits.argmax(axis=1) == labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(labels)


def efficientnet_setup():
    """(model, calibration set, val images, val labels), or None when ../shared is absent."""
    if not EFFICIENTNET.exists():
        print("../shared is absent: nothing to measure")
        return None
    model = onnx.load(str(EFFICIENTNET))
    images, labels = validation_set()
    return model, calibration_images(model), images, labels


def digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()[:12]
