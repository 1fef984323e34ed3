"""Rewrite the golden files of tests/golden/ (run by hand; review the diff before committing).

    python tests/golden/regenerate.py

Each golden file has one generating function here; tests/test_encodings.py calls the same
function into tmp_path and compares its output with the stored file, so the test and this
script can never disagree on how a file is made.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent
REPO = GOLDEN_DIR.parents[1]
CALIB_SEED = 0
CALIB_SAMPLES = 16


def conv_bn_w8a8_encodings(output_dir: Path) -> str:
    """encodings.json (AIMET 1.0.0) of builders.conv_bn() at W8A8 on the npu profile.

    Calibration: 16 samples of a standard normal (seed 0), shape [16, 3, 8, 8].
    """
    import onnxmp
    from tests import builders

    calib = np.random.default_rng(CALIB_SEED).standard_normal((CALIB_SAMPLES, 3, 8, 8)).astype(np.float32)
    result = onnxmp.quantize(
        builders.conv_bn(), profile="npu", calib={"x": calib}, output_dir=output_dir, bits="W8A8"
    )
    return result.paths["encodings"].read_text()


GOLDEN: dict[str, Callable[[Path], str]] = {
    "conv_bn_w8a8.encodings.json": conv_bn_w8a8_encodings,
}


def main() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    for name, generate in GOLDEN.items():
        with tempfile.TemporaryDirectory() as tmp:
            text = generate(Path(tmp))
        (GOLDEN_DIR / name).write_text(text)
        print(f"wrote {GOLDEN_DIR / name}")


if __name__ == "__main__":
    main()
