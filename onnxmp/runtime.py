"""ONNX Runtime sessions with fixed, deterministic options; batched runs.

Why: every measurement in onnxmp (calibration, phase 1, evaluation) must be repeatable, so
sessions are made in one place: CPU provider, a fixed optimization level, fixed threads.
Sessions use every graph optimization (NCHWc layouts make convolutions 2-3x faster on
x86 CPUs). Simulation sessions switch off ONNX Runtime's QDQ transformers
(`session.disable_quant_qdq`): without that, recent versions quantize a float weight that
follows a DequantizeLinear activation on their own (WeightBiasQuantization), and the
simulation would no longer compute exactly x_hat = s * (q - z) where the model says so.
"""

from __future__ import annotations

import enum
import functools
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
    shared_arena: bool = False,
    limits: large_model.SizeLimits | None = None,
) -> Session:
    """An InferenceSession on the CPU with deterministic settings (`optimization` an
    `Optimization` or its value).

    `simulate=False` keeps ONNX Runtime's QDQ fusions (integer kernels), as a deployment
    runtime would run the model. A large model's weights reach ORT as in-memory external
    initializers (see `_payload`), with bit-identical results. `shared_arena=True` draws
    activations from the process-wide arena of `register_shared_arena` instead of the session's own, for the many
    short-lived sessions of phase 1 (no arena regrown per session; it never shrinks, so
    sessions with other working sets, like calibration's, keep their own).

    Raises:
        InternalError: ONNX Runtime cannot load the model: onnxmp built it, so that is
            onnxmp's bug (exit 3); the user's own model goes through `user_session`.
    """
    options, disabled = _options(Optimization(optimization), threads, simulate)
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    if shared_arena:
        _use_shared_arena(options)
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


def _use_shared_arena(options: ort.SessionOptions) -> None:
    """Draw activations from the process-wide arena that grows only by what a run asks for."""
    register_shared_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")


@functools.cache
def register_shared_arena() -> None:
    """Register ONNX Runtime's environment arena, once per process (a cached factory).

    ORT keeps environment allocators process-wide, so this state is the process's, not a
    session's: sessions opt in with `session(..., shared_arena=True)`.
    """
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))  # 1: kSameAsRequested


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
