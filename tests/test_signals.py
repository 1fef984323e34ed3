"""Interrupts: SIGINT (Ctrl-C, to the whole process group as a terminal sends it) and SIGKILL
(to the main process, as `kill -9 PID`) at seeded random points of phase 1 and of output
writing, with the worker-process executor and the local one, on the shipped digits CNN.

After every interruption the output folder holds one run's files or none: the previous
run's (a `--bits W8A8` run was there before) or some of the new run's, never a mix. Ctrl-C
ends within a few seconds with exit 130, one stderr line and no process left behind. The
rerun of the same command then ends byte-identical to an uninterrupted run (reports up to
their timing lines), with the same phase-1 results and no staging folder or temporary file.
The default suite runs four cases that cover each signal, point and executor; the `slow`
marker runs the whole matrix at more random points.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxmp import emit, files, output_folder, run_store
from onnxmp.phase1.sensitivity import STORE_KIND
from tests.processes import default_sigint

REPO = Path(__file__).resolve().parents[1]
DIGITS, CALIB = REPO / "models" / "digits_cnn.onnx", REPO / "models" / "digits_calib.npz"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
STORE = run_store.STORE_NAME


def _command(out: Path, executor: str, *budget: str) -> list[str]:
    # 48 samples at batch 4: phase 1 has 58 evaluations of 12 batches each, a window to hit
    return [
        sys.executable, "-m", "onnxmp.cli", "quantize", str(DIGITS), "--profile", "research", *budget,
        "--calib", str(CALIB), "--num-calib", "48", "--batch-size", "4", "-o", str(out),
        "--executor", executor, "--workers", "2",
    ]


def _start(out: Path, executor: str, *budget: str) -> subprocess.Popen:
    budget = budget or ("--target-bops", "0.3")
    return subprocess.Popen(
        _command(out, executor, *budget), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=ENV, cwd=REPO, start_new_session=True,  # its own process group, like a shell job
        preexec_fn=default_sigint,
    )



def _finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stderr


def _normalized(path: Path) -> bytes:
    """A run's file without what changes from run to run (the timings of the reports)."""
    data = path.read_bytes()
    if path.name == "report.md":
        return re.sub(rb"\n- \w+_s: [0-9.]+", b"", data)
    if path.name == "report.html":
        return re.sub(rb"<td>[0-9.]+ s</td>", b"<td>T</td>", data)
    return data


def _outputs(folder: Path) -> dict[str, bytes]:
    return {name: _normalized(folder / name) for name in emit.OUTPUT_FILES if (folder / name).is_file()}


def _phase1(folder: Path) -> dict[tuple[str, str], tuple]:
    if not (folder / STORE).exists():
        return {}
    lines = (folder / STORE).read_text().splitlines()
    entries = [e for line in lines if line.endswith("}") and (e := json.loads(line))["kind"] == STORE_KIND]
    return {(e["group"], e["candidate"]): (e["signal"], e["noise"]) for e in entries}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run ("clean") and a different earlier run ("previous", --bits W8A8)."""
    base = tmp_path_factory.mktemp("signals")
    clean, previous = _start(base / "clean", "local"), _start(base / "previous", "local", "--bits", "W8A8")
    for proc in (clean, previous):
        code, stderr = _finish(proc)
        assert code == 0, stderr
    assert _outputs(base / "clean").keys() > _outputs(base / "previous").keys()  # previous has no sensitivity.json
    return {"clean": base / "clean", "previous": base / "previous"}


def _wait_for(proc: subprocess.Popen, ready, what: str) -> bool:
    """Poll until `ready()`; False when the run ended first."""
    deadline = time.monotonic() + 120
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"never reached {what}"
        time.sleep(0.002)
    return True


def _trigger(out: Path, point: str, rng: random.Random):
    if point == "phase1":
        lines = rng.randint(1, 12)
        return lambda: (out / STORE).exists() and (out / STORE).read_bytes().count(b"\n") >= lines
    return lambda: any(p.name.startswith(output_folder.STAGING_PREFIX) for p in out.iterdir())


def _group_is_gone(pgid: int) -> bool:
    """No live process is left in the process group (zombies whose parent died wait for a
    reaper that a container may lack: they run nothing)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp
            return False
    return True


