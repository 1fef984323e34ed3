"""Where the samples of each calibration input sit, and how many samples each run takes.

Why: calibration files hold many samples per input, but models differ in where a sample
goes: axis 0 for most, another axis for recurrent states ([2, batch, 128]), nowhere for a
rank-0 sample rate, and a static batch dimension ([1, 3, 224, 224]) fixes how many samples
ONNX Runtime accepts per run. `calib_data.validate` reads the layout with these helpers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from onnxmp.errors import CalibrationError

SAMPLE_AXIS_PREFIX = "sample_axis/"  # `sample_axis/<input>`: a rank-0 int, the model axis holding the samples

logger = logging.getLogger(__name__)


def sample_axes(arrays: Mapping[str, np.ndarray], inputs: Mapping[str, tuple], where: str) -> dict[str, int]:
    """The `sample_axis/<input>` entries of `arrays`, checked against the inputs' ranks."""
    axes = {}
    for key in (k for k in arrays if k.startswith(SAMPLE_AXIS_PREFIX)):
        name, value = key[len(SAMPLE_AXIS_PREFIX) :], np.asarray(arrays[key])
        if name not in inputs:
            raise CalibrationError(f"{where}: {key!r} names no model input (inputs: {', '.join(inputs)})")
        rank = len(inputs[name][1])
        if value.ndim != 0 or value.dtype.kind not in "iu" or not 0 <= int(value) < rank:
            raise CalibrationError(f"{where}: {key!r} must be one integer in 0..{rank - 1} (the axis of {name!r} holding the samples)")
        axes[name] = int(value)
    return axes


def run_size(counts: set[int], static: Mapping[str, int | None], where: str) -> tuple[int, int | None]:
    """(samples kept, samples per run) for inputs with `counts` samples whose sample axes
    have the `static` sizes (None: symbolic). Without a static size every sample is kept and
    runs take any number; with one, runs take exactly that many and the samples beyond a
    multiple of it are left out (with a warning)."""
    if len(counts) > 1:
        raise CalibrationError(f"{where}: inputs have different sample counts {sorted(counts)}")
    count = counts.pop()
    fixed = {d for d in static.values() if d is not None}
    if not fixed:
        return count, None
    if len(fixed) > 1:
        raise CalibrationError(f"{where}: inputs fix different batch sizes {sorted(fixed)} at their sample axes")
    size = fixed.pop()
    if count < size:
        raise CalibrationError(f"{where}: the model runs {size} samples at a time (a static batch dimension); found {count}")
    kept = count - count % size
    logger.info("%s: the model fixes %d samples per run (a static batch dimension): runs go chunk by chunk at that size",
                where, size)
    if kept < count:
        logger.warning("%s: the model runs %d samples at a time; the last %d of %d samples are left out",
                       where, size, count - kept, count)
    return kept, size
