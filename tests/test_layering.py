"""The layering rule of README.md ("Layering"), checked on the imports of every module.

`records, errors` -> `quant_math, bops, graph, hw_profile, model_io, runtime, calib_data, store`
-> `passes` -> `pipeline` -> `cli`: each layer imports only from its own layer or layers to its
left. Nothing imports `cli`; only `pipeline` imports `onnxmp.passes.search` (besides the
search package itself). Imports inside functions (lazy imports) count too; imports under
`if TYPE_CHECKING:` do not (they never run).

Modules the rule does not name: `report` and any other `onnxmp/*.py` service sit with the small
services (README "Layout": "small services (..., store, report)"); `onnxmp/__init__.py`, the
public facade that re-exports `pipeline.quantize`, sits with `pipeline`.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"onnxmp": REPO / "onnxmp", "onnxmp.passes": REPO / "passes"}

BASE, SERVICES, PASSES, PIPELINE, CLI = range(5)
NAMED_LAYERS = {
    "onnxmp.records": BASE,
    "onnxmp.errors": BASE,
    **{f"onnxmp.{m}": SERVICES for m in ("quant_math", "bops", "graph", "hw_profile", "model_io", "runtime", "calib_data", "store", "inputs")},
    "onnxmp.pipeline": PIPELINE,
    "onnxmp.apply": PIPELINE,
    "onnxmp.cli": CLI,
    "onnxmp": PIPELINE,
}
SEARCH = "onnxmp.passes.search"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of onnxmp/ and passes/ (recursively)."""
    modules = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            if package == "onnxmp" and path.is_relative_to(REPO / "onnxmp" / "hw_profiles"):
                continue  # package data
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = module_files()


def layer_of(module: str) -> int:
    if module in NAMED_LAYERS:
        return NAMED_LAYERS[module]
    if module == "onnxmp.passes" or module.startswith("onnxmp.passes."):
        return PASSES
    if module.startswith("onnxmp.hw_profiles"):
        return SERVICES
    return SERVICES  # report and other unnamed small services


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (typing only, never imported at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(module: str) -> set[str]:
    """onnxmp modules `module` imports anywhere in its body (top level or inside functions)."""
    found = set()
    for node in _runtime_nodes(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            # `from onnxmp import report` imports the module onnxmp.report, not the facade
            submodules = {f"{source}.{a.name}" for a in node.names} & set(MODULES)
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(source)
    return {name for name in found if name == "onnxmp" or name.startswith("onnxmp.")}


def _edges() -> list[tuple[str, str]]:
    return sorted((m, target) for m in MODULES for target in imports_of(m) if target != m)


def test_the_module_list_and_the_parser_see_what_they_should():
    assert {"onnxmp.records", "onnxmp.pipeline", "onnxmp.cli", "onnxmp.passes", "onnxmp.passes.sensitivity",
            "onnxmp.passes.search", "onnxmp.passes.search.greedy"} <= set(MODULES)
    edges = set(_edges())
    # a top-level import, a lazy import inside a function, and `from package import module`
    assert ("onnxmp.pipeline", "onnxmp.passes.sensitivity") in edges
    assert ("onnxmp.pipeline", "onnxmp.report") in edges  # inside emit()
    assert ("onnxmp.pipeline", "onnxmp.passes.search.greedy") in edges  # inside point_of()
    assert ("onnxmp.passes.calibrate", "onnxmp.quant_math") in edges  # from onnxmp import quant_math
    assert ("onnxmp.passes.calibrate", "onnxmp") not in edges


def test_type_checking_imports_are_skipped_and_lazy_ones_are_not():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from onnxmp.pipeline import Prepared\n"
        "else:\n    import onnxmp.store\n"
        "def f():\n    from onnxmp import cli\n"
    )
    imported = {a.name for n in _runtime_nodes(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert imported == {"TYPE_CHECKING", "onnxmp.store", "cli"}


def test_each_layer_imports_only_from_its_left():
    wrong = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, t in _edges()
        if layer_of(t) > layer_of(m)
    ]
    assert wrong == []


def test_nothing_imports_cli():
    assert [m for m, t in _edges() if t == "onnxmp.cli"] == []


def _search_importers() -> list[str]:
    return sorted({
        m for m, t in _edges()
        if (t == SEARCH or t.startswith(SEARCH + ".")) and not (m == SEARCH or m.startswith(SEARCH + "."))
    })


def test_pipeline_imports_passes_search():
    assert "onnxmp.pipeline" in _search_importers()


def test_only_pipeline_imports_passes_search():
    assert _search_importers() == ["onnxmp.pipeline"]
