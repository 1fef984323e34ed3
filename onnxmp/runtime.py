"""ONNX Runtime sessions with fixed, deterministic options; batched runs.

Why: every measurement in onnxmp (calibration, phase 1, evaluation) must be repeatable, so
sessions are made in one place: CPU provider, a fixed optimization level, fixed threads.
Sessions use every graph optimization (NCHWc layouts make convolutions 2-3x faster on
x86 CPUs). Simulation sessions switch off ONNX Runtime's QDQ transformers
(`session.disable_quant_qdq`): without that, recent versions quantize a float weight that
follows a DequantizeLinear activation on their own (WeightBiasQuantization), and the
simulation would no longer compute exactly x_hat = s * (q - z) where the model says so.

Memory: every session draws activations from its own arena, freed with the session, and
ONNX Runtime returns outputs as views of buffers in that arena (not copies): an output
kept after its session keeps the whole arena alive, every region it grew. So arrays that
outlive their session (reference outputs, checkpoints) are copied (`owned`). A
process-wide arena shared by phase 1's sessions was dropped: it never shrinks, and the
regions it grew for sessions with different working sets (AdaRound's walk, then phase 1)
stayed resident for the rest of the run (EfficientNet-Lite0, 32 images: AdaRound's peak
1402 MiB with it, 1127 MiB without).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxmp import large_model
from onnxmp.errors import InternalError, ModelError, first_line


class Optimization(enum.Enum):
    """ONNX Runtime's graph optimization levels that onnxmp uses, by their short names."""

    ALL = "all"
    BASIC = "basic"
    DISABLED = "disabled"

    @property
    def ort_level(self) -> ort.GraphOptimizationLevel:
        return {
            Optimization.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            Optimization.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            Optimization.DISABLED: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[self]


@dataclass(frozen=True)
class Session:
    """An ONNX Runtime session and the weight arrays it reads in place.

    A large model's weights reach ORT as OrtValues over numpy arrays (see `_payload`) that
    ORT does not own: holding them here keeps them alive exactly as long as the session.
    `weights` is empty when ORT got the whole serialized model or a path.
    """

    ort: ort.InferenceSession
    weights: tuple[np.ndarray, ...] = ()

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list:
        return self.ort.run(output_names, feeds)

    def get_outputs(self) -> list:
        return self.ort.get_outputs()

    def get_inputs(self) -> list:
        return self.ort.get_inputs()


# ClipQuantRewrite still runs under disable_quant_qdq and fails on uint4 zero points.
SIMULATION_DISABLED_OPTIMIZERS = ("ClipQuantRewrite",)


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def session(
    model: onnx.ModelProto | str,
    *,
    optimization: Optimization | str = Optimization.ALL,
    threads: int | None = None,
    optimized_model_path: str | None = None,
    simulate: bool = True,
    limits: large_model.SizeLimits | None = None,
) -> Session:
    """An InferenceSession on the CPU with deterministic settings (`optimization` an
    `Optimization` or its value).

    `simulate=False` keeps ONNX Runtime's QDQ fusions (integer kernels), as a deployment
    runtime would run the model. A large model's weights reach ORT as in-memory external
    initializers (see `_payload`), with bit-identical results. Outputs kept beyond the
    session should be `owned` copies (see the module's "Memory").

    Raises:
        InternalError: ONNX Runtime cannot load the model: onnxmp built it, so that is
            onnxmp's bug (exit 3); the user's own model goes through `user_session`.
    """
    options, disabled = _options(Optimization(optimization), threads, simulate)
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    return _open(model, options, disabled, limits)


def profiled_session(model: onnx.ModelProto, *, threads: int | None, prefix: str) -> Session:
    """A deployment session (every optimization, QDQ fusions on) that records ORT's per-node
    profile; `session.ort.end_profiling()` writes it under `prefix` and returns the path."""
    options, disabled = _options(Optimization.ALL, threads, simulate=False)
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    return _open(model, options, disabled, None)


def _options(optimization: Optimization, threads: int | None, simulate: bool) -> tuple[ort.SessionOptions, list[str]]:
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization.ort_level
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if not simulate:
        return options, []
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options, list(SIMULATION_DISABLED_OPTIMIZERS)


def _open(model, options: ort.SessionOptions, disabled: list[str], limits) -> Session:
    payload, weights = _payload(model, options, limits)
    try:
        sess = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise InternalError(f"ONNX Runtime cannot load a model onnxmp built: {first_line(e) or type(e).__name__}") from e
    return Session(sess, weights)


def user_session(model: onnx.ModelProto | str, **options) -> Session:
    """`session` on the user's own model as given: ONNX Runtime refusing it is an input
    error (ModelError, exit 2), not onnxmp's bug (InternalError, exit 3) as for every model
    onnxmp builds."""
    try:
        return session(model, **options)
    except InternalError as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        raise ModelError(f"ONNX Runtime cannot load the model: {first_line(cause) or type(cause).__name__}") from e


def _payload(
    model: onnx.ModelProto | str, options: ort.SessionOptions, limits: large_model.SizeLimits | None
) -> tuple[str | bytes, tuple[np.ndarray, ...]]:
    """What ORT loads: a path, or `large_model.pack(model)`: the serialized model, or for a
    large model a weightless copy whose weights are added to `options` as OrtValues over
    numpy arrays, so ORT gets no second serialized copy (and none over 2 GB)."""
    if isinstance(model, str):
        return model, ()
    packed = large_model.pack(model, limits=limits)
    arrays = tuple(packed.weights.values())
    if arrays:
        options.add_external_initializers(list(packed.weights), [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays])
    return packed.structure, arrays


def run_batches(
    sess: Session,
    batches: Iterable[Mapping[str, np.ndarray]],
    outputs: Sequence[str] | None = None,
) -> Iterable[dict[str, np.ndarray]]:
    """Yield `{output name: array}` for each batch (lazily: memory holds one batch)."""
    names = list(outputs) if outputs is not None else [o.name for o in sess.get_outputs()]
    for feeds in batches:
        yield dict(zip(names, sess.run(names, dict(feeds)), strict=True))


def owned(array: np.ndarray) -> np.ndarray:
    """`array` as an array that owns its memory: a copy of an ONNX Runtime output.

    Why: ORT's outputs are views of buffers in the arena of the session that made them, and
    keep that whole arena alive after the session is gone (163 MiB for EfficientNet-Lite0's
    reference run, for 0.1 MiB of logits). Arrays that own their memory are returned as they are.
    """
    return array if array.flags.owndata else array.copy()
