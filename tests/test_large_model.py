"""large_model: the byte thresholds of `SizeLimits` decide which path a model takes.

The two-matmul model of test_external_data covers the paths end to end; here the thresholds
themselves, at their boundaries, on conv_relu: w is float32 [4, 3, 3, 3] (108 values, 432
bytes), b float32 [4] (16 bytes) — 448 bytes of initializers.
"""

from __future__ import annotations

from onnxmp import large_model
from onnxmp.large_model import SizeLimits


def test_large_from_the_byte_count_of_all_initializers(conv_relu):
    assert [large_model.nbytes(t) for t in conv_relu.graph.initializer] == [432, 16]
    assert large_model.is_large(conv_relu, limits=SizeLimits(large_weights=448))
    assert not large_model.is_large(conv_relu, limits=SizeLimits(large_weights=449))
    assert not large_model.is_large(conv_relu)  # the real threshold: 256 MiB


def test_weights_of_at_least_weight_min_bytes_and_never_small_vectors(conv_relu):
    names = lambda limits: [t.name for t in large_model.weights(conv_relu, limits=limits)]  # noqa: E731
    assert names(SizeLimits(weight_min_bytes=432)) == ["w"]
    assert names(SizeLimits(weight_min_bytes=433)) == []
    assert names(SizeLimits(weight_min_bytes=0)) == ["w"]  # b: rank 1 under 64 KiB stays inline


def test_large_weights_are_none_unless_the_model_is_large(conv_relu):
    small = SizeLimits(weight_min_bytes=0)
    assert large_model.large_weights(conv_relu, limits=small) == []
    large = SizeLimits(large_weights=0, weight_min_bytes=0)
    assert [t.name for t in large_model.large_weights(conv_relu, limits=large)] == ["w"]


def test_over_the_protobuf_limit_at_its_serialized_size(conv_relu):
    size = conv_relu.ByteSize()  # no weight of 1 KiB: the estimate is the serialization itself
    assert large_model.over_protobuf_limit(conv_relu, limits=SizeLimits(protobuf=size))
    assert not large_model.over_protobuf_limit(conv_relu, limits=SizeLimits(protobuf=size + 1))
