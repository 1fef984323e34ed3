"""Every model onnxmp writes loads and runs in a plain `onnxruntime.InferenceSession(path)`.

Why: users deploy with ONNX Runtime's default options (all graph optimizations, its QDQ
rewrites included), while onnxmp's own sessions switch those rewrites off. So this is the one
place outside onnxmp.runtime that constructs InferenceSession itself (ruff per-file ignore).
Each shipped profile is run at every homogeneous candidate and at two mixed budgets, on the
digits CNN (default suite) and on EfficientNet-Lite0 from ../shared (slow); each row prints the
SQNR against the float model of the simulation (what onnxmp measured) and of the default
session (what the user gets), and the default session against the simulation.

Deployed outputs may differ from simulated ones: ONNX Runtime 1.32 (not 1.20) quantizes a float
Conv/Gemm bias to int32 at s_x * s_w itself (WeightBiasQuantization) and runs W8A8 as
integer kernels. What must hold: the model loads, runs, and what the user gets is within
DEPLOY_LOSS_DB of what onnxmp measured (never far worse).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxmp
from onnxmp import calib_data, hw_profile, model_io, runtime
from onnxmp.calib_data import Preprocess
from tests import builders

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "models" / "digits_cnn.onnx"
# shipped profile -> two mixed budgets (relative BOPs) between its cheapest and dearest kernel;
# research at 0.25 is issue 15's case (EfficientNet-Lite0: W4A4, W4A6, W6A6, W8A6 and A16 groups)
BUDGETS = {
    "npu": (0.375, 0.3), "npu-transformer": (0.375, 0.3), "research": (0.375, 0.25), "w4a8-w8a16": (0.4, 0.3),
    "systolic-amed": (0.375, 0.3), "ort-cpu": (0.75, 0.6),
}
CASES = [(p, str(k)) for p in BUDGETS for k in hw_profile.load_profile(p).kernels]
CASES += [(p, f"bops{b}") for p, budgets in BUDGETS.items() for b in budgets]
DEPLOY_LOSS_DB = 3.0


def sqnr_db(reference: np.ndarray, approximate: np.ndarray) -> float:
    """10*log10(sum(ref^2) / sum((ref - approx)^2)) in float64; +inf when they are equal."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((ref - np.asarray(approximate, np.float64)) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(ref**2)) / noise)


def test_every_shipped_profile_is_covered():
    assert sorted(BUDGETS) == sorted(hw_profile.builtin_names())


class Runs:
    """onnxmp.quantize per (profile, configuration), made on first use; the second budget of a
    profile resumes phase 1 from the first one's store, so each profile runs phase 1 once."""

    def __init__(self, model, calib, root: Path, feeds: dict[str, np.ndarray]):
        self.model, self.calib, self.root, self.feeds = model, calib, root, feeds
        self.results: dict[tuple[str, str], onnxmp.Result] = {}
        self.stores: dict[str, Path] = {}
        self.float_outputs = runtime.session(model).run(None, feeds)

    def result(self, profile: str, config: str) -> onnxmp.Result:
        if (profile, config) not in self.results:
            out = self.root / f"{profile}-{config}"
            out.mkdir()
            if config.startswith("W"):
                result = onnxmp.quantize(self.model, profile=profile, calib=self.calib, output_dir=out, bits=config)
            else:
                if profile in self.stores:
                    shutil.copy(self.stores[profile], out / "phase1.jsonl")
                budget = float(config.removeprefix("bops"))
                result = onnxmp.quantize(self.model, profile=profile, calib=self.calib, output_dir=out, target_bops=budget)
                self.stores[profile] = out / "phase1.jsonl"
            self.results[(profile, config)] = result
        return self.results[(profile, config)]


