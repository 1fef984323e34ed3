"""Evaluation functions for accuracy targets: top-1 on a labelled .npz, or a user's function.

Why: `max_drop` selection needs a score of any candidate model. The CLI names where the
score comes from (`--eval-data` or `--eval module:function`); the scoring itself is library
code, so the Python API and the benchmarks use the same one.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxmp import calib_data, runtime
from onnxmp.errors import CalibrationError, OnnxmpError

Evaluate = Callable[[onnx.ModelProto], float]


def top1_evaluator(path: Path, batch_size: int) -> Evaluate:
    """An evaluation function: top-1 accuracy (%) on a labelled .npz (inputs + `label`).

    The file is checked here (it opens, it has `label`) but its arrays are read at the first
    evaluation: the selection evaluates after calibration, AdaRound and phase 1, which then
    run without the evaluation data resident (1300 ImageNet images are 0.77 GB).

    Raises:
        CalibrationError: the file cannot be read or has no `label` array.
    """
    with _opened(path) as data:
        names = list(data.files)
    if calib_data.LABEL_KEY not in names:
        raise CalibrationError(f"{path}: no 'label' array for top-1 evaluation")
    loaded: dict[str, np.ndarray] = {}

    def evaluate(model: onnx.ModelProto) -> float:
        if not loaded:
            with _opened(path) as data:
                loaded.update({k: data[k] for k in data.files})
        arrays = {k: v for k, v in loaded.items() if k != calib_data.LABEL_KEY}
        labels = loaded[calib_data.LABEL_KEY]
        sess = runtime.session(model)
        inputs = calib_data.validate(arrays, calib_data.model_inputs(model), str(path))
        batches = runtime.run_batches(sess, inputs.batches(batch_size))
        correct = 0
        for batch_start, out in zip(range(0, len(labels), batch_size), batches, strict=True):
            logits = next(iter(out.values()))
            correct += int((logits.argmax(axis=-1) == labels[batch_start : batch_start + len(logits)]).sum())
        return 100.0 * correct / len(labels)

    return evaluate


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """The .npz at `path`, open; failures to read it, now or while its arrays are read, are CalibrationErrors."""
    try:
        with np.load(path, allow_pickle=False) as data:
            yield data
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{path}: cannot read evaluation data: {e}") from e


def imported_evaluator(spec: str) -> Evaluate:
    """The function `module:function` names (it scores an onnx.ModelProto, higher is better).

    Raises:
        OnnxmpError: the module or the function cannot be imported.
    """
    module_name, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise OnnxmpError(f"{spec}: cannot import the evaluation function ({e})") from e