def _interrupt(out: Path, executor: str, sig: int, point: str, seed: int) -> tuple[bool, int, str, float, int]:
    """Run into `out`, send `sig` at a seeded random moment of `point`.

    Returns whether the signal interrupted the run, its exit code, stderr, the seconds from
    the signal to its end, and its process group."""
    rng = random.Random(seed)
    proc = _start(out, executor)
    try:
        hit = _wait_for(proc, _trigger(out, point, rng), point)
        if hit:
            time.sleep(rng.uniform(0, 0.2 if point == "phase1" else 0.1))
            sent = time.monotonic()
            if sig == signal.SIGINT:
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
            else:
                proc.send_signal(sig)  # kill -9 PID: the main process only
        code, stderr = _finish(proc, timeout=60)
        return hit and code != 0, code, stderr, time.monotonic() - sent if hit else 0.0, proc.pid
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if sig == signal.SIGKILL:  # orphaned workers end at their next message; do not wait for it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def _assert_one_run(folder: Path, runs: dict[str, Path]) -> str:
    """The run whose files `folder` holds (all of them with the manifest, or some without)."""
    present = _outputs(folder)
    owners = [name for name, run in runs.items() if all(_outputs(run).get(k) == v for k, v in present.items())]
    assert owners, f"{folder} mixes runs: {sorted(present)}"
    if (folder / output_folder.MANIFEST).exists():
        complete = output_folder.complete_run(folder)
        assert complete is not None and set(complete) == set(_outputs(runs[owners[0]]))
    return owners[0]


def _assert_no_leftovers(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(output_folder.STAGING_PREFIX) or files.is_temporary(p.name)]
    assert leftovers == []


def _case(tmp_path: Path, runs: dict[str, Path], executor: str, sig: int, point: str, seed: int) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["previous"], out)
    hit, code, stderr, seconds, group = _interrupt(out, executor, sig, point, seed)
    assert hit, f"the run ended before the signal ({code}): {stderr}"  # a case that interrupts nothing tests nothing
    if sig == signal.SIGINT:
        assert code == 130, stderr
        assert len(stderr.splitlines()) == 1 and stderr.startswith("onnxmp: interrupted"), stderr
        assert "Traceback" not in stderr
        assert seconds < 10
        deadline = time.monotonic() + 5  # multiprocessing's resource tracker ends once it sees ours gone
        while not _group_is_gone(group):
            assert time.monotonic() < deadline, "a process of the run outlived it"
            time.sleep(0.05)
    else:
        assert code == -signal.SIGKILL
    owner = _assert_one_run(out, runs)
    if point == "phase1":
        assert owner == "previous"  # nothing of the new run is written before phase 1 ends
    rerun = _start(out, executor)
    code, stderr = _finish(rerun)
    assert code == 0, stderr
    assert _outputs(out) == _outputs(runs["clean"])
    assert output_folder.complete_run(out) is not None
    assert _phase1(out) == _phase1(runs["clean"])
    _assert_no_leftovers(out)


DEFAULT_CASES = [  # each signal, point and executor at least once
    pytest.param("processes", signal.SIGINT, "phase1", 1, id="ctrl-c-phase1-processes"),
    pytest.param("local", signal.SIGKILL, "phase1", 2, id="kill-phase1-local"),
    pytest.param("local", signal.SIGINT, "output", 3, id="ctrl-c-output-local"),
    pytest.param("processes", signal.SIGKILL, "output", 4, id="kill-output-processes"),
]


@pytest.mark.parametrize(("executor", "sig", "point", "seed"), DEFAULT_CASES)
def test_an_interrupted_run_leaves_one_run_and_its_rerun_ends_like_a_clean_run(tmp_path, runs, executor, sig, point, seed):
    _case(tmp_path, runs, executor, sig, point, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 13))
@pytest.mark.parametrize("point", ["phase1", "output"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
@pytest.mark.parametrize("executor", ["processes", "local"])
def test_every_signal_point_and_executor(tmp_path, runs, executor, sig, point, seed):
    _case(tmp_path, runs, executor, sig, point, seed)


@pytest.mark.slow
def test_ctrl_c_with_ray_keeps_streamed_results_and_ends_quickly(tmp_path, runs):
    """Ray tasks stream each result: some are stored before any task ends; Ctrl-C is one line."""
    pytest.importorskip("ray")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _command(out, "ray", "--target-bops", "0.3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**ENV, "RAY_AUTH_MODE": "disabled"}, start_new_session=True, preexec_fn=default_sigint,
    )
    assert _wait_for(proc, _trigger(out, "phase1", random.Random(3)), "phase 1")
    os.killpg(proc.pid, signal.SIGINT)
    start = time.monotonic()
    code, stderr = _finish(proc, timeout=60)
    assert code == 130 and time.monotonic() - start < 15, stderr
    assert stderr.splitlines() == [f"onnxmp: interrupted; finished phase-1 results are kept in {out}/{STORE}"]
    kept = _phase1(out)
    clean = _phase1(runs["clean"])
    assert 1 <= len(kept) < len(clean) and all(clean[k] == v for k, v in kept.items())
