"""Where phase-1 jobs run: this process, local worker processes, or a Ray cluster.

Why: every executor takes the same `Phase1Job`s and hands each result to `consume` as soon
as it is known, so the store (and resumption) works the same whichever runs them, and
results are identical: a job's numbers depend only on the job.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from onnxmp import runtime
from onnxmp.errors import OnnxmpError
from onnxmp.phase1.jobs import Executor, Phase1Job, Phase1Result, run_job, run_jobs_here
from onnxmp.records import ExecutorKind

THREADS_PER_WORKER = 4  # ONNX Runtime's threads stop paying beyond about this on a batch of 16


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


def _run_to_list(job: Phase1Job) -> list[Phase1Result]:
    return list(run_job(job))


def run_in_processes(jobs: Sequence[Phase1Job], consume: Callable[[Phase1Result], None], *, workers: int) -> None:
    """Run jobs in `workers` spawned processes; results are consumed job by job."""
    if workers <= 1 or len(jobs) <= 1:
        run_jobs_here(jobs, consume)
        return
    context = multiprocessing.get_context("spawn")  # ONNX Runtime thread pools do not survive fork
    with context.Pool(processes=min(workers, len(jobs))) as pool:
        for results in pool.imap_unordered(_run_to_list, jobs):
            for result in results:
                consume(result)


def run_on_ray(jobs: Sequence[Phase1Job], consume: Callable[[Phase1Result], None], *, address: str | None) -> None:
    """Run each job as a Ray task on the cluster at `address` (None: start a local one)."""
    try:
        import ray
    except ImportError as e:
        raise OnnxmpError("the Ray executor needs Ray: pip install 'onnxmp[ray]'") from e
    started_here = not ray.is_initialized()
    if started_here:
        host = (address or "").rsplit(":", 1)[0]
        loopback = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **loopback)
    try:
        remote = ray.remote(_run_to_list)
        pending = [remote.remote(job) for job in jobs]
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            for result in ray.get(finished[0]):
                consume(result)
    finally:
        if started_here:
            ray.shutdown()
