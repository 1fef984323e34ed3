"""Strict reading of the user's small structured files: bounded YAML, known keys only.

Why: a misspelled key (`granulrity`, `symetric`) that is silently ignored quietly changes
a run, so every mapping of a profile or an encodings file is checked against the keys the
format defines, and an unknown key is refused with the closest valid name. YAML aliases
let a 1 kB file stand for a billion-element document ("billion laughs"): PyYAML shares
aliased objects, so loading is cheap, but anything that walks the result (validation,
hashing, printing) is not; documents are refused before they are built when their fully
expanded size passes `MAX_YAML_NODES`.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping

import yaml

from onnxmp.errors import OnnxmpError

MAX_YAML_NODES = 100_000  # scalars + collections after alias expansion; a profile has ~100
MAX_YAML_BYTES = 1 << 20


def closest(name: object, allowed: Collection[str]) -> str | None:
    """The allowed name most like `name` (difflib, ratio >= 0.6, ignoring case), or None.

    >>> closest("granulrity", ["granularity", "symmetric"]), closest("xyz", ["symmetric"])
    ('granularity', None)
    """
    by_lower = {a.lower(): a for a in sorted(allowed, reverse=True)}  # case counts least
    matches = difflib.get_close_matches(str(name).lower(), sorted(by_lower), n=1)
    return by_lower[matches[0]] if matches else None


def unknown_key(key: object, allowed: Collection[str]) -> str:
    """The message tail for an unknown key: the closest valid name, else the allowed ones."""
    near = closest(key, allowed)
    if near is not None:
        return f"unknown key (did you mean {near!r}?)"
    return f"unknown key (allowed: {', '.join(sorted(allowed))})"


def check_keys(
    mapping: Mapping, allowed: Collection[str], where: str, error: type[OnnxmpError]
) -> None:
    """Raise `error` naming the first key of `mapping` not in `allowed` (`where` is its prefix).

    Keys that are not strings (YAML `1:` or `null:`) are unknown too.
    """
    for key in sorted(mapping, key=str):
        if not isinstance(key, str) or key not in allowed:
            raise error(f"{where}{key}: {unknown_key(key, allowed)}")


def load_yaml(text: str, where: str, error: type[OnnxmpError]) -> object:
    """`yaml.safe_load(text)`, refused with `error` when malformed, too large or recursive."""
    if len(text) > MAX_YAML_BYTES:
        raise error(f"{where}: {len(text)} characters, more than a profile can need ({MAX_YAML_BYTES})")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None
        _expanded_size(node, where, error)
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{where}: not valid YAML: {str(e).splitlines()[0]}") from e
    except RecursionError as e:
        raise error(f"{where}: not valid YAML: nested too deeply") from e


def _expanded_size(root: yaml.Node, where: str, error: type[OnnxmpError]) -> int:
    """Nodes of the document with every alias expanded (each shared node counted once per use)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = _children(node)
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(k)] for k in kids)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise error(f"{where}: the YAML expands to more than {MAX_YAML_NODES} nodes (aliases)")
            continue
        if id(node) in open_nodes:
            raise error(f"{where}: a YAML alias refers to a node that contains it")
        open_nodes.add(id(node))
        _check_unique_keys(node, where, error)
        stack.append((node, True))
        stack.extend((kid, False) for kid in kids)
    return sizes[id(root)]


def _check_unique_keys(node: yaml.Node, where: str, error: type[OnnxmpError]) -> None:
    """A mapping that names a key twice (PyYAML would keep the last one silently) is refused."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen = set()
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode):
            if key.value in seen:
                raise error(f"{where}: {key.value}: key given twice (line {key.start_mark.line + 1})")
            seen.add(key.value)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
