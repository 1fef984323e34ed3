"""Latency measured with ONNX Runtime: each group's subgraph at each candidate, and whole models.

Why: the runtime a user deploys with decides what is fast (ORT's CPU provider fuses
DQ -> Conv -> Q into an integer kernel only at 8 bits; anything else runs as float plus
dequantization). Measuring each (group, candidate) once gives an additive latency model
the search can call thousands of times; whole-model measurements check it.

Rule cases:
1. A candidate's timing model is the deployable QDQ model with every group at that
   candidate (float: the float model), so a group's subgraph sees neighbours of its own
   precision: its input DequantizeLinear nodes, its ops with their fused Relu/Clip, and the
   QuantizeLinear of its output. ORT then fuses it as it would inside a homogeneous model.
2. A group's latency is the median over `runs` timed runs (after `warmups`) of its
   subgraph at batch 1, on random inputs of the subgraph's dtypes.
3. The estimate of a plan is the measured float model plus, per group, its time at its
   candidate minus at float: per-run overheads cancel in the differences. What it misses
   (conversions where a float group meets a quantized one, fusions across groups) is what
   `estimate_error` reports against a whole-model measurement.
   Conversions at borders are priced by `onnxmp.phase1.ort_borders` (`OrtLatency.borders`):
   estimate = float model + group deltas + the cost of every border whose groups' kinds differ.
4. `GroupTiming.IN_CONTEXT` (the default of `measure_groups`) replaces rule 2 by the
   group's share of ORT's per-node profile of the whole timing model of rule 1: a subgraph
   timed alone pays layout conversions at its borders that a model pays once.
"""

from __future__ import annotations

import enum
import json
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxmp import bops, runtime
from onnxmp.float_candidate import FLOAT, FLOAT_ACTIVATION, float_of, is_float
from onnxmp.graph import DataflowGraph, build
from onnxmp.latency_spec import OrtSpec
from onnxmp.passes.extract_subgraph import frontier, subgraph
from onnxmp.passes.insert_qdq import insert_qdq
from onnxmp.phase1.ort_borders import Border, BorderCost, crossing
from onnxmp.records import Candidate, GroupAnalysis, Plan, QuantizerGroup, TensorEncoding

_FUSED = frozenset({"Relu", "Clip"})


@dataclass(frozen=True)
class OrtLatency:
    """Per-(group, candidate) times, the whole float model's time (ms), and the border model."""

    group_ms: Mapping[tuple[str, Candidate], float]
    float_model_ms: float
    borders: tuple[Border, ...] = ()
    border_cost: BorderCost = BorderCost()

    def additive_ms(self, plan: Plan) -> float:
        """Rule 3 without borders: float model + each group's change from float."""
        return self.float_model_ms + sum(
            self.group_ms[(g, c)] - self.group_ms[(g, float_of(c))] for g, c in plan.items() if not is_float(c)
        )

    def border_ms(self, plan: Plan) -> float:
        """What the borders whose groups run as different kinds cost under `plan`."""
        return sum(self.border_cost.of(b) for b in crossing(plan, self.borders))

    def latency_ms(self, plan: Plan) -> float:
        """The estimate of `plan`: additive part plus borders."""
        return self.additive_ms(plan) + self.border_ms(plan)


@dataclass(frozen=True)
class Timing:
    """A whole-model measurement: median and interquartile range of one run, in ms."""

    median_ms: float
    iqr_ms: float


def timed(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], spec: OrtSpec) -> Timing:
    """Median and spread of one run of `model` (deployment session: QDQ fusions on)."""
    session = runtime.session(model, threads=spec.threads, simulate=False)
    for _ in range(spec.warmups):
        session.run(None, dict(feeds))
    times = []
    for _ in range(spec.runs):
        start = time.perf_counter()
        session.run(None, dict(feeds))
        times.append(1000 * (time.perf_counter() - start))
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Timing(statistics.median(times), quartiles[2] - quartiles[0])


