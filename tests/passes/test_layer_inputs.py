"""Weights as matrices and their unfolded inputs reproduce each op's output exactly."""

from __future__ import annotations

import numpy as np
import pytest

from onnxmp import graph as graph_index
from onnxmp.passes.layer_inputs import (
    from_matrices,
    layout_of,
    to_matrices,
    unfold,
    why_not_linear,
)
from tests import builders, oracles


def _outputs_as_rows(model, weight: str, feeds, out: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows @ W^T from the unfolded input, the op's own output) per (sample, position, channel)."""
    index = builders.canonical(model).graph
    layout = layout_of(index, weight)
    values = oracles.run(oracles.with_outputs(model, [layout.input, out]), feeds)
    rows = unfold(values[layout.input], layout, 10**6, np.random.default_rng(0))  # every position
    matrices = to_matrices(index.constant(weight), layout)
    product = np.einsum("mgk,gok->mgo", rows.astype(np.float64), matrices.astype(np.float64))
    got = values[out]
    n, channels = got.shape[0], got.shape[1]
    expected = got.reshape(n, channels, -1).transpose(0, 2, 1) if got.ndim > 2 else got
    return product.reshape(expected.shape), expected


@pytest.mark.parametrize(
    ("stride", "pad", "dilation", "group"), [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1), (2, 0, 2, 2), (3, 1, 1, 1)]
)
def test_conv_rows_reproduce_conv(stride: int, pad: int, dilation: int, group: int) -> None:
    model = builders.conv_geometry(stride=stride, pad=pad, dilation=dilation, group=group)
    got, expected = _outputs_as_rows(model, "w", builders.feeds_for(model), "y")
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_depthwise_rows_reproduce_conv() -> None:
    model = builders.depthwise()
    got, expected = _outputs_as_rows(model, "w_dw", builders.feeds_for(model), "d")
    np.testing.assert_allclose(got + builders.canonical(model).graph.constant("b_dw"), expected, atol=1e-4)


@pytest.mark.parametrize(
    ("stride", "pad", "dilation", "group", "output_padding"),
    [(2, 0, 1, 1, 0), (2, 1, 1, 2, 1), (1, 1, 2, 1, 0), (3, 2, 2, 2, 2)],
)
def test_conv_transpose_rows_reproduce_conv_transpose(stride, pad, dilation, group, output_padding) -> None:
    model = builders.conv_transpose_geometry(
        stride=stride, pad=pad, dilation=dilation, group=group, output_padding=output_padding
    )
    got, expected = _outputs_as_rows(model, "w", builders.feeds_for(model), "y")
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_conv1d_gemm_and_matmul_rows_reproduce_outputs() -> None:
    model = builders.conv1d()
    got, expected = _outputs_as_rows(model, "w", builders.feeds_for(model), "y")
    np.testing.assert_allclose(got, expected, atol=1e-4)
    model = builders.gemm_matmul()
    for weight, out in (("w_g", "h"), ("w_m", "y")):
        got, expected = _outputs_as_rows(model, weight, builders.feeds_for(model, batch=3), out)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_matrices_round_trip() -> None:
    model = builders.conv_transpose_geometry(stride=2, pad=1, dilation=1, group=2, output_padding=1)
    index = builders.canonical(model).graph
    w = index.constant("w")
    layout = layout_of(index, "w")
    assert to_matrices(w, layout).shape == (2, 3, 2 * 3 * 3)
    np.testing.assert_array_equal(from_matrices(to_matrices(w, layout), layout, w.shape), w)


def test_why_not_linear_names_the_reason() -> None:
    index = builders.canonical(builders.batched_matmul()).graph
    assert why_not_linear(index, "w") == "MatMul mm has a 3-D weight"
    shared = graph_index.build(builders.shared_weight_conv_bn())  # not canonical: BN folding unshares w
    assert why_not_linear(shared, "w") == "2 nodes read it"
    assert why_not_linear(shared, "gamma1") == "BatchNormalization bn1 is not Conv, ConvTranspose, Gemm or MatMul"
