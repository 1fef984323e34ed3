"""strict: bounded YAML and unknown keys with the closest valid name."""

from __future__ import annotations

import pytest

from onnxmp import strict
from onnxmp.errors import ProfileError


def test_closest_ignores_case_and_gives_up_on_strangers():
    assert strict.closest("RELU", ["Relu", "Selu"]) == "Relu"
    assert strict.closest("activatons", ["activations", "weights", "bias"]) == "activations"
    assert strict.closest("qqqq", ["activations", "weights", "bias"]) is None


def test_check_keys_names_the_first_unknown_key_in_sorted_order():
    with pytest.raises(ProfileError) as info:
        strict.check_keys({"weights": 1, "zeta": 2, "alpha": 3}, {"weights", "bias"}, "f.yaml: schemes.", ProfileError)
    assert str(info.value) == "f.yaml: schemes.alpha: unknown key (allowed: bias, weights)"


def test_check_keys_accepts_known_keys():
    strict.check_keys({"weights": 1}, {"weights", "bias"}, "", ProfileError)


def test_shared_aliases_count_once_per_use():
    # a list of 3 aliases to a 3-element list: 1 + 3 * (1 + 3) = 13 nodes, under any limit
    assert strict.load_yaml("a: &x [1, 2, 3]\nb: [*x, *x, *x]\n", "f", ProfileError) == {
        "a": [1, 2, 3], "b": [[1, 2, 3]] * 3,
    }


def test_limit_is_on_the_expanded_size(monkeypatch):
    text = "a: &x [1, 2, 3]\nb: [*x, *x, *x]\n"
    # root mapping 1 + key a 1 + list 4 + key b 1 + list 1 + 3 * 4 = 20 nodes
    monkeypatch.setattr(strict, "MAX_YAML_NODES", 20)
    assert strict.load_yaml(text, "f", ProfileError)["b"][2] == [1, 2, 3]
    monkeypatch.setattr(strict, "MAX_YAML_NODES", 19)
    with pytest.raises(ProfileError, match="^f: the YAML expands to more than 19 nodes"):
        strict.load_yaml(text, "f", ProfileError)


def test_a_recursive_alias_is_refused():
    with pytest.raises(ProfileError) as info:
        strict.load_yaml("a: &x [1, *x]\n", "f.yaml", ProfileError)
    assert str(info.value) == "f.yaml: a YAML alias refers to a node that contains it"


def test_deep_nesting_is_a_one_line_error():
    with pytest.raises(ProfileError) as info:
        strict.load_yaml("[" * 5000 + "]" * 5000, "f.yaml", ProfileError)
    assert str(info.value).startswith("f.yaml: not valid YAML: ")
    assert "\n" not in str(info.value)


def test_an_oversized_file_is_refused_unread():
    with pytest.raises(ProfileError, match=r"^f: 1048577 characters, more than a profile can need"):
        strict.load_yaml("#" * (strict.MAX_YAML_BYTES + 1), "f", ProfileError)


def test_an_empty_document_is_none():
    assert strict.load_yaml("# nothing\n", "f", ProfileError) is None


def test_a_key_given_twice_is_refused_not_silently_overwritten():
    with pytest.raises(ProfileError) as info:
        strict.load_yaml("kernels: [W8A8]\nname: a\nkernels: [W4A8]\n", "f.yaml", ProfileError)
    assert str(info.value) == "f.yaml: kernels: key given twice (line 3)"
