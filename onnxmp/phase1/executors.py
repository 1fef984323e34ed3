"""Where phase-1 jobs run: this process, local worker processes, or a Ray cluster.

Why: every executor takes the same `Phase1Job`s and hands each result to `consume` as soon
as it is known, so the store (and resumption) works the same whichever runs them, and
results are identical: a job's numbers depend only on the job.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import pickle
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from onnxmp import runtime
from onnxmp.errors import OnnxmpError, RunError
from onnxmp.phase1.jobs import Executor, Phase1Job, Phase1Result, run_job, run_jobs_here
from onnxmp.records import ExecutorKind

THREADS_PER_WORKER = 4  # ONNX Runtime's threads stop paying beyond about this on a batch of 16
STOP_SECONDS = 2.0  # a worker asked to stop (SIGTERM) gets this long before SIGKILL


@dataclass(frozen=True)
class Placement:
    """Where phase 1 runs: the executor (None: this process), how many jobs to cut it into,
    and ONNX Runtime threads per job (None: the runtime's default)."""

    executor: Executor | None = None
    jobs: int = 1
    threads: int | None = None


def executor_for(kind: ExecutorKind, workers: int | None, ray_address: str | None) -> Placement:
    """The placement for an executor kind and a worker count.

    `workers=None` means one worker per THREADS_PER_WORKER cores; a single local worker runs
    in this process (spawning one would only add start-up time).
    """
    workers = workers or max(1, runtime.default_threads() // THREADS_PER_WORKER)
    if kind is ExecutorKind.PROCESSES:
        threads = max(1, runtime.default_threads() // workers)
        return Placement(functools.partial(run_in_processes, workers=workers), workers, threads)
    if kind is ExecutorKind.RAY:
        return Placement(functools.partial(run_on_ray, address=ray_address), max(2, workers), None)
    return Placement()


def run_in_processes(jobs: Sequence[Phase1Job], consume: Callable[[Phase1Result], None], *, workers: int) -> None:
    """Run jobs in `workers` spawned processes; each result is consumed as soon as it is measured.

    Each worker has its own pipe (no lock shared between processes, so a worker killed
    mid-message cannot block the others or the shutdown) and ignores SIGINT: Ctrl-C reaches
    this process alone, which stops every worker (SIGTERM, then SIGKILL) and re-raises.
    """
    if workers <= 1 or len(jobs) <= 1:
        run_jobs_here(jobs, consume)
        return
    context = multiprocessing.get_context("spawn")  # ONNX Runtime thread pools do not survive fork
    waiting: list[Phase1Job] = list(jobs)
    running: dict[multiprocessing.connection.Connection, multiprocessing.process.BaseProcess] = {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                connection, process = _start_worker(context, waiting.pop(0))
                running[connection] = process
            for ready in multiprocessing.connection.wait(list(running)):
                connection = next(c for c in running if c is ready)
                state = _receive(connection, consume)
                if state != "entry":
                    _finished(running.pop(connection), connection, done=state == "done")
    finally:
        for connection, process in running.items():
            _stop(process, connection)


def _start_worker(context, job: Phase1Job):
    """A worker process that will run `job`, and this side of its pipe.

    SIGINT is blocked while the process is made, so the child starts with it blocked
    (signal masks survive fork and exec) and cannot be interrupted before `_work` ignores it.
    """
    ours, theirs = context.Pipe(duplex=True)
    process = context.Process(target=_work, args=(theirs,), daemon=True, name="onnxmp-phase1")
    # started here, not inside start(): launching it unblocks SIGINT (resource_tracker.ensure_running)
    multiprocessing.resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    theirs.close()  # the worker holds the only other end: its death reads as end of file
    try:
        ours.send(job)  # after start: the parent stays interruptible while the job travels
    except BaseException:
        _stop(process, ours)
        raise
    return ours, process


def _work(connection) -> None:
    """Worker body: receive one job, send ("entry", result) per result, then ("done", None) or
    ("error", exception)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # discards a Ctrl-C pending since start-up
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        for result in run_job(connection.recv()):
            connection.send(("entry", result))
        connection.send(("done", None))
    except Exception as e:  # sent back, raised in the parent: no traceback printed here
        with contextlib.suppress(OSError):  # the parent is gone (killed): end quietly
            connection.send(("error", _picklable(e)))
    finally:
        connection.close()


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _receive(connection, consume: Callable[[Phase1Result], None]) -> str:
    """Handle one message of a worker: "entry" (consumed), "done", or "gone" (no message)."""
    try:
        kind, payload = connection.recv()
    except (EOFError, OSError):
        return "gone"
    if kind == "error":
        raise payload
    if kind == "entry":
        consume(payload)
    return kind


def _finished(process, connection, *, done: bool) -> None:
    """Reap a worker after its last message; one that ended without "done" is an error."""
    process.join(timeout=STOP_SECONDS)
    _stop(process, connection)
    if not done:
        raise RunError(f"a phase-1 worker process ended without its results (exit code {process.exitcode}); rerun to resume")


def _stop(process, connection) -> None:
    """End a worker for sure, quickly: SIGTERM, then SIGKILL."""
    connection.close()
    if process.is_alive():
        process.terminate()
        process.join(timeout=STOP_SECONDS)
    if process.is_alive():
        process.kill()
        process.join(timeout=STOP_SECONDS)


def _stream(job: Phase1Job) -> Iterator[Phase1Result]:
    yield from run_job(job)


def run_on_ray(jobs: Sequence[Phase1Job], consume: Callable[[Phase1Result], None], *, address: str | None) -> None:
    """Run each job as a Ray streaming task on the cluster at `address` (None: start a local
    one); each result is consumed as soon as the task yields it."""
    try:
        import ray
    except ImportError as e:
        raise OnnxmpError("the Ray executor needs Ray: pip install 'onnxmp[ray]'") from e
    started_here = not ray.is_initialized()
    if started_here:
        host = (address or "").rsplit(":", 1)[0]
        loopback = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **loopback)
    streams = []
    try:
        remote = ray.remote(num_returns="streaming")(_stream)
        streams = [remote.remote(job) for job in jobs]
        _drain_streams(ray, streams, consume)
    finally:
        for stream in streams:
            with contextlib.suppress(Exception):
                ray.cancel(stream, force=True)
        if started_here:
            ray.shutdown()


def _drain_streams(ray, streams: list, consume: Callable[[Phase1Result], None]) -> None:
    streams = list(streams)
    while streams:
        (ready,), _ = ray.wait(streams, num_returns=1)
        try:
            ref = next(ready)
        except StopIteration:
            streams.remove(ready)
            continue
        try:
            consume(ray.get(ref))
        except ray.exceptions.RayTaskError as e:  # the task's own exception, not Ray's wrapper
            raise (e.cause if isinstance(e.cause, BaseException) else e) from None
