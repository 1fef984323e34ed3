"""run_records: homogeneous plans on profiles whose ops have activation-only kernels."""

from __future__ import annotations

import pytest

from onnxmp import hw_profile
from onnxmp.errors import BudgetError
from onnxmp.passes.quantizer_groups import quantizer_groups
from onnxmp.records import Candidate
from onnxmp.run_records import homogeneous_plan
from tests import builders

A8, A16 = Candidate(None, 8), Candidate(None, 16)


def _analysis(profile: str):
    return quantizer_groups(builders.canonical(builders.attention_block()).graph, hw_profile.load_profile(profile))


def test_w8a8_keeps_a16_only_ops_at_a16():
    # LayerNorm, masked Softmax and Gelu have only A16 kernels on npu-transformer
    plan = homogeneous_plan(_analysis("npu-transformer"), Candidate(8, 8), hw_profile.load_profile("npu-transformer"))
    assert dict(plan) == {
        "q_mm": Candidate(8, 8), "qk": A8, "mask_add": A16, "pv": A8, "o_mm": Candidate(8, 8),
        "ln": A16, "ff_mm": Candidate(8, 8), "gelu/Gelu": A16, "out_mm": Candidate(8, 8),
    }


def test_a_kernel_the_profile_lacks_is_a_budget_error():
    with pytest.raises(BudgetError, match="W6A8 is not a kernel of profile npu"):
        homogeneous_plan(_analysis("npu"), Candidate(6, 8), hw_profile.load_profile("npu"))