def paired_ms(first: onnx.ModelProto, second: onnx.ModelProto, feeds: Mapping[str, np.ndarray], spec: OrtSpec) -> tuple[float, float]:
    """Median run times of two models timed alternately, run by run.

    Why: on a shared machine the load drifts between two measurements taken one after the
    other; alternating runs exposes both models to the same load, so their difference holds.
    """
    sessions = [runtime.session(m, threads=spec.threads, simulate=False) for m in (first, second)]
    for _ in range(spec.warmups):
        for session in sessions:
            session.run(None, dict(feeds))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(spec.runs):
        for session, kept in zip(sessions, times, strict=True):
            start = time.perf_counter()
            session.run(None, dict(feeds))
            kept.append(1000 * (time.perf_counter() - start))
    return statistics.median(times[0]), statistics.median(times[1])


def median_ms(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], spec: OrtSpec) -> float:
    """Median wall time of one run of `model` (deployment session: QDQ fusions on)."""
    return timed(model, feeds, spec).median_ms


def group_times(
    timing_model: onnx.ModelProto,
    sample_shapes: Mapping[str, tuple[int, ...]],
    groups: tuple[QuantizerGroup, ...],
    spec: OrtSpec,
    seed: int = 0,
) -> dict[str, float]:
    """Rule 2: each group's subgraph time in `timing_model` (one candidate's model, rule 1)."""
    graph = bops.concrete_graph(timing_model, sample_shapes)
    rng = np.random.default_rng(seed)
    result = {}
    for group in groups:
        part = group_subgraph(timing_model, graph, group)
        result[group.id] = median_ms(part, random_feeds(part, rng), spec)
    return result


def group_subgraph(model: onnx.ModelProto, graph: DataflowGraph, group: QuantizerGroup) -> onnx.ModelProto:
    """Rule 1: the group's ops, fused activations, input DQ nodes and output Q nodes."""
    core = set(group.ops)
    for op in group.ops:
        tensor = graph.nodes[op].output[0]
        while len(consumers := graph.consumers(tensor)) == 1 and consumers[0].op_type in _FUSED:
            core.add(consumers[0].name)
            tensor = consumers[0].output[0]
    nodes = set(core)
    for name in core:
        for tensor in graph.nodes[name].input:
            producer = graph.producer(tensor)
            if producer is not None and producer.op_type == "DequantizeLinear":
                nodes.add(producer.name)
        for tensor in graph.nodes[name].output:
            nodes.update(c.name for c in graph.consumers(tensor) if c.op_type == "QuantizeLinear")
    inside = {t for n in nodes for t in graph.nodes[n].input}
    outputs = [
        t for n in sorted(nodes, key=graph.index) for t in graph.nodes[n].output
        if t not in inside or t in graph.graph_outputs
    ]
    return subgraph(model, graph, nodes, frontier(graph, nodes), outputs)


def random_feeds(model: onnx.ModelProto, rng: np.random.Generator, batch: int = 1) -> dict[str, np.ndarray]:
    """Inputs of the model's dtypes and shapes (symbolic dims -> `batch`), small values."""
    feeds = {}
    for info in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in info.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        values = rng.standard_normal(dims) if np.issubdtype(dtype, np.floating) else rng.integers(0, 100, dims)
        feeds[info.name] = values.astype(dtype)
    return feeds


class GroupTiming(enum.Enum):
    """How a group's time at a candidate is measured."""

    SUBGRAPH = "subgraph"  # its subgraph alone (rules 1-2)
    IN_CONTEXT = "in_context"  # its nodes' share of the whole model's ORT profile (`in_context`)


