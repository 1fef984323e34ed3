"""The steps before the search, and the measurement of any plan.

Why: `pipeline` orders the run; these are its first steps (canonicalize, analyse, count
MACs, calibrate) and the one way a plan is turned into a model and measured, which the
homogeneous run, the selection and the benchmarks all share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import onnx

from onnxmp import bops, calib_data, graph, model_io
from onnxmp.calib_data import CalibrationSet
from onnxmp.encodings import EncodingSet
from onnxmp.errors import CalibrationError, ModelError, OnnxmpError, PassError, first_line
from onnxmp.float_candidate import quantized_part, with_float
from onnxmp.hw_profile import ActivationClipping, HwProfile, WeightRounding
from onnxmp.passes import CANONICALIZE
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.check_canonical import check_canonical
from onnxmp.passes.correct_biases import Biases, biases_for, with_biases
from onnxmp.passes.insert_qdq import Rounded, WeightStorage, insert_quantizers, quantizers_for
from onnxmp.passes.observe_shapes import macs_with_observed_shapes, unknown_mac_ops
from onnxmp.passes.quantizer_groups import quantizer_groups
from onnxmp.passes.round_weights import (
    INPUTS_VERSION,
    LayerRounding,
    RoundingOptions,
    round_layers,
    with_scales,
)
from onnxmp.phase1.measure import measure, reference_outputs
from onnxmp.records import Candidate, GroupAnalysis, ParetoPoint, Plan, SensitivityTable
from onnxmp.run_records import (
    AdaRoundInputs,
    Calibrated,
    Decision,
    Prepared,
    Settings,
    homogeneous_plan,
)
from onnxmp.store import ResultStore, run_key

logger = logging.getLogger(__name__)

CHECK_SAMPLES = 4  # samples of the first calibration run on which canonicalization is checked

Pass = Callable[[onnx.ModelProto], onnx.ModelProto]


def run_passes(model: onnx.ModelProto, passes: Sequence[Pass], *, verify: bool = False) -> onnx.ModelProto:
    """Run passes in order; a failing pass becomes a PassError naming it."""
    for run in passes:
        before = len(model.graph.node)
        try:
            model = run(model)
        except OnnxmpError:
            raise
        except Exception as e:  # a bug in a pass: name it, keep the cause
            raise PassError(f"pass {run.__name__} failed: {first_line(e) or type(e).__name__}") from e
        if verify:  # a weightless check for large models: the checker serializes what it gets
            try:
                model_io.validate(model, f"after pass {run.__name__}")
            except ModelError as e:
                raise PassError(str(e)) from e
        logger.info("%s: %d -> %d nodes", run.__name__, before, len(model.graph.node))
    return model


def prepare(
    model: onnx.ModelProto,
    profile: HwProfile,
    calib: CalibrationSet | None,
    *,
    verify: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Prepared:
    """Canonicalize, index, derive groups, count MACs and BOPs.

    MACs (and so BOPs) are per sample at the shapes the run sees: the calibration samples'
    shapes; without calibration data (`onnxmp groups`), `input_shapes` (`--input-shape
    input_ids=1x128`) and, for inputs not named there, the model's input shapes with
    unknown dimensions taken as 1. Shapes inference cannot give come from one run (`_macs`).
    """
    canonical = run_passes(model, CANONICALIZE, verify=verify)
    index = graph.build(canonical)
    if calib is not None:
        check_canonical(model, canonical, next(calib.batches(CHECK_SAMPLES)), CANONICALIZE)
    analysis = quantizer_groups(index, profile)
    if not analysis.groups:
        logger.warning("nothing to quantize: no op of this model has a kernel on profile %s (%d ops stay float; "
                       "`onnxmp groups` says why); the output model computes in float", profile.name, len(analysis.skipped))
    macs = _macs(canonical, analysis, calib, input_shapes)
    return Prepared(
        original=model_io.weightless(model, model_io.weights(model, min_bytes=0)),
        model=canonical,
        graph=index,
        analysis=analysis,
        macs=macs,
        group_bops=bops.group_bops(index, with_float(analysis) if profile.float_groups else analysis, macs),
        reference_bops=bops.reference_bops(index, analysis, macs),
        profile=profile,
        fingerprints={
            "model": model_io.fingerprint(model),
            "profile": profile.fingerprint,
            "calibration": calib.fingerprint() if calib is not None else "none",
        },
    )


def _macs(
    canonical: onnx.ModelProto,
    analysis: GroupAnalysis,
    calib: CalibrationSet | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
) -> dict[str, int]:
    """MACs per op for one run's feeds; shapes inference cannot give come from running one run.

    Without calibration data unknown dimensions count as 1 (or `input_shapes`), and ops
    whose MACs stay unknown are named in a warning (they would cost 0 BOPs).
    """
    if calib is not None:
        sample_shapes = calib.feed_shapes()
    else:
        inputs = calib_data.model_inputs(canonical)
        unknown_inputs = sorted(set(input_shapes or {}) - set(inputs))
        if unknown_inputs:
            raise CalibrationError(f"--input-shape: the model has no input {unknown_inputs[0]!r} (inputs: {', '.join(inputs)})")
        sample_shapes = {name: tuple(d or 1 for d in dims) for name, (_, dims) in inputs.items()}
        sample_shapes.update({name: tuple(shape) for name, shape in (input_shapes or {}).items()})
    concrete = bops.concrete_graph(canonical, sample_shapes)
    macs = bops.macs_per_op(concrete)
    unknown = unknown_mac_ops(concrete, analysis, macs)
    if unknown and calib is not None:
        macs |= macs_with_observed_shapes(canonical, concrete, unknown, next(calib.batches(1)))
        unknown = unknown_mac_ops(concrete, analysis, macs)
    if unknown:
        logger.warning("MACs of %d quantized ops are unknown (e.g. %s: shapes not inferable); they count 0 BOPs",
                       len(unknown), unknown[0])
    return macs


def calibrate_ranges(
    prepared: Prepared, calib: CalibrationSet, settings: Settings, *, prepare_s: float = 0.0, bits: Candidate | None = None
) -> Calibrated:
    """Ranges of every (tensor, bit-width) the groups can take, and the float outputs.

    With `bits` (a homogeneous run) only the pairs that configuration needs: a 100 M
    parameter model at W8A8 searches 8-bit weight ranges only.
    """
    start = time.perf_counter()
    analysis = prepared.analysis
    if bits is not None:
        plan = homogeneous_plan(analysis, bits, prepared.profile)
        analysis = replace(analysis, groups=tuple(replace(g, candidates=(plan[g.id],)) for g in analysis.groups))
    encodings = calibrate(
        prepared.model, prepared.graph, analysis, calib, profile=prepared.profile,
        method=settings.range_method, batch_size=settings.batch_size,
    )
    reference = reference_outputs(prepared.model, calib, batch_size=settings.batch_size)  # once per run
    timings = {"prepare_s": prepare_s, "calibrate_s": time.perf_counter() - start}
    return Calibrated(prepared, encodings, calib, reference, timings)


def point_of(plan: Plan, prepared: Prepared, table: SensitivityTable | None) -> ParetoPoint:
    """The curve record of any plan: relative BOPs and (with a table) predicted SQNR."""
    rel = bops.relative_bops(plan, prepared.group_bops, prepared.reference_bops)
    predicted = table.predicted_sqnr_db(plan) if table is not None else float("nan")
    return ParetoPoint(rel, predicted, plan)


def simulate(prepared: Prepared, plan: Plan, encodings, rounded: Rounded | None = None, biases: Biases | None = None) -> onnx.ModelProto:
    """The QDQ model of `plan` as phase 1 measures it (fake-quantized float weights; the
    `rounded` integers and corrected `biases` of the plan's weight widths where given)."""
    chosen = quantizers(prepared, plan, encodings, rounded, biases)
    return insert_quantizers(biased_model(prepared, plan, biases), chosen, weights=WeightStorage.FAKE_FLOAT)


def biased_model(prepared: Prepared, plan: Plan, biases: Biases | None) -> onnx.ModelProto:
    """The canonical model with the corrected biases of `plan`'s weight widths."""
    return with_biases(prepared.model, biases_for(prepared.analysis, quantized_part(plan), biases or {}))


def quantizers(prepared: Prepared, plan: Plan, encodings, rounded: Rounded | None = None, biases: Biases | None = None) -> EncodingSet:
    """Every quantizer `plan` puts in the model (int32 biases: the corrected ones): what is
    simulated is what is emitted (groups left float, `onnxmp.float_candidate`, get none)."""
    return quantizers_for(
        biased_model(prepared, plan, biases), prepared.analysis, quantized_part(plan), encodings,
        quantize_bias=prepared.profile.quantize_bias, rounded=rounded, table_bits=table_bits(prepared.profile),
    )


def table_bits(profile: HwProfile) -> int | None:
    """The width of the weight-only Gather tables, None when the profile keeps them float."""
    return None if profile.embeddings is None else profile.embeddings.bits


def measured_sqnr(calibrated: Calibrated, plan: Plan, batch_size: int) -> float:
    """True output SQNR of `plan` over the calibration data."""
    qdq = simulate(calibrated.prepared, plan, calibrated.encodings, calibrated.rounded, calibrated.biases)
    return measure(qdq, calibrated.calib, calibrated.reference, batch_size=batch_size).sqnr_db


def homogeneous(calibrated: Calibrated, bits: Candidate, settings: Settings) -> Decision:
    """The one configuration `bits` everywhere, with its measured SQNR."""
    plan = homogeneous_plan(calibrated.prepared.analysis, bits, calibrated.prepared.profile)
    point = replace(
        point_of(plan, calibrated.prepared, None), measured_sqnr_db=measured_sqnr(calibrated, plan, settings.batch_size)
    )
    return Decision(plan, point, (point,), timings=dict(calibrated.timings))


ADAROUND_STORE = "adaround.jsonl"
# The measured defaults (README "AdaRound"). Searches round each layer on the float network's
# inputs (the paper's §3.5): phase 1 measures each group alone in a float network, and mixed
# plans match no single quantized prefix (EfficientNet-Lite0, npu: MP@0.3 81.69 % vs 79.38 %
# with prefix inputs, predictions within 0.6 dB vs 3.35 dB off). A homogeneous run (`--bits`)
# knows the exact network every layer will see, so it rounds on that quantized prefix
# (W4A8 79.85 % vs 62.31 % on float inputs).
ADAROUND = RoundingOptions(inputs=AdaRoundInputs.FLOAT)
ADAROUND_HOMOGENEOUS = replace(ADAROUND, inputs=AdaRoundInputs.QUANTIZED)


def activation_clipping(prepared: Prepared, settings: Settings) -> ActivationClipping:
    """The run's clipping: the setting (`--activation-clipping`) if given, else the profile's."""
    return settings.activation_clipping or prepared.profile.activation_clipping


def weight_rounding(prepared: Prepared, settings: Settings) -> WeightRounding:
    """The run's rounding: the setting (`--weight-rounding`) if given, else the profile's."""
    return settings.weight_rounding or prepared.profile.weight_rounding


def bias_correction(prepared: Prepared, settings: Settings) -> bool:
    """Whether the run corrects biases: the setting (`--bias-correction`) if given, else the profile's."""
    return settings.bias_correction if settings.bias_correction is not None else prepared.profile.bias_correction


def adaround_key(prepared: Prepared, settings: Settings) -> str:
    """What the phase-1 store key must know of the rounding and bias correction (its results depend on them)."""
    rounding, corrected = weight_rounding(prepared, settings), bias_correction(prepared, settings)
    if rounding is WeightRounding.NEAREST and not corrected and not settings.output_range:
        return rounding.value
    extra = (":bias_correction" if corrected else "") + (":output_range" if settings.output_range else "")
    return f"{rounding.value}{extra}:{ADAROUND!r}:v{INPUTS_VERSION}:seed={settings.seed}"


def adaround(
    calibrated: Calibrated, settings: Settings, output_dir: Path | None, *, options: RoundingOptions = ADAROUND,
    progress: Callable[[int, int, str], None] | None = None, plan: Plan | None = None,
) -> Calibrated:
    """`calibrated` with AdaRounded integers, corrected biases and/or output-aware scales for every (weight,
    bits) up to ADAROUND.max_bits (a no-op with none), kept in `output_dir/adaround.jsonl`; quantized-prefix
    inputs come from `plan`'s network (a `--bits` run's), else each width's `width_plan`."""
    prepared = calibrated.prepared
    learn = weight_rounding(prepared, settings) is WeightRounding.ADAROUND
    if not learn and not bias_correction(prepared, settings) and not settings.output_range:
        return calibrated
    start = time.perf_counter()
    store = None
    if output_dir is not None:
        key = run_key(model=prepared.fingerprints["model"], calibration=prepared.fingerprints["calibration"])
        store = ResultStore(Path(output_dir) / ADAROUND_STORE, key)
    options = replace(options, grams=replace(options.grams, seed=settings.seed), adaround=learn,
                      bias_correction=bias_correction(prepared, settings), output_range=settings.output_range)
    rounded: Rounded = {}
    biases: Biases = {}
    all_encodings = dict(calibrated.encodings)
    for bits in sorted({b for (name, b) in calibrated.encodings if prepared.graph.is_constant(name)}):
        encodings = {k: e for k, e in calibrated.encodings.items() if k[1] == bits}
        def network(done: LayerRounding, walked=plan or width_plan(prepared, bits)):  # noqa: B008 (bound per width)
            return simulate(prepared, walked, with_scales(calibrated.encodings, done), done.integers, done.biases)

        chosen = round_layers(
            prepared.model, encodings, calibrated.calib, options=options, store=store, quantized=network, progress=progress,
        )
        rounded = {**rounded, **chosen.integers}
        biases = {**biases, **chosen.biases}
        all_encodings = with_scales(all_encodings, chosen)
    timings = {**calibrated.timings, "adaround_s": time.perf_counter() - start}
    return replace(calibrated, encodings=all_encodings, rounded=rounded, biases=biases, timings=timings)


def width_plan(prepared: Prepared, w_bits: int) -> Plan:
    """Every group at its highest candidate with weight width `w_bits` (weightless groups at
    the activation width those kernels pair with): the network AdaRound's layer inputs come
    from when rounding `w_bits` weights."""
    paired = max((k.a_bits for k in prepared.profile.kernels if k.w_bits == w_bits), default=None)
    choices = {}
    for group in prepared.analysis.groups:
        same = [c for c in group.candidates if c.w_bits == w_bits or (c.w_bits is None and c.a_bits == paired)]
        choices[group.id] = same[0] if same else group.highest
    return Plan(choices)
