"""Cross-check onnxmp's systolic model (onnxmp/systolic.py) against SCALE-Sim 3.0.0 itself.

For every Conv/Gemm layer of EfficientNet-Lite0 as onnxmp sees it (onnxmp.latency.layers_of)
on the systolic-amed accelerator (32x32, 64 KB SRAMs, 10 words/cycle), SCALE-Sim is run on
the same layers for each dataflow (os, ws, is) and the per-layer compute cycles, stall
cycles and DRAM traffic are printed next to onnxmp's numbers.

Why a separate interpreter: scalesim 3.0.0 crashes under numpy 2 (memory/read_buffer.py,
`int(max(array))`), so it runs in a venv with numpy 1.26 (`pip install -e .[latency]`
there; --scalesim-python, default /work/venv-scalesim/bin/python), as a subprocess, with
traces off (save_disk_space).

Matching the two models:
* SCALE-Sim fixes a word at one byte (single_layer_sim.py: `word_size = 1`) and counts
  DRAM traffic in elements: its 64 KB SRAM holds 65536 elements and its port moves 10
  elements a cycle. onnxmp is therefore run with every operand at 8 bits and word_bits = 8
  (the same byte-wide words); systolic-amed's own word_bits = 16 has no SCALE-Sim equivalent.
* SCALE-Sim convolutions have no padding: each layer gets the padded input size
  (H_in = (H_out - 1) * stride + kh), so both models see the same output pixels.
* Depthwise convolutions: SCALE-Sim runs a layer named `DP...` as C separate one-channel,
  one-filter convolutions, all identical; one channel is simulated and its cycles and
  traffic are multiplied by C (what C runs would print). onnxmp maps a depthwise Conv as a
  GEMM with N = C filters of K = kh*kw each.
* The Gemm (classifier) is a 1x1 convolution on a 1x1 ifmap with K channels.

Run: flock /work/bench.lock python bench/scalesim_check.py [--layers N] [--dataflows os,ws,is]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from onnxmp import bops, hw_profile, model_io, steps
from onnxmp.latency import Layer, layers_of
from onnxmp.latency_spec import Dataflow, SystolicSpec
from onnxmp.systolic import OperandBits, dram_bits, layer_cycles

MODEL = Path("/work/shared/data/models/efficientnet_lite0.onnx")
SCALESIM_PYTHON = "/work/venv-scalesim/bin/python"
BYTE = OperandBits(8, 8, 8)
RUNNER = (
    "import sys\n"
    "from scalesim.scale_sim import scalesim\n"
    "s = scalesim(save_disk_space=True, verbose=False, config=sys.argv[1], topology=sys.argv[2],"
    " layout=sys.argv[3], input_type_gemm=False)\n"
    "s.run_scale(top_path=sys.argv[4])\n"
)


@dataclass(frozen=True)
class ConvRow:
    """One SCALE-Sim topology row, and how many identical runs it stands for (depthwise: C)."""

    name: str
    ifmap_h: int
    ifmap_w: int
    kh: int
    kw: int
    channels: int
    filters: int
    stride: int
    repeat: int


@dataclass(frozen=True)
class SimLayer:
    """SCALE-Sim's figures for one layer (already multiplied by the row's repeat)."""

    total: int  # compute + stall cycles
    stall: int
    dram_ifmap: int  # elements read / written
    dram_filter: int
    dram_ofmap: int


def conv_row(graph, layer: Layer, index: int) -> ConvRow:
    node = graph.nodes[layer.op]
    if node.op_type == "Gemm":
        return ConvRow(f"L{index}_gemm", 1, 1, 1, 1, layer.shape.k, layer.shape.n, 1, 1)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    x, w, y = (graph.shapes[t] for t in (node.input[0], node.input[1], node.output[0]))
    (sh, sw), (kh, kw) = attrs.get("strides", [1, 1]), w[2:]
    assert sh == sw, f"{layer.op}: unequal strides"
    h_in, w_in = (y[2] - 1) * sh + kh, (y[3] - 1) * sw + kw
    if attrs.get("group", 1) == 1:
        return ConvRow(f"L{index}", h_in, w_in, kh, kw, w[1], w[0], sh, 1)
    assert attrs["group"] == x[1] == w[0] and w[1] == 1, f"{layer.op}: grouped but not depthwise"
    return ConvRow(f"DP_L{index}", h_in, w_in, kh, kw, 1, 1, sh, x[1])


def write_inputs(folder: Path, rows: list[ConvRow], spec: SystolicSpec, dataflow: Dataflow) -> None:
    header = "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
    lines = [f"{r.name}, {r.ifmap_h}, {r.ifmap_w}, {r.kh}, {r.kw}, {r.channels}, "
             f"{1 if r.repeat > 1 else r.filters}, {r.stride},\n" for r in rows]
    (folder / "topology.csv").write_text(header + "".join(lines))
    (folder / "layout.csv").write_text("Layer name,\n")
    bw = int(spec.bandwidth_words)
    (folder / "scale.cfg").write_text(f"""[general]
run_name = check_{dataflow.value}

