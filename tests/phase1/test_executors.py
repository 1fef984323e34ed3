"""Phase-1 executors give the same results as the in-process run.

Local worker processes on the digits model, and a real Ray cluster started on loopback
(skipped when Ray is not installed: `pip install 'onnxmp[ray]'`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from onnxmp import pipeline, run_records
from onnxmp.records import ExecutorKind

ROOT = Path(__file__).resolve().parents[2]
MODEL, CALIB = ROOT / "models" / "digits_cnn.onnx", ROOT / "models" / "digits_calib.npz"


def _run(out: Path, **settings) -> dict:
    pipeline.quantize(
        MODEL, profile="research", calib=CALIB, output_dir=out, target_bops=0.3,
        settings=run_records.Settings(**settings),
    )
    return json.loads((out / "sensitivity.json").read_text())


@pytest.fixture(scope="module")
def local_table(tmp_path_factory) -> dict:
    return _run(tmp_path_factory.mktemp("local"))


def test_worker_processes_match_local_run(local_table, tmp_path):
    table = _run(tmp_path, executor=ExecutorKind.PROCESSES, workers=2)
    assert table == local_table
    assert len(table) == 7 and all(len(v) >= 2 for v in table.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_cluster_on_loopback_matches_local_run(local_table, tmp_path):
    pytest.importorskip("ray")
    ray_cli = shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not on PATH")
    port = _free_port()
    # Ray's unix sockets live under --temp-dir and must fit in 107 bytes: not under tmp_path
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    start = [ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a throwaway cluster on loopback only
    subprocess.run(start, check=True, capture_output=True, timeout=120, env=env)
    try:
        table = _run(tmp_path / "out", executor=ExecutorKind.RAY, workers=2, ray_address=f"127.0.0.1:{port}")
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert table == local_table


def test_executor_for_picks_one_worker_per_four_cores(monkeypatch):
    from onnxmp import runtime
    from onnxmp.phase1.executors import Placement, executor_for

    monkeypatch.setattr(runtime, "default_threads", lambda: 8)
    placement = executor_for(ExecutorKind.PROCESSES, None, None)
    jobs, threads = placement.jobs, placement.threads
    assert (jobs, threads) == (2, 4)
    monkeypatch.setattr(runtime, "default_threads", lambda: 2)
    placement = executor_for(ExecutorKind.PROCESSES, None, None)
    jobs, threads = placement.jobs, placement.threads
    assert (jobs, threads) == (1, 2)  # one worker: runs in this process with both cores
    placement = executor_for(ExecutorKind.PROCESSES, 2, None)
    jobs, threads = placement.jobs, placement.threads
    assert (jobs, threads) == (2, 1)
    assert executor_for(ExecutorKind.LOCAL, 4, None) == Placement(None, 1, None)
    ray = executor_for(ExecutorKind.RAY, None, "127.0.0.1:6379")
    assert (ray.jobs, ray.threads) == (2, None)


# ---------------------------------------------------------------- worker processes, one result at a time


@pytest.fixture(scope="module")
def digits_jobs():
    """The digits model's phase 1 on the research profile cut into two jobs (batch 8)."""
    from onnxmp import hw_profile, model_io, steps
    from onnxmp.calib_data import load_arrays
    from onnxmp.passes.calibrate import calibrate
    from onnxmp.phase1.executors import Placement
    from onnxmp.phase1.sensitivity import context_for, split_jobs

    model = model_io.load(MODEL)
    calib = load_arrays(CALIB, model, limit=64)
    prepared = steps.prepare(model, hw_profile.load_profile("research"), calib)
    encodings = calibrate(prepared.model, prepared.graph, prepared.analysis, calib, profile=prepared.profile)
    pending = frozenset((g.id, c) for g in prepared.analysis.groups for c in g.candidates)
    context = context_for(prepared.model, prepared.analysis, encodings, calib, batch_size=8)
    jobs = split_jobs(context, pending, Placement(jobs=2))
    assert len(jobs) == 2 and all(len(job.pending) >= 4 for job in jobs)
    return jobs


def test_a_worker_sends_each_result_before_measuring_the_next(monkeypatch):
    """Streaming, checked by order rather than by timing: `_work` must send result k before
    `run_job` is asked for result k+1, so a killed run keeps everything measured so far."""
    from onnxmp.phase1 import executors
    from onnxmp.phase1.jobs import Phase1Result

    events: list[str] = []

    def measuring(job):
        for k in range(3):
            events.append(f"measured {k}")
            yield Phase1Result(group=k, candidate=job, noise=0.0, seconds=0.0)

    class Pipe:
        def recv(self):
            return "job"

        def send(self, message):
            kind, payload = message
            events.append(f"sent {payload.group}" if kind == "entry" else kind)

        def close(self):
            events.append("closed")

    monkeypatch.setattr(executors, "run_job", measuring)
    monkeypatch.setattr(executors.signal, "signal", lambda *_: None)  # leave pytest's SIGINT alone
    executors._work(Pipe())
    assert events == ["measured 0", "sent 0", "measured 1", "sent 1", "measured 2", "sent 2", "done", "closed"]


def test_worker_results_all_arrive_through_the_pipes(digits_jobs):
    from onnxmp.phase1.executors import run_in_processes
    from onnxmp.phase1.jobs import run_jobs_here

    received: list = []
    run_in_processes(digits_jobs, received.append, workers=2)
    here: list = []
    run_jobs_here(digits_jobs, here.append)
    key = lambda r: (r.group, r.candidate)  # noqa: E731
    assert sorted(map(key, received)) == sorted(map(key, here)) == sorted(p for j in digits_jobs for p in j.pending)
    assert {key(r): r.noise for r in received} == {key(r): r.noise for r in here}


def test_an_error_in_a_worker_is_raised_here_without_a_hang(digits_jobs):
    from dataclasses import replace

    from onnxmp.phase1.executors import run_in_processes

    broken = [replace(digits_jobs[0], encodings={}), digits_jobs[1]]  # every lookup of an encoding fails
    start = time.monotonic()
    with pytest.raises(KeyError):
        run_in_processes(broken, lambda result: None, workers=2)
    assert time.monotonic() - start < 60
    assert multiprocessing.active_children() == []


def test_a_worker_killed_mid_job_is_an_error_not_a_hang(digits_jobs):
    from onnxmp.phase1.executors import run_in_processes

    def kill_the_workers(result) -> None:
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)

    from onnxmp.errors import RunError

    with pytest.raises(RunError, match=r"^a phase-1 worker process ended without its results \(exit code -9\); rerun"):
        run_in_processes(digits_jobs, kill_the_workers, workers=2)
    assert multiprocessing.active_children() == []


WORKER_UNDER_FIRE = """
import multiprocessing, os, signal, sys, time
from onnxmp.phase1 import executors

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    connection, process = executors._start_worker(context, None)  # the first worker: no resource tracker yet
    for _ in range(40):  # Ctrl-C all through its start-up (imports take about a second)
        os.kill(process.pid, signal.SIGINT)
        time.sleep(0.025)
    kind, payload = connection.recv()
    process.join(timeout=30)
    print(kind, type(payload).__name__, process.exitcode)
"""


def test_a_worker_ignores_ctrl_c_from_its_first_instruction(tmp_path):
    script = tmp_path / "fire.py"
    script.write_text(WORKER_UNDER_FIRE)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "KeyboardInterrupt" not in result.stderr, result.stderr
    # the worker lived to run its job (None: an AttributeError, sent back) and ended normally
    assert result.stdout.splitlines() == ["error AttributeError 0"], (result.stdout, result.stderr)
