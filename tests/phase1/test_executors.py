"""Phase-1 executors give the same results as the in-process run.

Local worker processes on the digits model, and a real Ray cluster started on loopback
(skipped when Ray is not installed: `pip install 'onnxmp[ray]'`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
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
