"""The options of `onnxmp quantize` and `onnxmp search`, and their typed record.

Why: two commands share some twenty options; declaring them once (click decorators) and
reading them once (the `RunOptions` record, typed fields instead of `kw["..."]` lookups)
keeps `cli.py` to parsing, calling the pipeline and printing.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from onnxmp import evaluate
from onnxmp.calib_data import Preprocess
from onnxmp.hw_profile import ActivationClipping, WeightRounding
from onnxmp.latency_spec import CostAxis
from onnxmp.records import ExecutorKind, RangeMethod, SearchMethod, Strategy
from onnxmp.run_records import Settings


def common_options(command):
    for option in reversed([
        click.option("-v", "--verbose", count=True, help="More log output on stderr."),
        click.option("--debug", is_flag=True, help="Show tracebacks; run onnx.checker after every pass."),
    ]):
        command = option(command)
    return command


class Progress:
    """Progress of the long steps on a terminal (item k of N, time left); silent in logs and CI.

    `what` is "step: item" (`pipeline` names the steps: clipping, adaround, phase 1, ...); the
    time-left estimate restarts when the step changes.
    """

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.first: int | None = None
        self.step = ""

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        step, known, item = what.partition(": ")
        step, item = (step, item) if known else ("phase 1", what)
        if self.first is None or step != self.step:
            self.first, self.start, self.step = done, time.perf_counter(), step
        rate = (time.perf_counter() - self.start) / max(done - self.first, 1)
        left = f"~{rate * (total - done):5.0f}s left" if done > self.first else "estimating"
        click.echo(f"\r{step}: {done}/{total}  {item[:40]:40s}  {left}", err=True, nl=False)
        if done == total:
            click.echo("", err=True)


def run_options(command):
    for option in reversed([
        click.argument("model_path", type=click.Path(exists=True, dir_okay=False)),
        click.option("--profile", required=True, help="Built-in profile name (npu, research, ...) or a YAML path."),
        click.option("--calib", type=click.Path(exists=True, dir_okay=False), help="Calibration .npz/.npy keyed by input name."),
        click.option("--calib-images", type=click.Path(exists=True, file_okay=False), help="Folder of calibration images."),
        click.option("--preprocess", type=click.Choice([p.value for p in Preprocess]), default="imagenet", show_default=True),
        click.option("--num-calib", type=click.IntRange(min=1), default=None, help="Use the first N samples only."),
        click.option("-o", "--output-dir", required=True, help="Where outputs go (a folder)."),
        click.option("--bits", help="Homogeneous precision, e.g. W8A8."),
        click.option("--target-bops", type=click.FloatRange(min=0, min_open=True), help="Relative BOPs budget (W8A16 = 1)."),
        click.option("--min-sqnr", type=float, help="Cheapest point whose measured output SQNR (dB) is at least this."),
        click.option("--max-drop", type=click.FloatRange(min=0), help="Cheapest point within this many accuracy points of float."),
        click.option("--target-latency", type=click.FloatRange(min=0, min_open=True), help="Batch-1 latency budget in ms (the profile's latency model)."),
        click.option("--cost", type=click.Choice([c.value for c in CostAxis]), default="bops", show_default=True,
                     help="The curve's cost axis for --min-sqnr/--max-drop (latency: the profile's model)."),
        click.option("--amed-samples", type=click.IntRange(min=1), default=2000, show_default=True, help="Samples of --strategy amed."),
        click.option("--eval-data", type=click.Path(exists=True, dir_okay=False), help="Labelled .npz for top-1 (--max-drop)."),
        click.option("--eval", "eval_fn", help="module:function scoring an onnx.ModelProto (--max-drop)."),
        click.option("--range-method", type=click.Choice([m.value for m in RangeMethod]), default="mse", show_default=True),
        click.option("--weight-rounding", type=click.Choice([r.value for r in WeightRounding]),
                     help="nearest, or adaround (learned up/down rounding) [default: the profile's]."),
        click.option("--activation-clipping", type=click.Choice([c.value for c in ActivationClipping]),
                     help="tensor (MSE of the tensor), or output (ranges <= 8 bits tightened by the "
                          "network-output SQNR, one phase-1-like pass) [default: the profile's]."),
        click.option("--bias-correction/--no-bias-correction", default=None,
                     help="Fold each layer's mean output error into its bias [default: the profile's]."),
        click.option("--output-aware-range", "output_range", is_flag=True,
                     help="Choose weight scales by the layer-output error instead of the weight MSE."),
        click.option("--refine-rounding/--no-refine-rounding", default=True, show_default=True,
                     help="With AdaRound: round the chosen plan's weights again on its own quantized network."),
        click.option("--search", type=click.Choice([m.value for m in SearchMethod]), default="hybrid", show_default=True),
        click.option("--strategy", type=click.Choice([m.value for m in Strategy]), default="greedy", show_default=True,
                     help="Phase-2 strategy that builds the curve."),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Samples per ONNX Runtime run (results do not depend on it beyond float rounding)."),
        click.option("--executor", type=click.Choice([e.value for e in ExecutorKind]), default="processes",
                     show_default=True, help="Where phase 1 runs: this process, worker processes, or Ray."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Worker processes / Ray tasks for phase 1 [default: one per 4 cores; one runs here]."),
        click.option("--ray-address", default=None, help="Ray cluster address (default: start a local one)."),
        click.option("--encodings-version", type=click.Choice(["1.0.0", "0.6.1"]), default="1.0.0", show_default=True,
                     help="AIMET encodings format of out/encodings.json."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for strategies that draw."),
        click.option("--strict", is_flag=True, help="Refuse a model with nothing to quantize (default: a warning)."),
        click.option("--qem", type=click.FloatRange(min=1), help="MixQuant's QE multiplier: one point, no budget needed."),
        click.option("--lam", type=click.FloatRange(min=0), help="AdaQAT's lambda (noise per relative BOP): one point."),
        click.option("--adaqat-mode", type=click.Choice(["group", "network"]), default="group", show_default=True,
                     help="AdaQAT: widths per group, or one pair for the network (the paper's)."),
        click.option("--adaqat-loss", type=click.Choice(["predicted", "measured"]), default="predicted", show_default=True,
                     help="AdaQAT's task loss: from phase 1, or measured with ONNX Runtime per configuration."),
    ]):
        command = option(command)
    return common_options(command)


@dataclass(frozen=True)
class RunOptions:
    """The options of `quantize` and `search`, typed (click passes them by name)."""

    model_path: str
    profile: str
    calib: str | None
    calib_images: str | None
    preprocess: str
    num_calib: int | None
    output_dir: str
    bits: str | None
    target_bops: float | None
    min_sqnr: float | None
    max_drop: float | None
    target_latency: float | None
    cost: str
    amed_samples: int
    eval_data: str | None
    eval_fn: str | None
    range_method: str
    weight_rounding: str | None
    activation_clipping: str | None
    bias_correction: bool | None
    output_range: bool
    refine_rounding: bool
    search: str
    strategy: str
    batch_size: int
    executor: str
    workers: int | None
    ray_address: str | None
    encodings_version: str
    seed: int
    strict: bool
    qem: float | None
    lam: float | None
    adaqat_mode: str
    adaqat_loss: str
    verbose: int
    debug: bool

    def settings(self, *, require_stored: bool) -> Settings:
        return Settings(
            range_method=RangeMethod(self.range_method), batch_size=self.batch_size, seed=self.seed,
            strategy=Strategy(self.strategy), search=SearchMethod(self.search), executor=ExecutorKind(self.executor),
            workers=self.workers, ray_address=self.ray_address, encodings_version=self.encodings_version,
            require_stored=require_stored, verify=self.debug, strict=self.strict, qem=self.qem, lam=self.lam,
            per_network=self.adaqat_mode == "network", measured_loss=self.adaqat_loss == "measured",
            weight_rounding=WeightRounding(self.weight_rounding) if self.weight_rounding else None,
            activation_clipping=ActivationClipping(self.activation_clipping) if self.activation_clipping else None,
            bias_correction=self.bias_correction, output_range=self.output_range, refine_rounding=self.refine_rounding,
            cost=CostAxis(self.cost), amed_samples=self.amed_samples,
        )

    def evaluator(self) -> evaluate.Evaluate | None:
        if self.eval_data is not None:
            return evaluate.top1_evaluator(Path(self.eval_data), self.batch_size)
        if self.eval_fn is not None:
            return evaluate.imported_evaluator(self.eval_fn)
        return None
