"""The `onnxmp` command line: parse, call `pipeline`, print.

Why: the only place that catches `OnnxmpError`, configures logging and chooses exit codes;
it holds no quantization logic. Results go to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import time
from pathlib import Path

import click
import numpy as np

from onnxmp import apply as apply_step
from onnxmp import calib_data, pipeline, runtime
from onnxmp.calib_data import Preprocess
from onnxmp.errors import CalibrationError, OnnxmpError
from onnxmp.records import ExecutorKind, RangeMethod, SearchMethod

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
            _fail(str(e).splitlines()[0] if str(e) else type(e).__name__, EXIT_INPUT)
        except OSError as e:
            if debug:
                raise
            _fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "), EXIT_INPUT)
        except Exception as e:  # a bug: one line, and how to see more
            if debug:
                raise
            _fail(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (rerun with --debug)", EXIT_INTERNAL)

    return wrapper


def _setup_logging(verbose: int, debug: bool) -> None:
    level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def common_options(command):
    for option in reversed([
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for anything random."),
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
    from onnxmp import model_io

    model = model_io.load(model_path)
    if (calib is None) == (calib_images is None):
        raise CalibrationError("give exactly one of --calib FILE.npz and --calib-images DIR")
    if calib is not None:
        return model, calib_data.load_arrays(calib, model, limit=limit)
    return model, calib_data.load_images(calib_images, model, Preprocess(preprocess), limit=limit)


def _evaluator(eval_data: str | None, eval_fn: str | None, batch_size: int):
    if eval_data is not None:
        return top1_evaluator(Path(eval_data), batch_size)
    if eval_fn is not None:
        module_name, _, name = eval_fn.partition(":")
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise OnnxmpError(f"--eval {eval_fn}: cannot import ({e})") from e
    return None


def top1_evaluator(path: Path, batch_size: int):
    """An evaluation function: top-1 accuracy (%) on a labelled .npz (inputs + `label`)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{path}: cannot read evaluation data: {e}") from e
    if calib_data.LABEL_KEY not in arrays:
        raise CalibrationError(f"{path}: no 'label' array for top-1 evaluation")
    labels = arrays.pop(calib_data.LABEL_KEY)

    def evaluate(model) -> float:
        sess = runtime.session(model)
        inputs = calib_data.validate(arrays, calib_data.model_inputs(model), str(path))
        correct = 0
        for batch_start, out in zip(range(0, len(labels), batch_size), runtime.run_batches(sess, inputs.batches(batch_size)), strict=True):
            logits = next(iter(out.values()))
            correct += int((logits.argmax(axis=-1) == labels[batch_start : batch_start + len(logits)]).sum())
        return 100.0 * correct / len(labels)

    return evaluate


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
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Samples per ONNX Runtime run (results do not depend on it beyond float rounding)."),
        click.option("--executor", type=click.Choice([e.value for e in ExecutorKind]), default="processes",
                     show_default=True, help="Where phase 1 runs: this process, worker processes, or Ray."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Worker processes / Ray tasks for phase 1 [default: one per 4 cores; one runs here]."),
        click.option("--ray-address", default=None, help="Ray cluster address (default: start a local one)."),
        click.option("--encodings-version", type=click.Choice(["1.0.0", "0.6.1"]), default="1.0.0", show_default=True,
                     help="AIMET encodings format of out/encodings.json."),
    ]):
        command = option(command)
    return common_options(command)


def _run(require_stored: bool, **kw) -> None:
    _setup_logging(kw["verbose"], kw["debug"])
    model_path = Path(kw["model_path"])
    output_dir = _output_dir(kw["output_dir"])
    if output_dir.resolve() == model_path.parent.resolve() and (output_dir / "model.qdq.onnx").resolve() == model_path.resolve():
        raise OnnxmpError("the output would overwrite the input model; choose another --output-dir")
    model, calib = _load_calib(kw["model_path"], kw["calib"], kw["calib_images"], kw["preprocess"], kw["num_calib"])
    settings = pipeline.Settings(
        range_method=RangeMethod(kw["range_method"]), batch_size=kw["batch_size"], seed=kw["seed"],
        search=SearchMethod(kw["search"]), executor=ExecutorKind(kw["executor"]), workers=kw["workers"],
        ray_address=kw["ray_address"],
    )
    result = pipeline.quantize(
        model, profile=kw["profile"], calib=calib, output_dir=output_dir, bits=kw["bits"],
        target_bops=kw["target_bops"], min_sqnr_db=kw["min_sqnr"], max_drop=kw["max_drop"],
        evaluate=_evaluator(kw["eval_data"], kw["eval_fn"], kw["batch_size"]), settings=settings,
        progress=_Progress(), require_stored=require_stored, verify=kw["debug"],
        encodings_version=kw["encodings_version"],
    )
    _summary(result)


def _output_dir(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise OnnxmpError(f"{path}: -o/--output-dir must be a folder, and this is a file")
    return path


def _summary(result: pipeline.Result) -> None:
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
def quantize(**kw) -> None:
    """Quantize MODEL_PATH: homogeneous (--bits) or mixed precision (a budget)."""
    _run(require_stored=False, **kw)


@main.command()
@_run_options
@handle_errors
def search(**kw) -> None:
    """Re-run phase 2 and the selection for a new budget from the phase-1 store in -o DIR."""
    _run(require_stored=True, **kw)


@main.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--encodings", "encodings_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="AIMET encodings JSON (1.0.0 or 0.6.1), written by onnxmp or by AIMET.")
@click.option("-o", "--output-dir", required=True, help="Where model.qdq.onnx goes (a folder).")
@common_options
@handle_errors
def apply(model_path: str, encodings_path: str, output_dir: str, seed: int, verbose: int, debug: bool) -> None:
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
def groups(model_path: str, profile: str, seed: int, verbose: int, debug: bool) -> None:
    """List the quantizer groups of MODEL_PATH and the ops left in float, with reasons."""
    from onnxmp import bops, graph, hw_profile, model_io
    from onnxmp.passes import CANONICALIZE
    from onnxmp.passes.quantizer_groups import quantizer_groups

    _setup_logging(verbose, debug)
    model = pipeline.run_passes(model_io.load(model_path), CANONICALIZE, verify=debug)
    loaded = hw_profile.load_profile(profile)
    index = graph.build(model)
    analysis = quantizer_groups(index, loaded)
    shapes = {name: (1, *[d or 1 for d in dims[1:]]) for name, (_, dims) in calib_data.model_inputs(model).items()}
    macs = bops.macs_per_op(bops.concrete_graph(model, shapes))
    total = sum(macs.values()) or 1
    click.echo(f"{len(analysis.groups)} groups on profile {loaded.name}")
    for group in analysis.groups:
        share = 100 * sum(macs.get(op, 0) for op in group.ops) / total
        click.echo(f"- {group.id}  [{' '.join(map(str, group.candidates))}]  MACs {share:.2f}%")
        click.echo(f"    ops: {', '.join(group.ops)}")
        click.echo(f"    weights: {', '.join(group.weights) or '-'}")
        click.echo(f"    activations: {', '.join(group.activations)}")
    click.echo(f"{len(analysis.skipped)} ops left in float")
    for skipped in analysis.skipped:
        click.echo(f"- {skipped.node} ({skipped.op_type}): {skipped.reason}")


if __name__ == "__main__":
    main()
