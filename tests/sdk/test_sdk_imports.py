"""The SDK's modules import one another without cycles, type-only imports included.

A cycle makes import order matter and hides which module depends on which; the layering is
``_api`` (the composition root: it picks the transport) -> ``_client`` -> ``_run`` /
``_dispatch`` -> ``_transport``, with ``_kafka`` reached only lazily from ``_api``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import studbook

PACKAGE = Path(studbook.__file__).parent


def _module_name(path: Path) -> str:
    return "studbook" if path.stem == "__init__" else f"studbook.{path.stem}"


def _imports(tree: ast.AST, known: set[str]) -> set[str]:
    """The SDK modules a module's code imports, anywhere in it (functions, TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "studbook":  # `from studbook import _events`: the submodule
                for alias in node.names:
                    sub = f"studbook.{alias.name}"
                    found.add(sub if sub in known else "studbook")
            elif node.module in known:
                found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.glob("*.py"))
    known = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        name = _module_name(path)
        graph[name] = _imports(ast.parse(path.read_text(), str(path)), known) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for dep in sorted(graph[node]):
            cycle = visit(dep, [*path, node])
            if cycle is not None:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_sdk_import_graph_is_acyclic() -> None:
    graph = import_graph()
    assert {"studbook._api", "studbook._client", "studbook._run"} <= graph.keys()
    assert "studbook._client" in graph["studbook._api"]  # the parse sees real edges
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_composition_root_imports_the_kafka_transport_and_only_lazily() -> None:
    graph = import_graph()
    importers = sorted(name for name, deps in graph.items() if "studbook._kafka" in deps)
    assert importers == ["studbook._api"]
    tree = ast.parse((PACKAGE / "_api.py").read_text())
    top_level = {
        node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "studbook._kafka" not in top_level  # imported when a kafka:// transport is built