def check_deploys(runs: Runs, profile: str, config: str, label: str) -> float:
    """Load and run the written model as a user would; return its SQNR against the float model."""
    path = str(runs.result(profile, config).paths["model"])
    try:
        deployed = ort.InferenceSession(path).run(None, runs.feeds)  # default options, as a user would
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        pytest.fail(f"{label} {profile} {config}: ONNX Runtime {ort.__version__} cannot load or run it: {e}")
    simulated = runtime.session(path).run(None, runs.feeds)
    for ref, sim, dep in zip(runs.float_outputs, simulated, deployed, strict=True):
        assert dep.shape == sim.shape == ref.shape
        assert np.isfinite(dep).all()
        sim_db, dep_db, drift_db = sqnr_db(ref, sim), sqnr_db(ref, dep), sqnr_db(sim, dep)
        print(f"{label} | {profile} | {config} | loads | simulated {sim_db:.2f} dB | deployed {dep_db:.2f} dB "
              f"| deployed vs simulated {drift_db:.1f} dB | onnxruntime {ort.__version__}")
        assert dep_db >= sim_db - DEPLOY_LOSS_DB
    return dep_db


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Runs:
    with np.load(REPO / "models" / "digits_eval.npz") as data:
        feeds = {"image": data["image"][:200]}
    return Runs(model_io.load(DIGITS), REPO / "models" / "digits_calib.npz", tmp_path_factory.mktemp("digits"), feeds)


@pytest.mark.parametrize(("profile", "config"), CASES)
def test_digits_cnn_deploys(digits, profile, config):
    check_deploys(digits, profile, config, "digits CNN")


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory) -> Runs:
    shared = REPO.parent / "shared" / "data"
    if not shared.is_dir():
        pytest.skip(f"{shared} not found (shared models and images)")
    model = model_io.load(shared / "models" / "efficientnet_lite0.onnx")
    calib = calib_data.load_images(shared / "imagenet" / "samples", model, Preprocess.TF, limit=32)
    feeds = {name: array[:16] for name, array in calib.arrays.items()}
    return Runs(model, calib, tmp_path_factory.mktemp("efficientnet"), feeds)


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize(("profile", "config"), CASES)
def test_efficientnet_lite0_deploys(efficientnet, profile, config):
    check_deploys(efficientnet, profile, config, "EfficientNet-Lite0")


def _clip_between_convs() -> onnx.ModelProto:
    #   x[N,3,6,6] ─ clip_in(0, 1) ─► xc ─ c1(w1[4,3,3,3], b1, pads 1) ─► a ─ relu6(0, 6) ─► r ─ c2(w2[4,4,3,3], b2, pads 1) ─► y
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(builders.HEADER + """
        g (float[N,3,6,6] x) => (float[N,4,6,6] y) {
            [clip_in] xc = Clip (x, zero, one)
            [c1] a = Conv <pads = [1, 1, 1, 1]> (xc, w1, b1)
            [relu6] r = Clip (a, zero, six)
            [c2] y = Conv <pads = [1, 1, 1, 1]> (r, w2, b2)
        }""")
    weights = {"w1": rng.standard_normal((4, 3, 3, 3)), "b1": rng.standard_normal(4), "w2": rng.standard_normal((4, 4, 3, 3)) * 0.3,
               "b2": rng.standard_normal(4), "zero": np.array(0.0), "one": np.array(1.0), "six": np.array(6.0)}
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items())
    return model


@pytest.mark.parametrize("bits", ["W4A4", "W6A6", "W8A8", "W6A4", "W8A16"])
def test_conv_clip_conv_deploys(tmp_path, bits):
    # issue 15 in small: a 4-bit activation after Conv -> Clip, and a Clip on the graph input
    rng = np.random.default_rng(1)
    feeds = {"x": rng.uniform(-0.5, 1.5, (16, 3, 6, 6)).astype(np.float32)}
    model = _clip_between_convs()
    runs = Runs(model, feeds, tmp_path, feeds)
    deployed_db = check_deploys(runs, "research", bits, "Conv-Clip-Conv")
    # the run measured the same: its calibration data are these feeds
    result = runs.result("research", bits)
    assert result.point.deployed_sqnr_db == pytest.approx(deployed_db, abs=0.01)
    plan = json.loads(result.paths["plan"].read_text())
    assert plan["deployed_sqnr_db"] == pytest.approx(deployed_db, abs=0.01)
    assert plan["onnxruntime"] == ort.__version__
    report = result.paths["report"].read_text()
    assert f"- deployed SQNR: {result.point.deployed_sqnr_db:.2f} dB in ONNX Runtime {ort.__version__}" in report
