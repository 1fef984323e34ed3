"""Values of the tensors each phase-1 suffix (or AdaRound layer) reads, walked forward step by step.

Why: a group's suffix needs the float values of its frontier (the cut tensors it reads)
for every calibration sample. Computing them from the model inputs for every group costs a
forward pass per group; holding every frontier of every sample costs gigabytes (the first
frontiers of an image network are its largest tensors: 256 EfficientNet-Lite0 samples at
112x112x96 are 1.2 GB). So the walk keeps a *checkpoint*: full-sample values of frontiers
that fit a byte budget, each computed from the previous checkpoint; a frontier over the
budget is computed chunk by chunk from the checkpoint whenever it is read and never stored.

Rule cases:
1. Every job walks the same chain of segments (the frontiers of all groups in network
   order, materialized when they fit the budget), so frontier values, computed with every
   ONNX Runtime optimization, are bit-identical however phase 1 was split into jobs or
   resumed: values depend on the segment a tensor was computed in, never on the job.
2. A checkpoint tensor is dropped once no later frontier reads it; graph inputs stay.
3. Samples always go through in chunks of `batch_size`, so memory beyond the checkpoint is
   one chunk's activations.
4. The walked model may change ahead of the walk (`set_constant`): AdaRound walks the
   network quantized so far and replaces each weight once it is rounded. A segment reads
   the model when it is built, so a constant may change only while no node reading it has
   run yet (its consumers are all at or after the current frontier).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx

from onnxmp import runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import DataflowGraph
from onnxmp.passes.extract_subgraph import frontier, producing_nodes, subgraph

DEFAULT_BUDGET_BYTES = 256 * 2**20

Chunk = tuple[int, dict[str, np.ndarray]]


class FrontierWalk:
    """Chunks of float frontier values, step by step along `frontiers` (network order).

    Call `chunks(step)` with non-decreasing steps; each call returns a fresh iterator, so
    several candidates of one group can read the same frontier one after the other.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        graph: DataflowGraph,
        inputs: CalibrationSet | Mapping[str, np.ndarray],
        frontiers: Sequence[Sequence[str]],
        *,
        batch_size: int,
        threads: int | None = None,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
    ) -> None:
        self._model, self._graph = model, graph
        self._batch_size, self._threads, self._budget = batch_size, threads, budget_bytes
        self._frontiers = [tuple(f) for f in frontiers]
        calib = inputs if isinstance(inputs, CalibrationSet) else CalibrationSet(inputs)
        self._count = calib.num_samples
        self._starts = calib.starts(batch_size)
        # the checkpoint, chunk by chunk (joining them into one array per tensor cost a second
        # copy and fresh pages: 4 s per walk of EfficientNet-Lite0); computed chunks are copies
        # of ONNX Runtime's outputs (`runtime.owned`: its own arrays would keep each segment
        # session's whole arena alive); inputs are the feeds of `calib.batches` (views when they can be)
        feeds = list(calib.batches(batch_size))
        self._stored: dict[str, list[np.ndarray]] = {name: [f[name] for f in feeds] for name in feeds[0]}
        self._inputs = set(feeds[0])
        self._input_bytes = sum(v.nbytes for v in (*calib.arrays.values(), *calib.shared.values()))
        self._keep = _still_read(self._frontiers, set(graph.graph_inputs))
        self._step = -1
        self._segment: tuple[tuple[str, ...], runtime.Session, tuple[str, ...]] | None = None  # (wanted, session, inputs) of the last computed segment

    @property
    def stored_bytes(self) -> int:
        """Bytes of the checkpoint (graph inputs included)."""
        computed = sum(c.nbytes for name, chunks in self._stored.items() if name not in self._inputs for c in chunks)
        return self._input_bytes + computed

    def chunks(self, step: int) -> Iterator[Chunk]:
        """(first sample, {tensor: values}) for every chunk of samples, for `frontiers[step]`."""
        self._advance(step)
        wanted = self._frontiers[step]
        if all(t in self._stored for t in wanted):
            return self._slices(wanted)
        return self._computed(wanted)

    def set_constant(self, value: onnx.TensorProto) -> None:
        """Replace the initializer `value.name` of the walked model (rule 4)."""
        init = next(i for i in self._model.graph.initializer if i.name == value.name)
        init.CopyFrom(value)
        self._segment = None

    def _advance(self, step: int) -> None:
        if step < self._step:
            raise ValueError(f"the walk is at step {self._step}; it cannot go back to {step}")
        while self._step < step:
            self._step += 1
            self._segment = None
            self._checkpoint(self._step)

    def _checkpoint(self, step: int) -> None:
        """Store frontier `step` for all samples when it fits the budget, then drop what is no longer read."""
        wanted = [t for t in self._frontiers[step] if t not in self._stored]
        if not wanted:
            return
        computed = self._computed(tuple(wanted))
        filled: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
        per_sample = _per_sample_bytes(self._graph, wanted)
        total = None if per_sample is None else per_sample * self._count
        if total is None:  # symbolic dims (or samples off axis 0): measure the first chunk (and keep it)
            first = next(computed)[1]
            total = sum(v.nbytes for v in first.values()) * len(self._starts)
            for name, value in first.items():
                filled[name].append(runtime.owned(value))
        if total > self._budget:
            return
        for _, values in computed:
            for name, value in values.items():
                filled[name].append(runtime.owned(value))
        self._segment = None
        self._stored.update(filled)
        for name in [n for n in self._stored if n not in self._keep[step]]:
            del self._stored[name]

    def _slices(self, wanted: Sequence[str]) -> Iterator[Chunk]:
        for k, start in enumerate(self._starts):
            yield start, {t: self._stored[t][k] for t in wanted}

    def _computed(self, wanted: tuple[str, ...]) -> Iterator[Chunk]:
        """Run the float nodes between the checkpoint and `wanted`, one chunk at a time
        (tensors of `wanted` already in the checkpoint are sliced from it)."""
        missing = tuple(t for t in wanted if t not in self._stored)
        if self._segment is None or self._segment[0] != missing:
            nodes = producing_nodes(self._graph, missing, set(self._stored))
            inputs = frontier(self._graph, nodes)
            segment = subgraph(self._model, self._graph, nodes, inputs, missing)
            self._segment = (missing, runtime.session(segment, threads=self._threads), inputs)
        _, sess, inputs = self._segment
        for k, start in enumerate(self._starts):
            computed = dict(zip(missing, sess.run(list(missing), {t: self._stored[t][k] for t in inputs}), strict=True))
            yield start, {t: computed[t] if t in computed else self._stored[t][k] for t in wanted}


def _still_read(frontiers: Sequence[tuple[str, ...]], always: set[str]) -> list[set[str]]:
    """For each step, the tensors that step or a later one reads (plus `always`)."""
    keep: list[set[str]] = [set() for _ in frontiers]
    later = set(always)
    for step in range(len(frontiers) - 1, -1, -1):
        later |= set(frontiers[step])
        keep[step] = set(later)
    return keep


def _per_sample_bytes(graph: DataflowGraph, tensors: Sequence[str]) -> int | None:
    """Bytes of one sample of `tensors` from their static shapes; None if a dim is unknown."""
    total = 0
    for tensor in tensors:
        shape = graph.shapes.get(tensor)
        dims = [d for d in (shape or ())[1:] if isinstance(d, int) and d > 0]
        if not shape or len(dims) != len(shape) - 1:
            return None
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(graph.elem_types.get(tensor, onnx.TensorProto.FLOAT)).itemsize
        total += math.prod(dims) * itemsize
    return total
