"""The ``lifecycled`` package's imports, read from the source with ``ast``: no cycle (issue 12),
and each package imports only what the layering allows (:data:`LAYERS`, docs/ARCHITECTURE.md).

Every import of a ``lifecycled`` module is an edge of the graph, of one of three kinds:

* ``module``: at module level (the import runs when the module is imported);
* ``function``: inside a function or method (it runs on the first call; a cycle through it is
  still a cycle, only deferred, so it counts);
* ``type``: inside ``if TYPE_CHECKING:`` (it never runs).

Type-only imports count too. ``if TYPE_CHECKING:`` is the usual way a runtime cycle is hidden:
the two modules still depend on each other (neither can be read, type-checked or moved without
the other), which is the coupling a cycle stands for. The simulator's cycle (``simulator`` ↔
``outofband``) ran through such an import. A failure names the kind of every edge of the cycle.

The parents of a package are not edges: ``import lifecycled.sim.views`` runs
``lifecycled/sim/__init__.py`` first, but that is Python's package machinery, not a dependency
of ``views`` on what the package re-exports. ``from lifecycled.sim import SimServer`` is an edge
to ``lifecycled.sim`` (the ``__init__`` module); ``from lifecycled.sim import views`` an edge to
``lifecycled.sim.views``.
"""

from __future__ import annotations

import ast
import enum
from collections.abc import Iterator
from pathlib import Path

import lifecycled

PACKAGE = Path(lifecycled.__file__).parent

#: What each part of lifecycled may import besides itself (docs/ARCHITECTURE.md "Dependency
#: rules"). A part is a subpackage or a top-level module; ``lifecycled`` is the package's
#: ``__init__`` (the version). Dependencies point inward: ``domain`` is pure, the journal
#: never imports engine, web or pve, the engine never imports web or cli, and only the
#: entry points (cli, demo) start the simulator.
LAYERS: dict[str, frozenset[str]] = {
    "domain": frozenset({"errors"}),
    "errors": frozenset({"domain"}),  # type-only: ErrorClass
    "policy": frozenset({"domain", "errors"}),
    "audit": frozenset({"domain"}),
    "logs": frozenset(),
    "lifecycled": frozenset(),
    "config": frozenset({"domain", "errors"}),
    "eventloop": frozenset({"config"}),
    "metrics": frozenset({"domain", "lifecycled"}),
    "journal": frozenset({"domain", "errors", "audit"}),
    "pve": frozenset({"domain", "errors", "config"}),
    "engine": frozenset(
        {"domain", "errors", "audit", "config", "policy", "metrics", "journal", "pve"}
        | {"eventloop"}
    ),
    "web": frozenset(
        {"domain", "errors", "audit", "config", "policy", "metrics", "journal", "pve", "engine"}
        | {"lifecycled", "eventloop"}
    ),
    "sim": frozenset({"domain", "pve"}),  # pve.schema: Proxmox's own parameter schema
    "demo": frozenset({"domain", "errors", "config", "journal", "sim"}),
    "cli": frozenset(
        {"domain", "errors", "audit", "config", "policy", "metrics", "logs", "journal", "pve"}
        | {"engine", "web", "sim", "demo", "lifecycled", "eventloop"}
    ),
    "__main__": frozenset({"cli"}),
}


class Kind(enum.StrEnum):
    MODULE = "module"
    FUNCTION = "function"
    TYPE = "type"


#: module → imported module → the kinds of import that edge is made of.
Graph = dict[str, dict[str, set[Kind]]]


def _modules(package: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, Kind]]:
    """Every import statement of a module with the kind it is."""

    def walk(node: ast.AST, kind: Kind) -> Iterator[tuple[ast.Import | ast.ImportFrom, Kind]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, kind
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), Kind.TYPE)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), kind)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, Kind.TYPE if kind is Kind.TYPE else Kind.FUNCTION)
            else:
                yield from walk(child, kind)

    yield from walk(tree, Kind.MODULE)


