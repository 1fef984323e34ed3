"""Weight tensors as matrices, and their layers' inputs unfolded into rows.

Why: AdaRound minimizes a layer's output error ||(W~ - W) X||^2, which depends on the
calibration inputs X only through G = X X^T. Every supported op is a matrix product once
its input is unfolded (im2col): Conv (grouped, depthwise, dilated, strided, 1-D or 2-D),
ConvTranspose (the same gather on the zero-upsampled input), Gemm and MatMul with a
constant 2-D weight (`collect_grams` accumulates G from these rows).

Rule cases (`why_not_linear` says which weights stay at nearest rounding, and why):
1. The weight feeds exactly one node, as its weight operand (B of Gemm, the second MatMul
   input, input 1 of Conv/ConvTranspose).
2. Conv/ConvTranspose are 1-D or 2-D; ConvTranspose has no `output_shape` attribute.
3. MatMul weights are 2-D (batched weights stay per tensor and at nearest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxmp.graph import ATTR_GROUP, ATTR_TRANS_A, ATTR_TRANS_B, DataflowGraph, get_attribute

CONV_OPS = ("Conv", "ConvTranspose")


@dataclass(frozen=True, slots=True)
class LinearLayout:
    """How one weight acts as matrices [groups, out, K] on rows unfolded from `input`."""

    weight: str
    node: str
    op_type: str
    input: str
    shape: tuple[int, ...]  # the weight's shape (1-D convolutions as 2-D, kernel height 1)
    groups: int = 1
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    output_padding: tuple[int, int] = (0, 0)
    trans: bool = False  # Gemm transB=0 / MatMul: the weight is [K, out]
    trans_a: bool = False

    @property
    def kernel(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]


def why_not_linear(graph: DataflowGraph, weight: str) -> str | None:
    """Why `weight` cannot be AdaRounded as a matrix product, None when it can."""
    consumers = graph.consumers(weight)
    if len(consumers) != 1:
        return f"{len(consumers)} nodes read it"
    node = consumers[0]
    position = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}.get(node.op_type)
    if position is None:
        return f"{node.op_type} {node.name} is not Conv, ConvTranspose, Gemm or MatMul"
    if node.input[position] != weight or weight in node.input[:position]:
        return f"it is not the weight operand of {node.op_type} {node.name}"
    rank = len(graph.constant(weight).shape)
    if node.op_type in CONV_OPS and rank not in (3, 4):
        return f"{node.op_type} {node.name} is {rank - 2}-D (1-D and 2-D are supported)"
    if node.op_type == "ConvTranspose" and get_attribute(node, "output_shape") is not None:
        return f"ConvTranspose {node.name} sets output_shape"
    if node.op_type in ("Gemm", "MatMul") and rank != 2:
        return f"{node.op_type} {node.name} has a {rank}-D weight"
    return None


def layout_of(graph: DataflowGraph, weight: str) -> LinearLayout:
    """The layout of a weight for which `why_not_linear` returned None."""
    node = graph.consumers(weight)[0]
    shape = tuple(graph.constant(weight).shape)
    if node.op_type == "Gemm":
        trans_a = bool(get_attribute(node, ATTR_TRANS_A, 0))
        return LinearLayout(weight, node.name, node.op_type, node.input[0], shape,
                            trans=not get_attribute(node, ATTR_TRANS_B, 0), trans_a=trans_a)
    if node.op_type == "MatMul":
        return LinearLayout(weight, node.name, node.op_type, node.input[0], shape, trans=True)
    two_d = len(shape) == 4
    if not two_d:
        shape = (shape[0], shape[1], 1, shape[2])
    strides = _pair(_ints(node, "strides"), two_d)
    dilations = _pair(_ints(node, "dilations"), two_d)
    given = _ints(node, "pads") or [0] * (4 if two_d else 2)
    pads = (given[0], given[1], given[2], given[3]) if two_d else (0, given[0], 0, given[1])
    auto_pad = get_attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad.startswith("SAME") and node.op_type == "Conv":
        x_shape = tuple(graph.shapes.get(node.input[0], ()))
        pads = _same_pads(x_shape, shape, (strides, dilations), upper=auto_pad == "SAME_UPPER")
    group = get_attribute(node, ATTR_GROUP, 1)
    return LinearLayout(
        weight, node.name, node.op_type, node.input[0], shape, group if isinstance(group, int) else 1,
        strides, dilations, pads, _pair(_ints(node, "output_padding"), two_d, fill=0),
    )


def _ints(node: onnx.NodeProto, name: str) -> list[int]:
    value = get_attribute(node, name, None)
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else []


def _pair(values: Sequence[int] | None, two_d: bool, fill: int = 1) -> tuple[int, int]:
    if not values:
        return (fill, fill)
    return (int(values[0]), int(values[1])) if two_d else (fill, int(values[0]))


def _same_pads(
    x_shape: tuple[object, ...], w_shape: tuple[int, ...], steps: tuple[tuple[int, int], tuple[int, int]], *, upper: bool
) -> tuple[int, int, int, int]:
    dims = [d if isinstance(d, int) else 1 for d in x_shape[2:]]  # unknown sizes: SAME pads need them
    spatial = tuple(dims) if len(x_shape) == 4 else (1, *dims)
    begin, end = [], []
    for size, k, s, d in zip(spatial, w_shape[2:], *steps, strict=True):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if upper else large)
        end.append(large if upper else small)
    return (begin[0], begin[1], end[0], end[1])


def to_matrices(w: np.ndarray, layout: LinearLayout) -> np.ndarray:
    """The weight (or any array of its shape) as [groups, out, K]."""
    if layout.op_type in ("Gemm", "MatMul"):
        return np.asarray((w.T if layout.trans else w)[None])
    g = layout.groups
    if layout.op_type == "Conv":
        return np.asarray(w).reshape(g, layout.shape[0] // g, -1)
    c_in, c_out_g, kh, kw = layout.shape  # ConvTranspose: [C_in, C_out / g, kh, kw]
    blocks = np.asarray(w).reshape(g, c_in // g, c_out_g, kh, kw).transpose(0, 2, 1, 3, 4)
    return np.asarray(blocks).reshape(g, c_out_g, -1)


def from_matrices(m: np.ndarray, layout: LinearLayout, shape: Sequence[int]) -> np.ndarray:
    """Inverse of `to_matrices`, back to the weight's own `shape`."""
    if layout.op_type in ("Gemm", "MatMul"):
        return np.asarray(m[0].T if layout.trans else m[0])
    if layout.op_type == "Conv":
        return m.reshape(shape)
    c_in, c_out_g, kh, kw = layout.shape
    g = layout.groups
    blocks = np.asarray(m).reshape(g, c_out_g, c_in // g, kh, kw).transpose(0, 2, 1, 3, 4)
    return np.asarray(blocks).reshape(shape)


def unfold(x: np.ndarray, layout: LinearLayout, positions: int, rng: np.random.Generator) -> np.ndarray:
    """Rows [M, groups, K] of the layer input `x` (one batch): what each output sees.

    Convolutions keep at most `positions` output positions per sample, drawn by `rng`.
    """
    if layout.op_type in ("Gemm", "MatMul"):
        rows = x.T if layout.trans_a else x.reshape(-1, x.shape[-1])
        if x.ndim > 2 and rows.shape[0] > positions * x.shape[0]:  # tokens: subsample like positions
            rows = rows[np.sort(rng.choice(rows.shape[0], positions * x.shape[0], replace=False))]
        return rows[:, None, :]
    if x.ndim == 3:
        x = x[:, :, None, :]
    padded, offset, step, out_hw = _padded_input(x, layout)
    n, c = x.shape[:2]
    count = out_hw[0] * out_hw[1]
    take = min(positions, count)
    picked = np.stack([np.sort(rng.choice(count, take, replace=False)) for _ in range(n)]) if take < count \
        else np.broadcast_to(np.arange(count), (n, count))
    oh, ow = picked // out_hw[1], picked % out_hw[1]
    kh, kw = layout.kernel
    taps_h = offset[0] + layout.dilations[0] * (np.arange(kh) if step > 0 else np.arange(kh)[::-1])
    taps_w = offset[1] + layout.dilations[1] * (np.arange(kw) if step > 0 else np.arange(kw)[::-1])
    stride_h, stride_w = (layout.strides if step > 0 else (1, 1))
    ih = oh[:, :, None] * stride_h + taps_h  # [n, take, kh]
    iw = ow[:, :, None] * stride_w + taps_w
    cols = padded[np.arange(n)[:, None, None, None, None], np.arange(c)[None, None, :, None, None],
                  ih[:, :, None, :, None], iw[:, :, None, None, :]]  # [n, take, c, kh, kw]
    return np.asarray(cols).reshape(n * take, layout.groups, -1)


def _padded_input(
    x: np.ndarray, layout: LinearLayout
) -> tuple[np.ndarray, tuple[int, int], int, tuple[int, int]]:
    """(padded input, first tap offset, +1 conv / -1 transposed, output size).

    A ConvTranspose output (oh, ow) reads the zero-upsampled input at
    oh + pad + d * (k - 1 - kh): a stride-1 gather with the kernel flipped.
    """
    n, c, h, w = x.shape
    top, left, bottom, right = layout.pads
    (kh, kw), (dh, dw) = layout.kernel, layout.dilations
    if layout.op_type == "Conv":
        padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        out_h = (h + top + bottom - dh * (kh - 1) - 1) // layout.strides[0] + 1
        out_w = (w + left + right - dw * (kw - 1) - 1) // layout.strides[1] + 1
        return padded, (0, 0), 1, (out_h, out_w)
    (sh, sw), (oph, opw) = layout.strides, layout.output_padding
    out_h = sh * (h - 1) + oph + dh * (kh - 1) + 1 - top - bottom
    out_w = sw * (w - 1) + opw + dw * (kw - 1) + 1 - left - right
    lo_h, lo_w = dh * (kh - 1), dw * (kw - 1)
    padded = np.zeros((n, c, out_h + top + lo_h, out_w + left + lo_w), x.dtype)
    up_h, up_w = min(h, -(-(padded.shape[2] - lo_h) // sh)), min(w, -(-(padded.shape[3] - lo_w) // sw))
    padded[:, :, lo_h : lo_h + sh * (up_h - 1) + 1 : sh, lo_w : lo_w + sw * (up_w - 1) + 1 : sw] = x[:, :, :up_h, :up_w]
    return padded, (top, left), -1, (out_h, out_w)


def scale_array(scale: Sequence[float], axis: int | None, shape: Sequence[int]) -> np.ndarray:
    """A weight encoding's scales broadcast to the weight's shape."""
    view = [1] * len(shape)
    if axis is not None:
        view[axis] = -1
    return np.broadcast_to(np.asarray(scale, np.float32).reshape(view), tuple(shape))


