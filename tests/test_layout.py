"""The layout holds: every module imports, no two pipeline modules import each other (directly or around a circle,
at the top or inside a function), and `schemas` imports nothing from `pipeline`."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("pipeline", "schemas", "tools")


def module_files(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` (a package's `__init__.py` under its own name)."""
    modules = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = {name: path for package in PACKAGES for name, path in module_files(package).items()}


def imported_names(node: ast.AST) -> list[str]:
    """The dotted names an import statement may load: `from a.b import c` loads `a.b`, and `a.b.c` when it is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def project_imports(path: Path) -> set[str]:
    """Project modules that `path` imports anywhere: at the top, and inside functions too (an import put off until a
    function runs still ties the two modules together, and only hides a circle)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {name for node in ast.walk(tree) for name in imported_names(node) if name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `graph` as the list of modules around it, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


@pytest.mark.parametrize("module", sorted(name for name in MODULES if not name.endswith("__main__")))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_pipeline_modules_import_each_other_without_a_circle():
    graph = {name: project_imports(path) for name, path in MODULES.items() if name.startswith("pipeline")}
    assert graph["pipeline.run"], "the graph is empty: the import scan found nothing"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_find_cycle_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def test_schemas_import_nothing_from_pipeline():
    """Not even inside a function: config models are loaded by tools that do not run the pipeline."""
    offenders = [f"{name}: {target}" for name, path in MODULES.items() if name.startswith("schemas")
                 for target in project_imports(path) if target.split(".")[0] == "pipeline"]
    assert offenders == []