def import_graph(package: Path = PACKAGE) -> Graph:
    """The import graph of the package in directory ``package`` (imports of other packages
    are left out)."""
    modules = _modules(package)

    def known(name: str) -> str | None:
        """The module ``name`` is, or the nearest package containing it."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {name: {} for name in modules}
    for name, source in modules.items():
        parent = name if source.name == "__init__.py" else name.rpartition(".")[0]
        for stmt, kind in _imports(ast.parse(source.read_text(encoding="utf-8"), str(source))):
            targets: list[str | None] = []
            if isinstance(stmt, ast.Import):
                targets = [known(alias.name) for alias in stmt.names]
            else:
                base = stmt.module or ""
                if stmt.level:  # relative: ``from .x import y`` / ``from .. import y``
                    up = parent.split(".")[: len(parent.split(".")) - stmt.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else known(base)
                    for alias in stmt.names
                ]
            for target in targets:
                if target is not None and target != name:
                    graph[name].setdefault(target, set()).add(kind)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _describe(graph: Graph, component: list[str]) -> str:
    members = set(component)
    edges = [
        f"  {source} -> {target} ({', '.join(sorted(graph[source][target]))})"
        for source in component
        for target in sorted(graph[source])
        if target in members
    ]
    return "\n".join([" <-> ".join(component), *edges])


def test_the_package_has_no_import_cycle() -> None:
    """No module of ``lifecycled`` imports itself through others (type-only imports count)."""
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_describe(graph, c) for c in found)


def part_of(module: str) -> str:
    """The part of lifecycled a module belongs to: its subpackage or its own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_each_part_imports_only_what_the_layering_allows() -> None:
    """domain is pure, the journal never imports engine/web/pve, … (every kind of import)."""
    graph = import_graph()
    parts = {part_of(module) for module in graph}
    assert parts == set(LAYERS), "a new part of lifecycled: give it a row in LAYERS"
    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if part_of(target) != part_of(source) and part_of(target) not in LAYERS[part_of(source)]
    )
    assert wrong == []


def test_the_graph_sees_each_kind_of_import(tmp_path: Path) -> None:
    """The graph reads module-level, function-level, ``TYPE_CHECKING`` and relative imports."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "from pkg.sub import thing\n",
        "sub/__init__.py": "thing = 1\n",
        "sub/leaf.py": "from . import sibling\nfrom .. import top\n",
        "sub/sibling.py": "import os\nimport pkg.top as t\n",
        "top.py": (
            "from typing import TYPE_CHECKING\n"
            "import pkg.sub.leaf\n"
            "if TYPE_CHECKING:\n    from pkg.sub import sibling\n"
            "def later():\n    from pkg import sub\n"
        ),
    }
    for name, text in sources.items():
        (pkg / name).write_text(text, encoding="utf-8")
    assert import_graph(pkg) == {
        "pkg": {"pkg.sub": {Kind.MODULE}},
        "pkg.sub": {},
        "pkg.sub.leaf": {"pkg.sub.sibling": {Kind.MODULE}, "pkg.top": {Kind.MODULE}},
        "pkg.sub.sibling": {"pkg.top": {Kind.MODULE}},
        "pkg.top": {
            "pkg.sub.leaf": {Kind.MODULE},
            "pkg.sub.sibling": {Kind.TYPE},
            "pkg.sub": {Kind.FUNCTION},
        },
    }
    assert cycles(import_graph(pkg)) == [["pkg.sub.leaf", "pkg.sub.sibling", "pkg.top"]]


def test_a_cycle_through_a_type_only_import_is_found() -> None:
    """A cycle closed by a ``TYPE_CHECKING`` import or a function-level import is reported."""
    graph: Graph = {
        "a": {"b": {Kind.MODULE}},
        "b": {"a": {Kind.TYPE}},
        "c": {"d": {Kind.FUNCTION}},
        "d": {"e": {Kind.MODULE}},
        "e": {"c": {Kind.MODULE}},
        "f": {"a": {Kind.MODULE}},
    }
    assert cycles(graph) == [["a", "b"], ["c", "d", "e"]]