def measure_groups(
    model: onnx.ModelProto,
    analysis: GroupAnalysis,
    encodings: Mapping[tuple[str, int], TensorEncoding],
    spec: OrtSpec,
    *,
    sample_shapes: Mapping[str, tuple[int, ...]],
    quantize_bias: bool = False,
    how: GroupTiming = GroupTiming.IN_CONTEXT,
) -> OrtLatency:
    """Every group at float and at each candidate the groups have, and the float model."""
    kernels = sorted({c for g in analysis.groups for c in g.candidates if c.w_bits is not None}, key=str)
    feeds = {name: np.zeros(shape, np.float32) for name, shape in sample_shapes.items()}
    times: dict[tuple[str, Candidate], float] = {}
    for kernel in (None, *kernels):
        if kernel is None:
            timing_model = model
        else:
            plan = Plan({g.id: kernel if g.weights else Candidate(None, kernel.a_bits) for g in analysis.groups})
            timing_model = insert_qdq(model, analysis=analysis, plan=plan, encodings=encodings, quantize_bias=quantize_bias)
        if how is GroupTiming.SUBGRAPH:
            shares = group_times(timing_model, sample_shapes, analysis.groups, spec)
        else:
            shares = in_context(node_times(timing_model, feeds, spec), analysis, build(model))
        for group_id, ms in shares.items():
            weighted = bool(analysis.group(group_id).weights)
            if kernel is None:
                times[(group_id, FLOAT if weighted else FLOAT_ACTIVATION)] = ms
            else:
                times.setdefault((group_id, kernel if weighted else Candidate(None, kernel.a_bits)), ms)
    return OrtLatency(times, median_ms(model, feeds, spec))


def node_times(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], spec: OrtSpec) -> dict[str, float]:
    """Median kernel time (ms) of every node ORT runs, from its profiler, by node name.

    ORT names a fused node after the node it replaced (`conv_token_3` for a QLinearConv made
    from `conv`), so the names lead back to the model's nodes; layout nodes it inserted
    (Transpose, reorders) keep names of their own.
    """
    with tempfile.TemporaryDirectory() as folder:
        session = runtime.profiled_session(model, threads=spec.threads, prefix=str(Path(folder) / "p"))
        for _ in range(spec.warmups + spec.runs):
            session.run(None, dict(feeds))
        events = json.loads(Path(session.ort.end_profiling()).read_text())
    durations: dict[str, list[float]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            durations.setdefault(name[: -len("_kernel_time")], []).append(event["dur"] / 1000)
    return {name: statistics.median(values[spec.warmups:] or values) for name, values in durations.items()}


def in_context(times: Mapping[str, float], analysis: GroupAnalysis, graph: DataflowGraph) -> dict[str, float]:
    """Each group's share of a whole-model profile: its ops and what ORT fused into them (named
    after an op or after its output tensor, as NCHWc convolutions are), its fused Relu/Clip,
    and the Q/DQ nodes of its weights and activations; layout nodes ORT inserted are nobody's.

    Why: a group's subgraph timed alone pays layout conversions at its borders (ORT runs
    int8 convolutions in NHWC and float ones in NCHWc) that inside a model of its own
    precision are paid once; attributing profiled nodes measures the group where it runs.
    """
    owner = {}
    for group in analysis.groups:
        for op in group.ops:
            owner[op] = group.id
            tensor = graph.nodes[op].output[0]
            owner[tensor] = group.id
            while len(consumers := graph.consumers(tensor)) == 1 and consumers[0].op_type in _FUSED:
                tensor = consumers[0].output[0]
                owner.update({consumers[0].name: group.id, tensor: group.id})
        for t in (*group.weights, *group.activations):
            owner.update({f"{t}_QuantizeLinear": group.id, f"{t}_DequantizeLinear": group.id})
    shares = dict.fromkeys((g.id for g in analysis.groups), 0.0)
    for name, ms in times.items():
        group = owner.get(_original_name(name))
        if group is not None:
            shares[group] += ms
    return shares


def _original_name(name: str) -> str:
    """`conv_token_3`, `r1_nchwc`, `r1_DequantizeLinear/duplicated` -> conv, r1, r1_DequantizeLinear."""
    name = name.split("/duplicated")[0].split("_token_")[0]
    return name[: -len("_nchwc")] if name.endswith("_nchwc") else name
