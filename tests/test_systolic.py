"""systolic: one Conv layer on a 4x4 array, cycles worked out by hand."""

from __future__ import annotations

import pytest

from onnxmp import bops, hw_profile
from onnxmp.latency import Layer, SystolicLatency, gemm_shape, layers_of, operand_bits
from onnxmp.latency_spec import Dataflow, SystolicSpec
from onnxmp.passes.quantizer_groups import quantizer_groups
from onnxmp.records import Candidate, Plan
from onnxmp.store import ResultStore
from onnxmp.systolic import GemmShape, OperandBits, compute_cycles, dram_bits, layer_cycles
from tests import builders

# conv_relu: x[1,3,8,8], w[4,3,3,3], pads 1 -> y[1,4,8,8]. As a GEMM: M = 8*8 = 64 output
# pixels, N = 4 filters, K = 3*3*3 = 27; ifmap 192 elements, filter 108, ofmap 256.
CONV = GemmShape(m=64, n=4, k=27, ifmap_elems=192, filter_elems=108, ofmap_elems=256)


def spec(dataflow=Dataflow.OUTPUT_STATIONARY, *, filter_kb=1.0, bandwidth=1.0) -> SystolicSpec:
    return SystolicSpec(4, 4, dataflow, 1.0, filter_kb, 1.0, bandwidth, clock_ghz=1.0, word_bits=16)


def test_conv_relu_as_a_gemm():
    model = builders.canonical(builders.conv_relu())
    graph = bops.concrete_graph(model.model, {"x": (1, 3, 8, 8)})
    assert gemm_shape(graph, "conv") == CONV


@pytest.mark.parametrize(("dataflow", "cycles"), [
    # os: rows <- M=64 (16 folds), cols <- N=4 (1 fold), T = K = 27, no preload:
    # 16 * (4 + 4 + 27 - 2) = 528 (SCALE-Sim 3.0.0 reports folds * (rows + cols + T - 2) - 1)
    (Dataflow.OUTPUT_STATIONARY, 528),
    # ws: rows <- K=27 (7 folds), cols <- N=4 (1), T = M = 64: 7 * (8 + 4 + 64 - 2) = 518
    (Dataflow.WEIGHT_STATIONARY, 518),
    # is: rows <- K=27 (7 folds), cols <- M=64 (16), T = N = 4: 112 * (8 + 4 + 4 - 2) = 1568
    (Dataflow.INPUT_STATIONARY, 1568),
])
def test_compute_cycles_by_hand(dataflow, cycles):
    assert compute_cycles(CONV, spec(dataflow)) == cycles


def test_memory_cycles_by_hand():
    # W8A8 in, float32 out: ifmap 192*8 = 1536 bits, filter 108*8 = 864, ofmap 256*32 = 8192.
    # A 1 KB SRAM holds 8192 bits, half of it (double buffered) 4096: ifmap and filter fit.
    # One 16-bit word a cycle: 96, 54 and 512 cycles; compute (528) is the max.
    result = layer_cycles(CONV, OperandBits(8, 8, 32), spec())
    assert (result.compute, result.ifmap, result.filter, result.ofmap) == (528, 96.0, 54.0, 512.0)
    assert result.cycles == 528 and not result.memory_bound
    # Half a word a cycle: the ofmap takes 1024 cycles and the layer is memory-bound.
    slow = layer_cycles(CONV, OperandBits(8, 8, 32), spec(bandwidth=0.5))
    assert slow.cycles == 1024.0 and slow.memory_bound
    # At 4-bit activations the ifmap moves half the bits: 48 cycles instead of 96.
    assert layer_cycles(CONV, OperandBits(4, 8, 32), spec()).ifmap == 48.0


def test_filter_that_does_not_fit_is_fetched_once_per_row_fold():
    # 0.05 KB = 409.6 bits, half 204.8 < 864: os re-reads the filter for each of the 16 row folds.
    assert dram_bits(CONV, OperandBits(8, 8, 32), spec(filter_kb=0.05)) == (1536, 864 * 16, 8192)


def test_output_width_follows_the_group_that_reads_it():
    # residual_add: conv1's output r1 is read by conv2's group (conv2 + add), so conv1 writes
    # r1 at that group's activation width: moving the *other* group changes conv1's memory time.
    model = builders.canonical(builders.residual_add())
    graph = bops.concrete_graph(model.model, {"x": (1, 4, 6, 6)})
    analysis = quantizer_groups(model.graph, hw_profile.load_profile("npu"))
    layers = layers_of(graph, analysis)
    assert [(la.op, la.group, la.out_group) for la in layers] == [("conv1", "conv1", "conv2"), ("conv2", "conv2", "conv2")]
    w8a8, w8a16 = Candidate(8, 8), Candidate(8, 16)
    assert operand_bits(layers[0], Plan({"conv1": w8a8, "conv2": w8a8})) == OperandBits(8, 8, 8)
    assert operand_bits(layers[0], Plan({"conv1": w8a8, "conv2": w8a16})) == OperandBits(8, 8, 16)


def test_plan_latency_is_the_sum_of_layer_maxima():
    layer = Layer("conv", "conv", None, True, CONV)
    model = SystolicLatency((layer, layer), spec(bandwidth=0.5))
    # two memory-bound layers of 1024 cycles at 1 GHz: 2.048 microseconds
    assert model.latency_ms(Plan({"conv": Candidate(8, 8)})) == pytest.approx(2 * 1024 / 1e6)


def test_layer_results_are_kept_in_the_store_and_read_back(tmp_path):
    store = ResultStore(tmp_path / "phase1.jsonl", key="k")
    layer = Layer("conv", "conv", None, True, CONV)
    plan = Plan({"conv": Candidate(8, 8)})
    first = SystolicLatency((layer,), spec(bandwidth=0.5), store=store).latency_ms(plan)

    def never(*_):
        raise AssertionError("a stored layer result was computed again")

    again = SystolicLatency((layer,), spec(bandwidth=0.5), store=store, cycles_of=never)
    assert again.latency_ms(plan) == first == pytest.approx(1024 / 1e6)
    assert len(list(store.entries("systolic_layer"))) == 1


@pytest.mark.shared
def test_efficientnet_lite0_on_the_amed_accelerator(shared_dir):
    from onnxmp import model_io, steps
    from onnxmp.run_records import homogeneous_plan

    profile = hw_profile.load_profile("systolic-amed")
    model = model_io.load(shared_dir / "models" / "efficientnet_lite0.onnx")
    prepared = steps.prepare(model, profile, None)
    graph = bops.concrete_graph(prepared.model, {"input": (1, 3, 224, 224)})
    layers = layers_of(graph, prepared.analysis)
    assert len(layers) == 50  # every Conv and the classifier Gemm
    latency = SystolicLatency(layers, profile.latency)
    times = [latency.latency_ms(homogeneous_plan(prepared.analysis, k, profile)) for k in profile.kernels]
    # W8A16, W8A8, W4A8, W4A4: narrower operands never slow a layer down, and halving the
    # activations (A16 -> A8) saves more than halving the weights (W8 -> W4) on this network
    assert times == sorted(times, reverse=True)
    assert times[0] - times[1] > times[1] - times[2] > 0
