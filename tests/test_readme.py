"""The README quick start, extracted and run (as GraphSurgeon's tests/test_examples.py does)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def quick_start_commands() -> list[str]:
    """The lines of the first ```bash block under "## Quick start"."""
    text = README.read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no ```bash block under ## Quick start"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def _after_install(command: str) -> str:
    """`pip install ... && rest` -> `rest`."""
    install, rest = command.split(" && ", 1)
    assert install.startswith("pip install "), install
    return rest


def test_quick_start_has_exactly_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert all(c.startswith("pip install ") for c in commands)


def test_first_quick_start_command_runs(tmp_path):
    args = shlex.split(_after_install(quick_start_commands()[0]))
    assert args[:2] == ["onnxmp", "quantize"]
    out = args.index("-o")
    assert args[out + 1] == "out/"
    args[out + 1] = str(tmp_path / "out")
    result = subprocess.run(
        [sys.executable, "-m", "onnxmp.cli", *args[1:]], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # the files the README says the command writes
    for name in ("model.qdq.onnx", "plan.json", "pareto.csv", "sensitivity.json", "report.md", "phase1.jsonl"):
        assert (tmp_path / "out" / name).is_file(), name
    onnx.checker.check_model(onnx.load(str(tmp_path / "out" / "model.qdq.onnx")))
    bops = [line for line in result.stdout.splitlines() if line.startswith("relative BOPs")]
    assert len(bops) == 1 and float(bops[0].split()[-1]) <= 0.3  # "--target-bops 0.3"


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _after_install(quick_start_commands()[1])
    assert test_command.startswith("python -m pytest")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]
