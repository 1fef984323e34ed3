"""The `onnxmp` command line: parse, call `pipeline`, print.

Why: the only place that catches `OnnxmpError`, configures logging and chooses exit codes;
it holds no quantization logic. Results go to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from onnxmp import apply as apply_step
from onnxmp import bops, calib_data, evaluate, hw_profile, model_io, pipeline, steps
from onnxmp.calib_data import Preprocess
from onnxmp.errors import BudgetError, CalibrationError, OnnxmpError, first_line
from onnxmp.records import ExecutorKind, RangeMethod, SearchMethod, Strategy
from onnxmp.run_records import Result, Settings

EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 130


def _fail(message: str, code: int) -> None:
    click.echo(f"onnxmp: error: {message}", err=True)
    sys.exit(code)


def handle_errors(command):
    """Turn every failure into one stderr line and an exit code (or a traceback with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False)
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            out = kwargs.get("output_dir")
            where = f"; finished phase-1 results are kept in {out}/{pipeline.STORE_NAME}" if out else ""
            click.echo(f"onnxmp: interrupted{where}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except OnnxmpError as e:
            if debug:
                raise
            _fail(first_line(e) or type(e).__name__, EXIT_INPUT)
        except OSError as e:
            if debug:
                raise
            _fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "), EXIT_INPUT)
        except Exception as e:  # a bug: one line, and how to see more
            if debug:
                raise
            _fail(f"internal error: {type(e).__name__}: {first_line(e)} (rerun with --debug)", EXIT_INTERNAL)

    return wrapper


def _setup_logging(verbose: int, debug: bool) -> None:
    level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def common_options(command):
    for option in reversed([
        click.option("-v", "--verbose", count=True, help="More log output on stderr."),
        click.option("--debug", is_flag=True, help="Show tracebacks; run onnx.checker after every pass."),
    ]):
        command = option(command)
    return command


@click.group()
@click.version_option(package_name="onnxmp")
def main() -> None:
    """onnxmp: post-training mixed-precision quantization for ONNX models."""


def _load_calib(model_path: str, calib: str | None, calib_images: str | None, preprocess: str, limit: int | None):
    model = model_io.load(model_path)
    if (calib is None) == (calib_images is None):
        raise CalibrationError("give exactly one of --calib FILE.npz and --calib-images DIR")
    if calib is not None:
        return model, calib_data.load_arrays(calib, model, limit=limit)
    return model, calib_data.load_images(calib_images, model, Preprocess(preprocess), limit=limit)


class _Progress:
    """Phase-1 progress on a terminal (group k of G, time left); silent in logs and CI."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.first: int | None = None

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        if self.first is None:
            self.first, self.start = done, time.perf_counter()
        rate = (time.perf_counter() - self.start) / max(done - self.first, 1)
        left = rate * (total - done) if done > self.first else float("nan")
        end = "\n" if done == total else ""
        click.echo(f"\rphase 1: {done}/{total}  {what[:40]:40s}  ~{left:5.0f}s left", err=True, nl=False)
        if end:
            click.echo("", err=True)


def _run_options(command):
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
        click.option("--eval-data", type=click.Path(exists=True, dir_okay=False), help="Labelled .npz for top-1 (--max-drop)."),
        click.option("--eval", "eval_fn", help="module:function scoring an onnx.ModelProto (--max-drop)."),
        click.option("--range-method", type=click.Choice([m.value for m in RangeMethod]), default="mse", show_default=True),
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
    eval_data: str | None
    eval_fn: str | None
    range_method: str
    search: str
    strategy: str
    batch_size: int
    executor: str
    workers: int | None
    ray_address: str | None
    encodings_version: str
    seed: int
    verbose: int
    debug: bool

    def settings(self, *, require_stored: bool) -> Settings:
        return Settings(
            range_method=RangeMethod(self.range_method), batch_size=self.batch_size, seed=self.seed,
            strategy=Strategy(self.strategy), search=SearchMethod(self.search), executor=ExecutorKind(self.executor),
            workers=self.workers, ray_address=self.ray_address, encodings_version=self.encodings_version,
            require_stored=require_stored, verify=self.debug,
        )

    def evaluator(self) -> evaluate.Evaluate | None:
        if self.eval_data is not None:
            return evaluate.top1_evaluator(Path(self.eval_data), self.batch_size)
        if self.eval_fn is not None:
            return evaluate.imported_evaluator(self.eval_fn)
        return None


def _check_budget_flags(options: RunOptions) -> None:
    """The budget errors a user can fix with flags, in the flags' names."""
    given = [options.bits, options.target_bops, options.min_sqnr, options.max_drop]
    if sum(v is not None for v in given) != 1:
        raise BudgetError("give exactly one of --bits, --target-bops, --min-sqnr, --max-drop")
    if options.max_drop is not None and options.eval_data is None and options.eval_fn is None:
        raise BudgetError("--max-drop needs an evaluation: --eval-data FILE.npz or --eval module:function")


def _run(options: RunOptions, *, require_stored: bool) -> None:
    _setup_logging(options.verbose, options.debug)
    _check_budget_flags(options)
    model_path = Path(options.model_path)
    output_dir = _output_dir(options.output_dir)
    if (output_dir / "model.qdq.onnx").resolve() == model_path.resolve():
        raise OnnxmpError("the output would overwrite the input model; choose another --output-dir")
    model, calib = _load_calib(
        options.model_path, options.calib, options.calib_images, options.preprocess, options.num_calib
    )
    result = pipeline.quantize(
        model, profile=options.profile, calib=calib, output_dir=output_dir, bits=options.bits,
        target_bops=options.target_bops, min_sqnr_db=options.min_sqnr, max_drop=options.max_drop,
        evaluate=options.evaluator(), settings=options.settings(require_stored=require_stored), progress=_Progress(),
    )
    _summary(result)


def _output_dir(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise OnnxmpError(f"{path}: -o/--output-dir must be a folder, and this is a file")
    return path


def _summary(result: Result) -> None:
    point = result.point
    counts: dict[str, int] = {}
    for candidate in result.plan.values():
        counts[str(candidate)] = counts.get(str(candidate), 0) + 1
    click.echo(f"relative BOPs     {point.bops_rel:.4f}")
    if point.predicted_sqnr_db == point.predicted_sqnr_db:
        click.echo(f"predicted SQNR    {point.predicted_sqnr_db:.2f} dB")
    if point.measured_sqnr_db is not None:
        click.echo(f"measured SQNR     {point.measured_sqnr_db:.2f} dB")
    if point.accuracy is not None:
        click.echo(f"accuracy          {point.accuracy:.2f}")
    if result.selection is not None:
        click.echo(f"selection         {result.selection.method}, point {result.selection.index} of {len(result.curve)}, {result.selection.evaluations} evaluations")
    click.echo("groups            " + ", ".join(f"{n}x {c}" for c, n in sorted(counts.items())))
    for name, path in result.paths.items():
        click.echo(f"{name:<17} {path}")


@main.command()
@_run_options
@handle_errors
def quantize(**options) -> None:
    """Quantize MODEL_PATH: homogeneous (--bits) or mixed precision (a budget)."""
    _run(RunOptions(**options), require_stored=False)


@main.command()
@_run_options
@handle_errors
def search(**options) -> None:
    """Re-run phase 2 and the selection for a new budget from the phase-1 store in -o DIR."""
    _run(RunOptions(**options), require_stored=True)


@main.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--encodings", "encodings_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="AIMET encodings JSON (1.0.0 or 0.6.1), written by onnxmp or by AIMET.")
@click.option("-o", "--output-dir", required=True, help="Where model.qdq.onnx goes (a folder).")
@common_options
@handle_errors
def apply(model_path: str, encodings_path: str, output_dir: str, verbose: int, debug: bool) -> None:
    """Build the QDQ model of MODEL_PATH from an encodings file."""
    _setup_logging(verbose, debug)
    path, unknown = apply_step.apply_encodings(model_path, encodings_path, _output_dir(output_dir), verify=debug)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        click.echo(f"onnxmp: {len(unknown)} encodings name tensors this model does not have: {shown}", err=True)
    click.echo(f"model             {path}")


@main.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--profile", required=True, help="Built-in profile name or a YAML path.")
@common_options
@handle_errors
def groups(model_path: str, profile: str, verbose: int, debug: bool) -> None:
    """List the quantizer groups of MODEL_PATH and the ops left in float, with reasons."""
    _setup_logging(verbose, debug)
    prepared = steps.prepare(model_io.load(model_path), hw_profile.load_profile(profile), None, verify=debug)
    analysis = prepared.analysis
    click.echo(f"{len(analysis.groups)} groups on profile {prepared.profile.name}")
    for group in analysis.groups:
        share = 100 * bops.macs_share(group, prepared.macs)
        click.echo(f"- {group.id}  [{' '.join(map(str, group.candidates))}]  MACs {share:.2f}%")
        click.echo(f"    ops: {', '.join(group.ops)}")
        click.echo(f"    weights: {', '.join(group.weights) or '-'}")
        click.echo(f"    activations: {', '.join(group.activations)}")
    click.echo(f"{len(analysis.skipped)} ops left in float")
    for skipped in analysis.skipped:
        click.echo(f"- {skipped.node} ({skipped.op_type}): {skipped.reason}")


if __name__ == "__main__":
    main()
