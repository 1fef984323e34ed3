"""The layering rule of README.md ("Layering"), checked on the imports of every module.

`records, errors` -> `quant_math, bops, graph, hw_profile, model_io, large_model, runtime, calib_data, store`
-> `passes` -> `phase1`, `search` -> `pipeline` (with `steps`) -> `cli`: each layer imports only from its own
layer or layers to its left. Nothing imports `cli`; only `pipeline` imports `onnxmp.search`
(besides the search package itself). Imports inside functions (lazy imports) count, and so do
imports under `if TYPE_CHECKING:` (a typing-only import still ties the layers together and
hides a cycle from the reader).

Modules the rule does not name: `report` and any other `onnxmp/*.py` service sit with the small
services (README "Layout": "small services (..., store, report)"); `onnxmp/__init__.py`, the
public facade that re-exports `pipeline.quantize`, sits with `pipeline`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"onnxmp": REPO / "onnxmp", "onnxmp.passes": REPO / "passes"}
LINKED = ("passes", "hw_profiles")  # onnxmp/passes and onnxmp/hw_profiles are symlinks to these folders

BASE, SERVICES, PASSES, PHASES, PIPELINE, CLI = range(6)
NAMED_LAYERS = {
    "onnxmp.records": BASE,
    "onnxmp.tensor_encoding": BASE,
    "onnxmp.errors": BASE,
    **{f"onnxmp.{m}": SERVICES for m in ("quant_math", "bops", "graph", "hw_profile", "model_io", "large_model", "runtime", "calib_data", "store", "inputs")},
    "onnxmp.pipeline": PIPELINE,
    "onnxmp.steps": PIPELINE,
    "onnxmp.emit": PIPELINE,
    "onnxmp.latency_check": PIPELINE,
    "onnxmp.plan_rounding": PIPELINE,
    "onnxmp.run_store": PIPELINE,
    "onnxmp.apply": PIPELINE,
    "onnxmp.cli": CLI,
    "onnxmp.cli_options": CLI,
    "onnxmp": PIPELINE,
}
SEARCH = "onnxmp.search"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of onnxmp/ and passes/ (recursively)."""
    modules = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            if package == "onnxmp" and path.relative_to(folder).parts[0] in LINKED:
                continue  # passes/ is listed under its own name; hw_profiles/ is package data
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
    if module.split(".")[:2] in (["onnxmp", "phase1"], ["onnxmp", "search"]):
        return PHASES
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


def imports_of(module: str) -> set[str]:
    """onnxmp modules `module` imports anywhere in its body (top level, inside functions, or
    under `if TYPE_CHECKING:`)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
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
    assert {"onnxmp.records", "onnxmp.pipeline", "onnxmp.cli", "onnxmp.passes", "onnxmp.phase1.sensitivity",
            "onnxmp.search", "onnxmp.search.greedy"} <= set(MODULES)
    edges = set(_edges())
    # a top-level import, a lazy import inside a function, and `from package import module`
    assert ("onnxmp.pipeline", "onnxmp.phase1.sensitivity") in edges
    assert ("onnxmp.phase1.sensitivity", "onnxmp.phase1.executors") in edges
    assert ("onnxmp.emit", "onnxmp.report") in edges  # inside emit()
    assert ("onnxmp.pipeline", "onnxmp.search") in edges  # from onnxmp.search import STRATEGIES
    assert ("onnxmp.report_html", "onnxmp.run_records") in edges
    assert ("onnxmp.passes.calibrate", "onnxmp.quant_math") in edges  # from onnxmp import quant_math
    assert ("onnxmp.passes.calibrate", "onnxmp") not in edges


def test_type_checking_and_lazy_imports_both_count(tmp_path):
    MODULES["onnxmp.example_for_test"] = tmp_path / "example.py"
    (tmp_path / "example.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from onnxmp.pipeline import Prepared\n"
        "def f():\n    from onnxmp import cli\n"
    )
    try:
        assert imports_of("onnxmp.example_for_test") == {"onnxmp.pipeline", "onnxmp.cli"}
    finally:
        del MODULES["onnxmp.example_for_test"]


def test_no_import_cycles():
    graph = nx.DiGraph(_edges())
    graph.remove_nodes_from(["onnxmp"])  # the facade re-exports; nothing below imports it
    assert list(nx.simple_cycles(graph)) == []


def test_passes_resolve_under_the_same_root_as_onnxmp():
    """Two checkouts and one venv must not mix: `onnxmp.passes` comes from the checkout `onnxmp`
    came from (onnxmp/passes is a symlink to passes/, not a remap in an editable install)."""
    import onnxmp
    import onnxmp.hw_profiles
    import onnxmp.passes

    root = Path(onnxmp.__file__).resolve().parents[1]
    assert Path(onnxmp.passes.__file__).resolve().parents[1] == root
    assert Path(onnxmp.hw_profiles.__file__).resolve().parents[1] == root
    assert (Path(onnxmp.__file__).parent / "passes").is_symlink()


def _functions():
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield module, node


def test_no_function_takes_more_than_seven_parameters_outside_the_facade():
    facade = {("onnxmp.pipeline", "quantize")}
    crowded = []
    for module, fn in _functions():
        args = fn.args
        names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
        names = [n for n in names if n not in ("self", "cls")]
        if len(names) > 7 and (module, fn.name) not in facade:
            crowded.append(f"{module}.{fn.name}: {len(names)}")
    assert crowded == []


def test_no_module_over_300_lines():
    assert {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 300} == {}


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


def test_pipeline_imports_search():
    assert "onnxmp.pipeline" in _search_importers()


def test_only_pipeline_imports_search():
    assert _search_importers() == ["onnxmp.pipeline"]
