"""The HTML report on a real run of the shipped digits CNN: self-contained, stable, renders."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxmp import inputs, pipeline, run_records, steps
from onnxmp.records import Candidate, SensitivityTable
from onnxmp.report_html import report_html

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = REPO_ROOT / "models" / "digits_cnn.onnx"
CALIB = REPO_ROOT / "models" / "digits_calib.npz"
URL = re.compile(r"https?://[^\s\"'<>)]+")
XMLNS = re.compile(r'xmlns(?::\w+)?="(https?://[^"]+)"')


def _prepared():
    model, profile, calib = inputs.load_inputs(MODEL, "npu", CALIB)
    return steps.prepare(model, profile, calib)


def _decision(result: run_records.Result, **changes) -> run_records.Decision:
    decision = run_records.Decision(
        result.plan, result.point, result.curve, result.selection, result.sensitivity, result.timings
    )
    return replace(decision, **changes)


def _page(prepared, result: run_records.Result) -> str:
    return report_html(prepared, _decision(result))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A mixed-precision run at 30 % of the W8A16 BOPs, and its prepared inputs."""
    out = tmp_path_factory.mktemp("mixed")
    result = pipeline.quantize(MODEL, profile="npu", calib=CALIB, output_dir=out, target_bops=0.3)
    return _prepared(), result


def test_page_is_self_contained(mixed):
    prepared, result = mixed
    page = _page(prepared, result)
    assert page.count("<svg") >= 2
    for group in prepared.analysis.groups:
        assert f"<td>{group.id}</td>" in page
    namespaces = set(XMLNS.findall(page))
    assert set(URL.findall(page)) <= namespaces <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert "<script" not in page
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page


def test_page_is_deterministic(mixed):
    prepared, result = mixed
    assert _page(prepared, result) == _page(prepared, result)


def test_homogeneous_baselines_from_the_table(mixed):
    # W8A16 everywhere is every group's highest candidate: the curve's first point.
    # Relative BOPs by hand: W8A8 = 8*8/(8*16) = 0.5, W4A8 = 4*8/(8*16) = 0.25.
    prepared, result = mixed
    page = _page(prepared, result)
    first = result.curve[0].predicted_sqnr_db
    assert f"<tr><td>W8A16</td><td>1.0000</td><td>{first:.2f}</td></tr>" in page
    assert "<tr><td>W8A8</td><td>0.5000</td>" in page
    assert "<tr><td>W4A8</td><td>0.2500</td>" in page


def test_plan_table_shares_of_macs(mixed):
    # branch_a/conv holds branch_a/conv + branch_b/conv + residual/add: MACs of the two convs.
    prepared, result = mixed
    page = _page(prepared, result)
    group = prepared.analysis.group("branch_a/conv")
    share = sum(prepared.macs.get(op, 0) for op in group.ops) / sum(prepared.macs.values())
    row = f"<tr><td>branch_a/conv</td><td>{', '.join(group.ops)}</td><td>{result.plan['branch_a/conv']}</td><td>{100 * share:.1f} %</td>"
    assert row in page


def test_infinite_sqnr_and_accuracy_are_drawn(mixed):
    # +inf dB (a group that changes nothing) cannot be placed on an axis; accuracy gets its own.
    prepared, result = mixed
    concat = Candidate.parse("A16")
    table = SensitivityTable({**result.sensitivity.sqnr_db, ("concat", concat): math.inf})
    curve = tuple(replace(p, accuracy=90.0 - i) for i, p in enumerate(result.curve))
    point = curve[result.selection.index]
    page = report_html(prepared, _decision(result, point=point, curve=curve, table=table))
    assert page.count("<svg") == 2
    assert f"<tr><td>concat</td><td>concat</td><td>{concat}</td><td>0.0 %</td><td>inf</td></tr>" in page
    assert f"<tr><td>accuracy</td><td>{point.accuracy:.4f}</td></tr>" in page


def test_homogeneous_run_has_one_plot(tmp_path):
    result = pipeline.quantize(MODEL, profile="npu", calib=CALIB, output_dir=tmp_path, bits="W8A8")
    page = _page(_prepared(), result)
    assert result.sensitivity is None and result.selection is None
    assert page.count("<svg") == 1
    assert "homogeneous (no search)" in page
    assert "no phase 1" in page


def _chromium() -> str | None:
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def test_chromium_renders_the_page(mixed, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (apt-get install -y chromium); CI installs it")
    prepared, result = mixed
    page = tmp_path / "report.html"
    page.write_text(_page(prepared, result), encoding="utf-8")
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    # the page has no scripts: any console message (error, warning, blocked load) is a bug
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 50
    assert (pixels.min(axis=1) < 250).mean() > 0.02
    # the plots, not just the text: matplotlib's tab:blue (31, 119, 180) curve and bars
    assert (np.abs(pixels.astype(int) - (31, 119, 180)).max(axis=1) < 8).sum() > 2000
