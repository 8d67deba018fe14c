"""The layout shows the architecture: no import cycles, and the core knows nothing of the services.

Every ``import`` in the project's source is read (module level and inside
functions alike, since a lazy import is still a dependency), resolved to the
project's modules, and the graph is checked. Importing ``a.b.c`` also runs
``a/__init__`` and ``a/b/__init__``, so those count as edges too.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Folder -> import name (pyproject.toml's package-dir).
PACKAGES = {"sendguard": "sendguard", "milter": "sendguard_milter", "policyd": "sendguard_policyd"}
CORE, MILTER, POLICYD, CLI = "sendguard", "sendguard_milter", "sendguard_policyd", "sendguard.cli"


def _modules() -> dict[str, Path]:
    found = {}
    for folder, name in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = [name, *path.relative_to(REPO / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(MODULES)


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out |= _with_parents(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out |= _with_parents(target)
            for alias in node.names:  # ``from pkg import submodule``
                out |= _with_parents(f"{target}.{alias.name}")
    out.discard(module)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_walk_sees_the_whole_project():
    # A walk that found nothing would pass every check below.
    assert {"sendguard.config", "sendguard.cli.settings", "sendguard_milter.app", "sendguard_policyd.decide"} <= set(MODULES)
    assert "sendguard.streams" in GRAPH["sendguard.config"]


def test_no_import_cycle():
    assert _cycles() == []


def test_the_shared_core_imports_nothing_of_the_services():
    wrong = {
        (m, dep)
        for m, deps in GRAPH.items()
        if _in(m, CORE) and not _in(m, CLI)
        for dep in deps
        if _in(dep, MILTER) or _in(dep, POLICYD) or _in(dep, CLI)
    }
    assert wrong == set()


def test_the_services_import_neither_each_other_nor_the_cli():
    wrong = {
        (m, dep)
        for m, deps in GRAPH.items()
        for dep in deps
        if (_in(m, MILTER) and _in(dep, POLICYD)) or (_in(m, POLICYD) and _in(dep, MILTER))
        or ((_in(m, MILTER) or _in(m, POLICYD)) and _in(dep, CLI))
    }
    assert wrong == set()


def test_the_check_finds_a_cycle_when_there_is_one():
    GRAPH["sendguard.streams"].add("sendguard.config")
    try:
        assert ["sendguard.config", "sendguard.streams"] in _cycles()
    finally:
        GRAPH["sendguard.streams"].discard("sendguard.config")
