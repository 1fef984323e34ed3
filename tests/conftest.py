"""Fixtures: each builder of tests/builders.py as a fixture, and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests import builders

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def shared_dir() -> Path:
    """`../shared/data` next to the repository; the test is skipped when it is absent."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"{path} not found (shared models and images)")
    return path


@pytest.fixture
def conv_relu() -> onnx.ModelProto:
    return builders.conv_relu()


@pytest.fixture
def conv_bn() -> onnx.ModelProto:
    return builders.conv_bn()


@pytest.fixture
def gemm_bn() -> onnx.ModelProto:
    return builders.gemm_bn()


@pytest.fixture
def conv_bn_shared() -> onnx.ModelProto:
    return builders.conv_bn_shared()


@pytest.fixture
def residual_add() -> onnx.ModelProto:
    return builders.residual_add()


@pytest.fixture
def concat_branches() -> onnx.ModelProto:
    return builders.concat_branches()


@pytest.fixture
def flatten_gemm() -> onnx.ModelProto:
    return builders.flatten_gemm()


@pytest.fixture
def shared_input_two_convs() -> onnx.ModelProto:
    return builders.shared_input_two_convs()


@pytest.fixture
def depthwise() -> onnx.ModelProto:
    return builders.depthwise()


@pytest.fixture
def matmul_act_act() -> onnx.ModelProto:
    return builders.matmul_act_act()


@pytest.fixture
def constant_weight_conv() -> onnx.ModelProto:
    return builders.constant_weight_conv()


@pytest.fixture
def pad_shape_chain() -> onnx.ModelProto:
    return builders.pad_shape_chain()


@pytest.fixture
def float_fallbacks() -> onnx.ModelProto:
    return builders.float_fallbacks()


@pytest.fixture(scope="session")
def digits_adarounded(tmp_path_factory):
    """The shipped digits CNN on npu, calibrated and AdaRounded as a search rounds it (on the
    float network's inputs): read-only records several AdaRound test modules share."""
    from onnxmp import calib_data, steps
    from onnxmp.hw_profile import WeightRounding, load_profile
    from onnxmp.run_records import Settings

    models = Path(__file__).resolve().parents[1] / "models"
    model = onnx.load(str(models / "digits_cnn.onnx"))
    calib = calib_data.load_arrays(models / "digits_calib.npz", model)
    prepared = steps.prepare(model, load_profile("npu"), calib)
    settings = Settings(weight_rounding=WeightRounding.ADAROUND)
    calibrated = steps.calibrate_ranges(prepared, calib, settings)
    return steps.adaround(calibrated, settings, tmp_path_factory.mktemp("adaround"))
