"""Activation histograms: exact ranges, a per-sample subsample, bounded memory, any batch size.

The histograms are reduced inside the ONNX graph (pass 1: min/max/shape, pass 2: every
stride-th value of each sample); these tests compare them with the activations exposed
whole through `oracles.with_outputs`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmp import hw_profile, runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.passes import collect_histograms as histograms_module
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.collect_histograms import (
    HISTOGRAM_BINS,
    activation_histograms,
    histogram_batch_size,
)
from onnxmp.passes.quantizer_groups import quantizer_groups
from tests import builders, oracles

SAMPLES = 5


def _model(nodes, inputs, outputs, weights=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(weights))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def conv_relu_conv() -> onnx.ModelProto:
    #   x[N,3,10,10] ─ conv1(w1[4,3,3,3], pads 1) ─► c1 ─ relu ─► r ─ conv2(w2[2,4,3,3]) ─► y[N,2,8,8]
    #   per sample: x 300 values, c1 and r 400, y 128
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((2, 4, 3, 3)) * 0.5).astype(np.float32)
    return _model(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )


def _calib(model: onnx.ModelProto, samples: int = SAMPLES) -> CalibrationSet:
    return CalibrationSet(builders.feeds_for(model, batch=samples, seed=1))


def _activations(model: onnx.ModelProto, calib: CalibrationSet, tensors) -> dict[str, np.ndarray]:
    """The whole tensors for all samples at once (the reference)."""
    return oracles.run(oracles.with_outputs(model, tensors), calib.arrays)


def _subsample(value: np.ndarray, stride: int) -> np.ndarray:
    """Every stride-th value of each sample, dim 0 being the sample axis."""
    return value.reshape(len(value), -1)[:, ::stride]


def test_range_is_numpys_min_and_max_of_the_activations():
    # x is a graph input, y a graph output; all three take both signs, so the edges end
    # exactly at the observed min and max (np.linspace keeps its endpoints)
    model, tensors = conv_relu_conv(), ["x", "c1", "y"]
    calib = _calib(model)
    reference = _activations(model, calib, tensors)
    histograms = activation_histograms(model, calib, tensors, batch_size=2)
    for t in tensors:
        _, edges = histograms[t]
        assert reference[t].min() < 0 < reference[t].max()
        assert (edges[0], edges[-1]) == (reference[t].min(), reference[t].max()), t
        assert len(edges) == HISTOGRAM_BINS + 1


def test_relu_range_starts_at_zero():
    model = conv_relu_conv()
    calib = _calib(model)
    ((_, edges),) = activation_histograms(model, calib, ["r"], batch_size=16).values()
    assert (edges[0], edges[-1]) == (0.0, _activations(model, calib, ["r"])["r"].max())


def test_histogram_counts_every_stride_th_value_of_each_sample(monkeypatch):
    # 100 values per sample: x (300 per sample) is strided by 3, y (128) by 1
    monkeypatch.setattr(histograms_module, "HISTOGRAM_VALUES_PER_SAMPLE", 100)
    model = conv_relu_conv()
    calib = _calib(model)
    reference = _activations(model, calib, ["x", "y"])
    histograms = activation_histograms(model, calib, ["x", "y"], batch_size=2)
    for t, stride, per_sample in (("x", 3, 100), ("y", 1, 128)):
        counts, edges = histograms[t]
        assert counts.sum() == SAMPLES * per_sample
        values = _subsample(reference[t], stride).ravel()
        index = (values - np.float32(edges[0])) * np.float32(
            HISTOGRAM_BINS / (edges[-1] - edges[0])
        )
        expected = np.bincount(
            np.clip(index, 0, HISTOGRAM_BINS - 1).astype(np.int32), minlength=HISTOGRAM_BINS
        )
        np.testing.assert_array_equal(counts, expected)
    # y is not strided: its min and max land in the first and last bins
    assert histograms["y"][0][0] >= 1 and histograms["y"][0][-1] >= 1


@pytest.mark.parametrize("per_sample", [7, 65536])  # strided (x by 42, r by 57, y by 18) or not
def test_histograms_do_not_depend_on_the_batch_size(monkeypatch, per_sample):
    monkeypatch.setattr(histograms_module, "HISTOGRAM_VALUES_PER_SAMPLE", per_sample)
    model, tensors = conv_relu_conv(), ["x", "c1", "r", "y"]
    calib = _calib(model)
    one, three, sixteen = (
        activation_histograms(model, calib, tensors, batch_size=b) for b in (1, 3, 16)
    )
    for t in tensors:
        for other in (three, sixteen):
            np.testing.assert_array_equal(other[t][0], one[t][0])
            np.testing.assert_array_equal(other[t][1], one[t][1])
    # x: 5 samples x ceil(300 / stride) values
    assert one["x"][0].sum() == SAMPLES * math.ceil(300 / max(1, 300 // per_sample))


@pytest.mark.parametrize("per_sample", [7, 65536])
def test_encodings_do_not_depend_on_the_batch_size(monkeypatch, per_sample):
    monkeypatch.setattr(histograms_module, "HISTOGRAM_VALUES_PER_SAMPLE", per_sample)
    canon = builders.canonical(conv_relu_conv())
    profile = hw_profile.load_profile("research")
    analysis = quantizer_groups(canon.graph, profile)
    calib = _calib(canon.model)
    one, three, sixteen = (
        dict(calibrate(canon.model, canon.graph, analysis, calib, profile=profile, batch_size=b))
        for b in (1, 3, 16)
    )
    assert {t for t, _ in one} >= {"x", "r"}
    assert one == three == sixteen


def test_batch_size_is_an_upper_bound_and_pass_2_is_capped(monkeypatch):
    # per sample pass 2 returns 300 (x) + 128 (y) float32 values: 1712 bytes; a cap of
    # 2 x 1712 bytes runs pass 2 two samples at a time, pass 1 keeps the given batch of 4
    monkeypatch.setattr(histograms_module, "HISTOGRAM_BATCH_BYTES", 2 * 4 * (300 + 128))
    seen: list[int] = []
    run_batches = runtime.run_batches

    def recording(sess, batches, outputs=None):
        for feeds in batches:
            seen.append(len(feeds["x"]))
            yield from run_batches(sess, [feeds], outputs)

    monkeypatch.setattr(runtime, "run_batches", recording)
    model = conv_relu_conv()
    capped = activation_histograms(model, _calib(model), ["x", "y"], batch_size=4)
    assert seen == [4, 1, 2, 2, 1]
    monkeypatch.undo()
    whole = activation_histograms(model, _calib(model), ["x", "y"], batch_size=16)
    for t in ("x", "y"):
        np.testing.assert_array_equal(capped[t][0], whole[t][0])


def test_histogram_batch_size():
    # 64 MiB over 4-byte values: 2**24 values a batch
    assert histogram_batch_size(2**20, 64) == 16
    assert histogram_batch_size(2**20, 8) == 8
    assert histogram_batch_size(2**25, 64) == 1
    assert histogram_batch_size(0, 3) == 3


def odd_anchors() -> onnx.ModelProto:
    #   x[N,6] ─ cast(float16) ─► h        ─ cast(double) ─► d
    #          ─ reduce_all ─► s (rank 0)  ─ reduce_rows ─► v[N] (rank 1)
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    return _model(
        [
            helper.make_node("Cast", ["x"], ["h"], name="to_half", to=TensorProto.FLOAT16),
            helper.make_node("Cast", ["x"], ["d"], name="to_double", to=TensorProto.DOUBLE),
            helper.make_node("ReduceMax", ["x"], ["s"], name="reduce_all", keepdims=0),
            helper.make_node("ReduceMax", ["x", "axes"], ["v"], name="reduce_rows", keepdims=0),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["N", 6]),
            helper.make_tensor_value_info("d", TensorProto.DOUBLE, ["N", 6]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N"]),
        ],
        [axes],
    )


def test_float16_double_rank_0_and_rank_1_anchors():
    model, tensors = odd_anchors(), ["h", "d", "s", "v"]
    calib = _calib(model)
    reference = _activations(model, calib, tensors)
    histograms = activation_histograms(model, calib, tensors, batch_size=2)
    # h, d: 6 values per sample; v: 1 per sample
    for t, total in (("h", 30), ("d", 30), ("v", 5)):
        counts, edges = histograms[t]
        assert counts.sum() == total, t
        values = reference[t].astype(np.float32)
        assert (edges[0], edges[-1]) == (min(values.min(), 0.0), max(values.max(), 0.0)), t
    # s has no sample axis: one value per batch (3 batches of 2, 2, 1 samples); the largest
    # of those is the max over all samples
    counts, edges = histograms["s"]
    assert counts.sum() == 3
    assert edges[-1] == reference["s"]


def test_input_model_is_not_changed():
    model = conv_relu_conv()
    before = model.SerializeToString(deterministic=True)
    activation_histograms(model, _calib(model), ["x", "r", "y"], batch_size=2)
    assert model.SerializeToString(deterministic=True) == before


def test_statistics_models_pass_the_checker_and_output_only_statistics():
    model = conv_relu_conv()
    ranges, names = histograms_module._with_range_outputs(model, ["x", "r", "y"])
    onnx.checker.check_model(ranges, full_check=True)
    assert sorted(o.name for o in ranges.graph.output) == sorted(
        n for t in names.values() for n in t
    )
    subsample, names = histograms_module._with_subsample_outputs(model, {"x": (4, 3), "y": (4, 1)})
    onnx.checker.check_model(subsample, full_check=True)
    assert sorted(o.name for o in subsample.graph.output) == sorted(names.values())


def test_new_names_do_not_clash():
    # a tensor already named like the statistics output
    model = conv_relu_conv()
    model.graph.node[1].output[0] = "x_calib_min"
    model.graph.node[2].input[0] = "x_calib_min"
    calib = _calib(model)
    histograms = activation_histograms(model, calib, ["x", "x_calib_min"], batch_size=2)
    reference = _activations(model, calib, ["x", "x_calib_min"])
    assert histograms["x_calib_min"][1][-1] == reference["x_calib_min"].max()
    assert histograms["x"][1][-1] == reference["x"].max()


def chain(length: int) -> onnx.ModelProto:
    #   x[N,4,16,16] ─ conv0 ─► t0 ─ conv1 ─► t1 ─ ... ─► t{length-1}   (3x3, pads 1)
    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "x"
    for k in range(length):
        weights.append(
            numpy_helper.from_array(
                (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32), f"w{k}"
            )
        )
        nodes.append(
            helper.make_node(
                "Conv", [previous, f"w{k}"], [f"t{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]
            )
        )
        previous = f"t{k}"
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16, 16])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["N", 4, 16, 16])],
        weights,
    )


@pytest.mark.parametrize("statistics_model", ["ranges", "subsamples"])
def test_onnx_runtime_computes_statistics_right_after_each_tensor(tmp_path, statistics_model):
    # The memory bound rests on ONNX Runtime's execution order: each tensor's statistics
    # must run before the next tensor is computed, so that it can be freed. Run with the
    # optimization level of `runtime.session` and read the order from the profile.
    length = 6
    model = chain(length)
    tensors = [f"t{k}" for k in (3, 0, 5, 1, 4, 2)]  # any order in, the graph's order out
    if statistics_model == "ranges":
        statistics_model, _ = histograms_module._with_range_outputs(model, tensors)
    else:
        statistics_model, _ = histograms_module._with_subsample_outputs(
            model, dict.fromkeys(tensors, (4, 3))
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = runtime.Optimization.ALL.ort_level
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    # runtime.session has no profiling option; this session only reads the execution order
    payload = statistics_model.SerializeToString()
    sess = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])  # noqa: TID251
    sess.run(None, builders.feeds_for(model, batch=2))
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    kernels = [
        e["name"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]
    executed = [name.removesuffix("_kernel_time") for name in kernels]
    # ONNX Runtime renames the convs (NCHWc) and adds reorders: in the chain the k-th
    # remaining kernel computes t{k}
    convs = [i for i, n in enumerate(executed) if not n.startswith(("calib/", "ReorderOutput"))]
    assert len(convs) == length, executed
    for k in range(length):
        statistics = [i for i, n in enumerate(executed) if n.startswith(f"calib/t{k}_calib")]
        assert len(statistics) >= 2, executed
        # t{k} can be freed once its statistics ran, before t{k+1} is computed
        assert convs[k] < min(statistics), executed
        assert k == length - 1 or max(statistics) < convs[k + 1], executed
