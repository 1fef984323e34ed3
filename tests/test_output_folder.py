"""output_folder: one run's files or none, one run at a time, the user's umask, no leftovers."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxmp import files, model_io, output_folder
from onnxmp.errors import OutputError

OWNED = ("model.qdq.onnx", "plan.json", "sensitivity.json")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _run(folder: Path, contents: dict[str, str]) -> None:
    """One run's emit: every file written into the staging folder, then switched in."""
    with output_folder.staged(folder, OWNED) as staging:
        for name, text in contents.items():
            model_io.write_text(text, staging / name)


def _listing(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_run_replaces_the_previous_run_whole(tmp_path):
    (tmp_path / "phase1.jsonl").write_text("{}\n")  # the store is not a run's file
    _run(tmp_path, {"model.qdq.onnx": "A model", "plan.json": "A plan", "sensitivity.json": "A table"})
    _run(tmp_path, {"model.qdq.onnx": "B model", "plan.json": "B plan"})  # a --bits run: no table
    listing = _listing(tmp_path)
    assert {k: v for k, v in listing.items() if k != output_folder.MANIFEST} == {
        "model.qdq.onnx": "B model", "phase1.jsonl": "{}\n", "plan.json": "B plan",
    }
    assert output_folder.complete_run(tmp_path) == {"model.qdq.onnx": _sha("B model"), "plan.json": _sha("B plan")}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(output_folder.STAGING_PREFIX)] == []


def test_a_failing_run_leaves_the_previous_run_as_it_was(tmp_path):
    _run(tmp_path, {"model.qdq.onnx": "A model", "plan.json": "A plan"})
    before = _listing(tmp_path)
    with pytest.raises(ZeroDivisionError), output_folder.staged(tmp_path, OWNED) as staging:
        model_io.write_text("B model", staging / "model.qdq.onnx")
        raise ZeroDivisionError
    assert _listing(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


@pytest.mark.parametrize("crash_after", [0, 1])
def test_a_switch_killed_halfway_leaves_files_of_one_run_and_no_manifest(tmp_path, monkeypatch, crash_after):
    _run(tmp_path, {"model.qdq.onnx": "A model", "plan.json": "A plan", "sensitivity.json": "A table"})
    real_replace, moved = os.replace, []

    def crash(src, dst):
        switching = Path(src).parent.name.startswith(output_folder.STAGING_PREFIX) and Path(dst).parent == tmp_path
        if switching and len(moved) == crash_after:
            raise KeyboardInterrupt  # stands for SIGKILL between two renames of the switch
        moved.extend([dst] if switching else [])
        real_replace(src, dst)

    monkeypatch.setattr(output_folder.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, {"model.qdq.onnx": "B model", "plan.json": "B plan", "sensitivity.json": "B table"})
    listing = _listing(tmp_path)
    assert output_folder.MANIFEST not in listing and output_folder.complete_run(tmp_path) is None
    assert all(text.startswith("B ") for text in listing.values())  # no file of run A is left
    assert len(listing) == crash_after
    monkeypatch.setattr(output_folder.os, "replace", real_replace)
    _run(tmp_path, {"model.qdq.onnx": "C model", "plan.json": "C plan"})  # the next run completes
    assert output_folder.complete_run(tmp_path) == {"model.qdq.onnx": _sha("C model"), "plan.json": _sha("C plan")}


def test_complete_run_checks_every_hash(tmp_path):
    _run(tmp_path, {"model.qdq.onnx": "A model", "plan.json": "A plan"})
    assert output_folder.complete_run(tmp_path) is not None
    (tmp_path / "plan.json").write_text("edited")
    assert output_folder.complete_run(tmp_path) is None
    assert output_folder.complete_run(tmp_path / "absent") is None


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path):
    with output_folder.locked(tmp_path / "out"), pytest.raises(OutputError) as info, output_folder.locked(tmp_path / "out"):
        pass
    assert str(info.value) == (
        f"{tmp_path / 'out'}: another onnxmp run is writing to this output folder; wait for it or choose another -o"
    )
    with output_folder.locked(tmp_path / "out"):  # released on exit
        pass


def test_the_lock_of_a_killed_process_is_released(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from onnxmp import output_folder\n"
         "with output_folder.locked(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(OutputError), output_folder.locked(tmp_path):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with output_folder.locked(tmp_path):
        pass


def test_locking_removes_what_killed_runs_left(tmp_path):
    stale_staging = tmp_path / f"{output_folder.STAGING_PREFIX}k3j8ab2z"
    stale_staging.mkdir()
    (stale_staging / "model.qdq.onnx").write_text("half")
    stale_tmp = tmp_path / ".plan.json.k3j_8abz.tmp"
    stale_tmp.write_text("half")
    kept = ["phase1.jsonl", "notes.tmp", ".hidden", "plan.json"]
    for name in kept:
        (tmp_path / name).write_text("mine")
    with output_folder.locked(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_outputs_get_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert files.umask() == umask
        _run(tmp_path, {"model.qdq.onnx": "A model", "plan.json": "A plan"})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"model.qdq.onnx": mode, "plan.json": mode, output_folder.MANIFEST: mode}


def test_cli_run_into_a_folder_another_run_holds_is_one_line(tmp_path):
    from tests.test_cli import DIGITS, _quantize, assert_one_line_error

    (tmp_path / "out").mkdir()
    with output_folder.locked(tmp_path / "out"):
        start = time.monotonic()
        result = _quantize(DIGITS, tmp_path / "out", "--bits", "W8A8")
        assert time.monotonic() - start < 30
    assert_one_line_error(result, "another onnxmp run is writing to this output folder")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    with pytest.raises(ZeroDivisionError), output_folder.locked(tmp_path / "new" / "out"):
        raise ZeroDivisionError
    assert not (tmp_path / "new" / "out").exists()
    with output_folder.locked(tmp_path / "kept"):
        (tmp_path / "kept" / "phase1.jsonl").write_text("{}\n")
    assert (tmp_path / "kept" / "phase1.jsonl").is_file()  # a folder with files stays
