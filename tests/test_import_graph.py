"""The package imports in one direction: no module reaches back, directly or through others.

The graph is read from the source (no module is imported): every ``import`` and ``from ...
import`` statement of a module (also inside functions and ``if TYPE_CHECKING:``), and every
``importlib.import_module("hf_wavepos...")`` with a literal name, is an edge to the module it
names. ``from package import name`` points at ``package.name`` when that is a module, else at
the package's ``__init__``. A package is not an edge of its own submodules (Python imports a
parent package first, but that is not a dependency of the submodule's code).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_wavepos"


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (``__init__`` as the package name)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:  # "hf_wavepos.x.func" -> "hf_wavepos.x"
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``module`` imports (see the module docstring)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                full = f"{source}.{alias.name}"
                targets.add(full if full in modules else source)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets.add(node.args[0].value)
    root = module.split(".")[0]
    resolved = {_resolve(t, modules) for t in targets if t.split(".")[0] == root}
    return {t for t in resolved if t and t != module}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected group of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_closed_path(graph, set(group)) for group in groups]


def _closed_path(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    start = min(group)
    path, seen = [start], {start}
    while True:
        nxt = min(n for n in graph[path[-1]] if n in group)
        if nxt in seen:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)
        seen.add(nxt)


def test_the_graph_reader_sees_every_kind_of_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.sub.b import thing\n")
    (package / "a.py").write_text("def f():\n    from . import c\n")  # function-level, relative
    (package / "c.py").write_text("import importlib\nm = importlib.import_module('pkg.sub')\n")
    (package / "sub" / "__init__.py").write_text("from ..a import f\n")  # relative from a package
    (package / "sub" / "b.py").write_text("import os\nimport pkg\n")
    graph = import_graph(package)
    assert graph == {"pkg": {"pkg.sub.b"}, "pkg.a": {"pkg.c"}, "pkg.c": {"pkg.sub"}, "pkg.sub": {"pkg.a"},
                     "pkg.sub.b": {"pkg"}}
    assert find_cycles(graph) == [["pkg", "pkg.sub.b", "pkg"], ["pkg.a", "pkg.c", "pkg.sub", "pkg.a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (each a closed path of modules):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_inner_modules_do_not_import_the_package_root():
    """The root re-exports the public API; inner modules import from the module that defines a name."""
    graph = import_graph()
    assert sorted(m for m, targets in graph.items() if "hf_wavepos" in targets) == []
