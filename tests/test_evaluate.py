"""evaluate: top-1 on a labelled .npz, read at the first evaluation (not held through the run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxmp import evaluate, model_io
from onnxmp.errors import CalibrationError
from tests import oracles

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def digits():
    model = model_io.load(MODELS / "digits_cnn.onnx")
    with np.load(MODELS / "digits_eval.npz") as data:
        images = data["image"][:20]
    predicted = oracles.run(model, {"image": images})["logits"].argmax(axis=1)
    return model, images, predicted


def test_top1_counts_the_labels_the_model_predicts(digits, tmp_path):
    model, images, predicted = digits
    labels = predicted.copy()
    labels[:5] = (labels[:5] + 1) % 10  # 5 of 20 wrong
    np.savez(tmp_path / "eval.npz", image=images, label=labels)
    assert evaluate.top1_evaluator(tmp_path / "eval.npz", batch_size=8)(model) == 75.0


def test_the_data_is_read_at_the_first_evaluation_not_when_the_evaluator_is_made(digits, tmp_path):
    # made before calibration, AdaRound and phase 1, the evaluator must not hold the data through them
    model, images, predicted = digits
    path = tmp_path / "eval.npz"
    np.savez(path, image=images, label=(predicted + 1) % 10)  # every label wrong: 0 %
    score = evaluate.top1_evaluator(path, batch_size=8)
    np.savez(path, image=images, label=predicted)  # replaced before the first evaluation: 100 %
    assert score(model) == 100.0
    np.savez(path, image=images, label=(predicted + 1) % 10)  # read once: later evaluations reuse it
    assert score(model) == 100.0


def test_a_file_without_labels_or_unreadable_is_refused_when_the_evaluator_is_made(tmp_path):
    np.savez(tmp_path / "unlabelled.npz", image=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(CalibrationError, match="no 'label' array"):
        evaluate.top1_evaluator(tmp_path / "unlabelled.npz", batch_size=8)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match="cannot read evaluation data"):
        evaluate.top1_evaluator(tmp_path / "broken.npz", batch_size=8)
