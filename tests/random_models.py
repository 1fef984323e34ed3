"""Random small models for the fuzz suite: DAGs of supported and unsupported ops.

A model is drawn as a list of layers over tensors that all keep one shape, [B, C, 4, 4]
(image-like) or [B, F] (vector-like), so any layer may read any earlier tensor: the graph
is a random DAG. B is symbolic ("N"), 1, or 2 (a static batch other than 1). Ops:

    conv1x1 / conv3x3 (pads 1)    gemm (transB) / matmul      quantized by the profiles
    add / mul (two tensors)       concat + 1x1 conv back to C  quantized
    relu / maxpool 3x3 s1 p1      data movement (passthrough)
    sigmoid / tanh / softmax / leaky_relu / erf               left in float

Every graph output is the last tensor plus, sometimes, one earlier tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

IMAGE_OPS = ("conv1x1", "conv3x3", "add", "mul", "concat", "relu", "maxpool", "sigmoid", "tanh", "softmax", "leaky_relu", "erf")
VECTOR_OPS = ("gemm", "matmul", "add", "mul", "relu", "sigmoid", "tanh", "softmax", "erf")
BATCHES = ("N", 1, 2)


@dataclass(frozen=True)
class Layer:
    op: str
    first: int  # index of the tensor it reads (0 is the graph input)
    second: int  # a second tensor for add/mul/concat


@dataclass(frozen=True)
class RandomModel:
    image: bool
    batch: str | int
    channels: int
    layers: tuple[Layer, ...]
    extra_output: int | None
    seed: int


@st.composite
def random_models(draw) -> RandomModel:
    image = draw(st.booleans())
    ops = IMAGE_OPS if image else VECTOR_OPS
    count = draw(st.integers(1, 6))
    layers = []
    for k in range(count):
        layers.append(Layer(draw(st.sampled_from(ops)), draw(st.integers(0, k)), draw(st.integers(0, k))))
    extra = draw(st.one_of(st.none(), st.integers(0, count - 1)))
    return RandomModel(image, draw(st.sampled_from(BATCHES)), draw(st.integers(1, 4)), tuple(layers), extra, draw(st.integers(0, 2**16)))


def build(spec: RandomModel) -> onnx.ModelProto:
    """The ONNX model of `spec` (opset 17), weights from a generator seeded by `spec.seed`."""
    rng = np.random.default_rng(spec.seed)
    c = spec.channels
    shape = [spec.batch, c, 4, 4] if spec.image else [spec.batch, c * 4]
    nodes, inits, tensors = [], [], ["x"]
    for k, layer in enumerate(spec.layers):
        out = f"t{k + 1}"
        nodes.extend(_layer(layer, tensors, out, c, spec.image, rng, inits))
        tensors.append(out)
    outputs = [tensors[-1]] + ([tensors[spec.extra_output]] if spec.extra_output is not None and tensors[spec.extra_output] != tensors[-1] else [])
    graph = helper.make_graph(
        nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o in outputs], initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _weight(rng, inits, name, *shape):
    inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name))
    return name


def _layer(layer: Layer, tensors, out, c, image, rng, inits) -> list[onnx.NodeProto]:
    a, b, name, op = tensors[layer.first], tensors[layer.second], out.replace("t", "n"), layer.op
    width = c * 4
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "erf": "Erf", "leaky_relu": "LeakyRelu"}
    if op in simple:
        return [helper.make_node(simple[op], [a], [out], name=name)]
    if op == "softmax":
        return [helper.make_node("Softmax", [a], [out], name=name, axis=1)]
    if op in ("add", "mul"):
        return [helper.make_node(op.capitalize(), [a, b], [out], name=name)]
    if op == "maxpool":
        return [helper.make_node("MaxPool", [a], [out], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    if op in ("conv1x1", "conv3x3"):
        k = 1 if op == "conv1x1" else 3
        w = _weight(rng, inits, f"{name}_w", c, c, k, k)
        return [helper.make_node("Conv", [a, w], [out], name=name, pads=[k // 2] * 4)]
    if op == "concat":
        w = _weight(rng, inits, f"{name}_w", c, 2 * c, 1, 1)
        return [helper.make_node("Concat", [a, b], [f"{out}_cat"], name=f"{name}_cat", axis=1),
                helper.make_node("Conv", [f"{out}_cat", w], [out], name=name)]
    if op == "gemm":
        w = _weight(rng, inits, f"{name}_w", width, width)
        return [helper.make_node("Gemm", [a, w], [out], name=name, transB=1)]
    w = _weight(rng, inits, f"{name}_w", width, width)
    return [helper.make_node("MatMul", [a, w], [out], name=name)]


def calibration(spec: RandomModel, samples: int) -> np.ndarray:
    c = spec.channels
    shape = (samples, c, 4, 4) if spec.image else (samples, c * 4)
    return np.random.default_rng(spec.seed + 1).standard_normal(shape).astype(np.float32)
