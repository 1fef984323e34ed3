"""Reference checks the tests compare against: ONNX Runtime outputs and hand formulas.

The formulas here are written independently of onnxmp (plain numpy and arithmetic), so a
test that compares onnxmp to them can fail when onnxmp is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxmp import runtime


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every graph output of `model` on `feeds`, by name, through `runtime.session`."""
    sess = runtime.session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


def with_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs `tensors` (dtype/shape from value_info if known)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    existing = {o.name for o in result.graph.output}
    infos = {v.name: v for v in (*result.graph.value_info, *result.graph.input)}
    for name in tensors:
        if name in existing:
            continue
        info = infos.get(name)
        result.graph.output.append(info if info is not None else onnx.helper.make_empty_tensor_value_info(name))
        existing.add(name)
    return result


def assert_same_outputs(
    model_a: onnx.ModelProto, model_b: onnx.ModelProto, feeds: Mapping[str, np.ndarray], atol: float
) -> None:
    """Both models have the same output names, and each output agrees within `atol`."""
    out_a, out_b = run(model_a, feeds), run(model_b, feeds)
    assert sorted(out_a) == sorted(out_b)
    for name, expected in out_a.items():
        assert out_b[name].shape == expected.shape, name
        np.testing.assert_allclose(out_b[name], expected, rtol=0, atol=atol, err_msg=name)


def conv_output_size(size: int, kernel: int, *, stride: int, pad: int, dilation: int) -> int:
    """floor((size + 2*pad - dilation*(kernel-1) - 1) / stride) + 1 (ONNX Conv, NOTSET padding)."""
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def sqnr_db(reference: np.ndarray, approximate: np.ndarray) -> float:
    """10*log10(sum(ref^2) / sum((ref - approx)^2)) in float64."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((ref - np.asarray(approximate, np.float64)) ** 2))
    return 10 * math.log10(float(np.sum(ref**2)) / noise)


def fold_bn(w: np.ndarray, b: np.ndarray, bn: Mapping[str, np.ndarray], *, axis: int, eps: float):
    """Folded (weight, bias) of producer(w, b) followed by BatchNormalization `bn`."""
    factor = bn["gamma"] / np.sqrt(bn["var"] + eps)
    shape = [1] * w.ndim
    shape[axis] = -1
    return w * factor.reshape(shape), (b - bn["mean"]) * factor + bn["beta"]
