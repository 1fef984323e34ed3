"""Signal and noise of a model's outputs against the float reference, over all samples.

Why: every phase-1 number and every measured point of a curve is this one measurement:
sums of squares in float64 over all calibration samples, so results do not depend on the
batch size, and no epsilon, so a quantizer that changes nothing gives +inf dB.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxmp import calib_data, quant_math, runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.passes.frontier_walk import Chunk

Reference = Mapping[str, Sequence[np.ndarray]]  # float outputs by name, one array per run


@dataclass(frozen=True)
class OutputNoise:
    """Per-output sums of squares of the float output and of its error, over all samples."""

    signal: tuple[float, ...]
    noise: tuple[float, ...]

    @property
    def noise_ratio(self) -> float:
        """Mean over outputs of noise / signal (0.0 when nothing changed)."""
        ratios = [n / s if s > 0 else (0.0 if n == 0 else math.inf) for s, n in zip(self.signal, self.noise, strict=True)]
        return float(np.mean(ratios))

    @property
    def sqnr_db(self) -> float:
        ratio = self.noise_ratio
        return math.inf if ratio == 0 else -10 * math.log10(ratio)


def reference_outputs(model: onnx.ModelProto, calib: CalibrationSet, *, batch_size: int) -> Reference:
    """Float outputs run by run (the feeds of `calib.batches(batch_size)`), by output name.

    Kept per run, not joined: an output's samples may sit on any axis (a recurrent state
    [2, batch, 128]) or on none (a rank-0 total), and every measurement runs the same feeds.
    Kept as copies (`runtime.owned`): ONNX Runtime's own output arrays would keep the
    session's arena alive for the whole run.
    """
    sess = runtime.session(model)
    batches = runtime.run_batches(sess, calib.batches(batch_size))
    runs = [{name: runtime.owned(value) for name, value in run.items()} for run in batches]
    calib_data.check_finite_ranges({  # an overflowed output would make every SQNR NaN
        name: (min(float(r[name].min()) for r in runs), max(float(r[name].max()) for r in runs))
        for name in runs[0] if runs[0][name].size and np.issubdtype(runs[0][name].dtype, np.floating)
    })
    return {name: tuple(run[name] for run in runs) for name in runs[0]}


def measure(
    model: onnx.ModelProto | str,
    calib: CalibrationSet,
    reference: Reference,
    *,
    batch_size: int,
    simulate: bool = True,
) -> OutputNoise:
    """Signal and noise of the whole `model`'s outputs (a model or its path) against the float
    `reference`; `simulate=False` runs it as deployed (ONNX Runtime's QDQ rewrites on)."""
    chunks = zip(calib.starts(batch_size), calib.batches(batch_size), strict=True)
    return measure_chunks(model, chunks, reference, signal_of(reference), simulate=simulate)


def measure_chunks(
    model: onnx.ModelProto | str,
    chunks: Iterator[Chunk],
    reference: Reference,
    signal: Mapping[str, float],
    *,
    threads: int | None = None,
    simulate: bool = True,
) -> OutputNoise:
    """Noise of the outputs against the float reference; outputs `model` lacks add signal only.

    The k-th chunk is compared with the k-th run of `reference` (the same feeds).
    """
    noise = dict.fromkeys(reference, 0.0)
    sess = runtime.session(model, threads=threads, simulate=simulate)
    names = [o.name for o in sess.get_outputs()]
    for k, (_, feeds) in enumerate(chunks):
        for name, got in zip(names, sess.run(names, feeds), strict=True):
            want = reference[name][k]
            if want.shape != got.shape:
                raise ValueError(f"output {name}: run {k} gives {got.shape}, the reference {want.shape} (batch sizes differ?)")
            noise[name] += quant_math.signal_and_noise(want, got)[1]
    return OutputNoise(tuple(signal[n] for n in reference), tuple(noise[n] for n in reference))


def signal_of(reference: Reference) -> dict[str, float]:
    """Sum of squares of each float output over all samples (the same for every evaluation)."""
    return {name: sum(quant_math.signal_and_noise(run, run)[0] for run in runs) for name, runs in reference.items()}