[architecture_presets]
ArrayHeight : {spec.rows}
ArrayWidth : {spec.cols}
IfmapSramSzkB : {int(spec.ifmap_sram_kb)}
FilterSramSzkB : {int(spec.filter_sram_kb)}
OfmapSramSzkB : {int(spec.ofmap_sram_kb)}
IfmapOffset : 0
FilterOffset : 10000000
OfmapOffset : 20000000
Dataflow : {dataflow.value}
Bandwidth : {bw}
ReadRequestBuffer : 32
WriteRequestBuffer : 32

[layout]
IfmapCustomLayout : False
IfmapSRAMBankBandwidth : {bw}
IfmapSRAMBankNum : 1
IfmapSRAMBankPort : 2
FilterCustomLayout : False
FilterSRAMBankBandwidth : {bw}
FilterSRAMBankNum : 1
FilterSRAMBankPort : 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth : USER
UseRamulatorTrace : False
""")


def run_scalesim(folder: Path, rows: list[ConvRow], dataflow: Dataflow, python: str) -> list[SimLayer]:
    out = folder / "out"
    out.mkdir(exist_ok=True)
    subprocess.run(
        [python, "-c", RUNNER, str(folder / "scale.cfg"), str(folder / "topology.csv"),
         str(folder / "layout.csv"), str(out)],
        check=True, cwd=folder, stdout=subprocess.DEVNULL,
    )
    report = out / f"check_{dataflow.value}"
    compute = _csv(report / "COMPUTE_REPORT.csv")
    detail = _csv(report / "DETAILED_ACCESS_REPORT.csv")
    sims = []
    for row, c, d in zip(rows, compute, detail, strict=True):
        r = row.repeat
        sims.append(SimLayer(int(float(c[2])) * r, int(float(c[3])) * r,
                             int(float(d[12])) * r, int(float(d[15])) * r, int(float(d[18])) * r))
    return sims


def _csv(path: Path) -> list[list[str]]:
    with path.open() as f:
        return [[v.strip() for v in line] for line in list(csv.reader(f))[1:] if line]


def pct(ours: float, theirs: float) -> str:
    return f"{100 * (ours - theirs) / theirs:+.1f}%" if theirs else "n/a"


def table(layers, rows, sims, spec: SystolicSpec) -> list[list[float]]:
    """Print the per-layer table; return totals [all layers, layers other than depthwise]."""
    print("| layer | op | M,N,K | onnxmp compute | SCALE-Sim compute | diff | SCALE-Sim stall "
          "| onnxmp max(c,mem) | SCALE-Sim total | diff | DRAM elems ifmap/filter/ofmap onnxmp | SCALE-Sim |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    sums = [[0, 0, 0.0, 0], [0, 0, 0.0, 0]]
    for layer, row, sim in zip(layers, rows, sims, strict=True):
        ours = layer_cycles(layer.shape, BYTE, spec)
        theirs_compute = sim.total - sim.stall
        moved = [b // 8 for b in dram_bits(layer.shape, BYTE, spec)]
        s = layer.shape
        print(f"| {row.name} | {layer.op} | {s.m},{s.n},{s.k} | {ours.compute} | {theirs_compute} "
              f"| {pct(ours.compute, theirs_compute)} | {sim.stall} | {ours.cycles:.0f} | {sim.total} "
              f"| {pct(ours.cycles, sim.total)} | {moved[0]}/{moved[1]}/{moved[2]} "
              f"| {sim.dram_ifmap}/{sim.dram_filter}/{sim.dram_ofmap} |")
        for i, v in enumerate((ours.compute, theirs_compute, ours.cycles, sim.total)):
            sums[0][i] += v
            sums[1][i] += 0 if row.repeat > 1 else v
    return sums


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=0, help="first N layers only (0: all)")
    parser.add_argument("--dataflows", default="os,ws,is")
    parser.add_argument("--scalesim-python", default=SCALESIM_PYTHON)
    args = parser.parse_args(argv)

    profile = hw_profile.load_profile("systolic-amed")
    prepared = steps.prepare(model_io.load(MODEL), profile, None)
    graph = bops.concrete_graph(prepared.model, {"input": (1, 3, 224, 224)})
    layers = layers_of(graph, prepared.analysis)
    if args.layers:
        layers = layers[: args.layers]
    rows = [conv_row(graph, layer, i) for i, layer in enumerate(layers)]
    summary = []
    for name in args.dataflows.split(","):
        dataflow = Dataflow(name)
        spec = replace(profile.latency, dataflow=dataflow, word_bits=8)
        with tempfile.TemporaryDirectory(prefix="scalesim_check_") as tmp:
            write_inputs(Path(tmp), rows, spec, dataflow)
            sims = run_scalesim(Path(tmp), rows, dataflow, args.scalesim_python)
        print(f"\n### dataflow {name}: {len(layers)} layers of EfficientNet-Lite0, 8-bit operands, byte words\n")
        totals = table(layers, rows, sims, spec)
        summary += [(name, "all", *totals[0]), (name, "without depthwise", *totals[1])]
        sys.stdout.flush()
    print("\n| dataflow | layers | onnxmp compute | SCALE-Sim compute | diff "
          "| onnxmp max(compute, memory) | SCALE-Sim compute+stall | diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name, which, oc, sc, ot, st in summary:
        print(f"| {name} | {which} | {oc} | {sc} | {pct(oc, sc)} | {ot:.0f} | {st} | {pct(ot, st)} |")


if __name__ == "__main__":
    main()
