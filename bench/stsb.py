"""STS Benchmark scoring of all-MiniLM-L6-v2 (../shared/data), shared by the MiniLM benches.

Sentence embedding = mean of the last hidden state over the tokens where attention_mask is 1,
L2-normalised; a pair's similarity is the cosine; the score is Spearman x100 between the
similarities and the gold scores (ties take their average rank), as ../shared/data/README.md
describes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from onnxmp import runtime
from onnxmp.calib_data import CalibrationSet

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = SHARED / "models" / "all-MiniLM-L6-v2.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BATCH = 64


def available() -> bool:
    return MODEL.exists()


def calibration() -> CalibrationSet:
    data = np.load(SHARED / "text" / "stsb_minilm_calib.npz")
    return CalibrationSet({k: data[k] for k in INPUTS})


def test_split(split: str = "test") -> dict[str, np.ndarray]:
    data = np.load(SHARED / "text" / f"stsb_minilm_{split}.npz")
    return {k: data[k] for k in data.files}


def embeddings(sess, data: dict[str, np.ndarray], side: str) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings of one side ("s1" or "s2")."""
    feeds = {k: data[f"{side}_{k}"] for k in INPUTS}
    rows = []
    for start in range(0, len(feeds["input_ids"]), BATCH):
        batch = {k: v[start:start + BATCH] for k, v in feeds.items()}
        (hidden,) = sess.run(None, batch)
        mask = batch["attention_mask"][..., None].astype(np.float64)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        rows.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(rows)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of the ranks (ties averaged)."""
    rx, ry = _ranks(x), _ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def score(model: onnx.ModelProto | str, data: dict[str, np.ndarray], *, simulate: bool = True) -> float:
    """Spearman x100 of `model` on a split loaded by `test_split`."""
    sess = runtime.session(model if isinstance(model, onnx.ModelProto) else str(model), simulate=simulate)
    e1, e2 = embeddings(sess, data, "s1"), embeddings(sess, data, "s2")
    return 100 * spearman((e1 * e2).sum(axis=1), data["gold"])
