"""The resumable results store: run keys, append/entries round trip, torn lines."""

from __future__ import annotations

import json
import re

import pytest

from onnxmp.store import ResultStore, run_key

PARTS = {"model": "ab12", "profile": "cd34", "calibration": "ef56", "batch_size": "32", "runtime": "1.32.0"}


def test_run_key_is_a_sha256_hex_digest():
    key = run_key(**PARTS)
    assert re.fullmatch("[0-9a-f]{64}", key)


def test_run_key_does_not_depend_on_the_order_of_parts():
    reordered = dict(reversed(list(PARTS.items())))
    assert list(reordered) != list(PARTS)
    assert run_key(**reordered) == run_key(**PARTS)


def test_run_key_is_deterministic():
    assert run_key(**PARTS) == run_key(**dict(PARTS))


@pytest.mark.parametrize("name", sorted(PARTS))
def test_run_key_changes_with_every_part(name):
    base = run_key(**PARTS)
    assert run_key(**{**PARTS, name: PARTS[name] + "0"}) != base  # another value
    assert run_key(**{k: v for k, v in PARTS.items() if k != name}) != base  # part missing
    renamed = {(k + "_" if k == name else k): v for k, v in PARTS.items()}
    assert run_key(**renamed) != base  # same value under another name


def test_run_key_changes_with_an_added_part():
    assert run_key(**PARTS, range_method="mse") != run_key(**PARTS)


def test_run_key_values_are_not_swapped_between_parts():
    assert run_key(a="1", b="2") != run_key(a="2", b="1")


def test_run_key_parts_cannot_run_into_each_other():
    # a separator inside a value must not read as the start of another part
    assert run_key(a="1|b=2") != run_key(a="1", b="2")
    assert run_key(a="1,b=2") != run_key(a="1", b="2")
    assert run_key(a='1", "b": "2') != run_key(a="1", b="2")


def test_append_then_entries_round_trip(tmp_path):
    store = ResultStore(tmp_path / "sub" / "phase1.jsonl", "k1")
    assert list(store.entries("phase1")) == []  # no file yet
    records = [
        {"group": "conv1", "candidate": "W8A8", "signal": [1.5], "noise": [0.25]},
        {"group": "conv1", "candidate": "W4A8", "signal": [1.5], "noise": [2.0]},
        {"group": "fc", "candidate": "W8A16", "signal": [3.0, 4.0], "noise": [0.0, 1e-300]},
    ]
    for record in records:
        store.append("phase1", record)
    store.append("other", {"x": 1})
    assert list(store.entries("phase1")) == [{"key": "k1", "kind": "phase1", **r} for r in records]
    assert list(store.entries("other")) == [{"key": "k1", "kind": "other", "x": 1}]
    assert list(store.entries("missing")) == []
    # one JSON object per line, nothing else
    lines = store.path.read_text().splitlines()
    assert len(lines) == 4
    assert [json.loads(line)["kind"] for line in lines] == ["phase1", "phase1", "phase1", "other"]


def test_entries_skip_other_keys(tmp_path):
    path = tmp_path / "phase1.jsonl"
    mine, theirs = ResultStore(path, "mine"), ResultStore(path, "theirs")
    mine.append("phase1", {"i": 1})
    theirs.append("phase1", {"i": 2})
    mine.append("phase1", {"i": 3})
    assert [e["i"] for e in mine.entries("phase1")] == [1, 3]
    assert [e["i"] for e in theirs.entries("phase1")] == [2]


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "phase1.jsonl"
    store = ResultStore(path, "k")
    store.append("phase1", {"i": 1})
    store.append("phase1", {"i": 2})
    text = path.read_text()
    path.write_text(text[: len(text) - 10])  # killed in the middle of the second line
    assert [e["i"] for e in store.entries("phase1")] == [1]


def test_append_after_a_torn_line_starts_a_new_line(tmp_path):
    path = tmp_path / "phase1.jsonl"
    store = ResultStore(path, "k")
    store.append("phase1", {"i": 1})
    with open(path, "a") as f:
        f.write('{"key": "k", "kind": "phase1", "i": 2')  # torn: no closing brace, no newline
    store.append("phase1", {"i": 3})
    assert [e["i"] for e in store.entries("phase1")] == [1, 3]
    assert len(path.read_text().splitlines()) == 3


def test_lines_that_are_not_objects_are_skipped(tmp_path):
    path = tmp_path / "phase1.jsonl"
    path.write_text('[1, 2]\n"text"\n\nnot json\n{"key": "k", "kind": "phase1", "i": 7}\n')
    assert [e["i"] for e in ResultStore(path, "k").entries("phase1")] == [7]


def test_lines_that_are_not_utf8_are_skipped(tmp_path):
    path = tmp_path / "phase1.jsonl"
    store = ResultStore(path, "k")
    store.append("phase1", {"i": 1})
    with open(path, "ab") as f:
        f.write(b'{"key": "k", "kind": "phase1", "i": "\xff\xfe"}\n')  # a flipped byte inside a string
    store.append("phase1", {"i": 3})
    assert [e["i"] for e in store.entries("phase1")] == [1, 3]


def test_lines_nested_too_deep_for_json_are_skipped(tmp_path):
    path = tmp_path / "phase1.jsonl"
    path.write_text("[" * 100_000 + "\n" + '{"key": "k", "kind": "phase1", "i": 5}\n')
    assert [e["i"] for e in ResultStore(path, "k").entries("phase1")] == [5]

