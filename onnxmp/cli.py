"""The `onnxmp` command line: parse, call `pipeline`, print.

Why: the only place that catches `OnnxmpError`, configures logging and chooses exit codes;
it holds no quantization logic. Results go to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from onnxmp import apply as apply_step
from onnxmp import (
    bops,
    calib_data,
    hw_profile,
    model_io,
    pipeline,
    report,
    report_html,
    run_store,
    steps,
)
from onnxmp.calib_data import Preprocess
from onnxmp.cli_options import Progress, RunOptions, common_options, run_options
from onnxmp.errors import BudgetError, CalibrationError, OnnxmpError, first_line, printable
from onnxmp.float_candidate import label
from onnxmp.run_records import Result

EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 130


def _fail(message: str, code: int) -> None:
    click.echo(f"onnxmp: error: {printable(message)}", err=True)  # names from files: no control characters
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
            kept = out is not None and (Path(out) / run_store.STORE_NAME).is_file()  # apply and groups keep none
            where = f"; finished phase-1 results are kept in {out}/{run_store.STORE_NAME}" if kept else ""
            click.echo(printable(f"onnxmp: interrupted{where}"), err=True)
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


class _Commands(click.Group):
    """The command group; a bad flag or argument of a command (click's UsageError, three
    lines by default) is one line and exit 2, like every other input error."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            _fail(f"{e.format_message()} (see {where} --help)", EXIT_INPUT)


@click.group(cls=_Commands)
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


def _check_budget_flags(options: RunOptions) -> None:
    """The budget errors a user can fix with flags, in the flags' names."""
    given = sum(v is not None for v in [options.bits, options.target_bops, options.min_sqnr, options.max_drop, options.target_latency])
    if given != 1 and not (given == 0 and options.settings(require_stored=False).fixes_point):
        raise BudgetError("give exactly one of --bits, --target-bops, --min-sqnr, --max-drop, --target-latency (or --qem/--lam alone)")
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
        target_latency_ms=options.target_latency,
        evaluate=options.evaluator(), settings=options.settings(require_stored=require_stored), progress=Progress(),
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
        counts[label(candidate)] = counts.get(label(candidate), 0) + 1
    click.echo(f"relative BOPs     {point.bops_rel:.4f}")
    if point.latency_ms is not None:
        click.echo(f"latency           {point.latency_ms:.4f} ms")
    if point.measured_latency_ms is not None:
        click.echo(f"measured latency  {point.measured_latency_ms:.4f} ms (estimate error {report.latency_error(point):+.1f} %)")
    if point.predicted_sqnr_db == point.predicted_sqnr_db:
        click.echo(f"predicted SQNR    {point.predicted_sqnr_db:.2f} dB")
    if point.measured_sqnr_db is not None:
        click.echo(f"measured SQNR     {point.measured_sqnr_db:.2f} dB; deployed {report_html.deployed_note(point, result.refined_sqnr_db)}")
    if result.refined_sqnr_db is not None:
        written = "written" if report_html.refined_written(point, result.refined_sqnr_db) else "not written"
        click.echo(f"plan-rounded SQNR {result.refined_sqnr_db:.2f} dB (AdaRound on the plan's own network; {written})")
    if point.accuracy is not None:
        click.echo(f"accuracy          {point.accuracy:.2f}")
    if result.selection is not None:
        click.echo(f"selection         {result.selection.method}, point {result.selection.index} of {len(result.curve)}, {result.selection.evaluations} evaluations")
    click.echo("groups            " + ", ".join(f"{n}x {c}" for c, n in sorted(counts.items())))
    for name, path in result.paths.items():
        click.echo(f"{name:<17} {path}")


@main.command()
@run_options
@handle_errors
def quantize(**options) -> None:
    """Quantize MODEL_PATH: homogeneous (--bits) or mixed precision (a budget)."""
    _run(RunOptions(**options), require_stored=False)


@main.command()
@run_options
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
        click.echo(printable(f"onnxmp: {len(unknown)} encodings name tensors this model does not have: {shown}"), err=True)
    click.echo(f"model             {path}")


def _input_shape(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """`name=1x128` (repeatable) -> {name: (1, 128)}."""
    shapes = {}
    for value in values:
        name, _, dims = value.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected NAME=DxDx... such as input_ids=1x128") from None
        if not name or any(d < 1 for d in shapes[name]):
            raise click.BadParameter(f"{value!r}: expected NAME=DxDx... such as input_ids=1x128")
    return shapes


def _echo(text: str) -> None:
    """A line of output holding names from the user's model: control characters escaped."""
    click.echo(printable(text))


@main.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--profile", required=True, help="Built-in profile name or a YAML path.")
@click.option("--calib", type=click.Path(exists=True, dir_okay=False),
              help="Calibration .npz/.npy: MACs at its samples' shapes (per sample).")
@click.option("--input-shape", "input_shapes", multiple=True, callback=_input_shape,
              help="NAME=1x128 (repeatable): MACs at this input shape; unknown dims otherwise count as 1.")
@common_options
@handle_errors
def groups(
    model_path: str, profile: str, calib: str | None, input_shapes: dict[str, tuple[int, ...]], verbose: int, debug: bool
) -> None:
    """List the quantizer groups of MODEL_PATH and the ops left in float, with reasons."""
    _setup_logging(verbose, debug)
    model = model_io.load(model_path)
    samples = calib_data.load_arrays(calib, model) if calib is not None else None
    prepared = steps.prepare(
        model, hw_profile.load_profile(profile), samples, verify=debug, input_shapes=input_shapes
    )
    analysis = prepared.analysis
    _echo(f"{len(analysis.groups)} groups on profile {prepared.profile.name}, "
          f"{sum(prepared.macs.values())} MACs per sample")
    for group in analysis.groups:
        share = 100 * bops.macs_share(group, prepared.macs)
        _echo(f"- {group.id}  [{' '.join(map(str, group.candidates))}]  MACs {share:.2f}%")
        _echo(f"    ops: {', '.join(group.ops)}")
        _echo(f"    weights: {', '.join(group.weights) or '-'}")
        _echo(f"    activations: {', '.join(group.activations)}")
    _echo(f"{len(analysis.skipped)} ops left in float")
    for skipped in analysis.skipped:
        _echo(f"- {skipped.node} ({skipped.op_type}): {skipped.reason}")


if __name__ == "__main__":
    main()
