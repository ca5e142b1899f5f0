"""The house rules, checked by walking the code: the import graph reads top to bottom (the layers
of docs/architecture.md) with no cycle between modules or packages, and ``domain/`` imports
nothing of the rest of Provisor, and no function in ``provisor/`` (migrations excepted) is
longer than 80 lines."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "provisor"
MAX_FUNCTION_LINES = 80

# Which packages each package may import (besides itself, ``provisor.errors`` and
# ``provisor.redaction``): the layers
# of docs/architecture.md, top to bottom.
ALLOWED: dict[str, set[str]] = {
    "cli": {"engine", "domain", "sources", "evidence", "demo", "api"},
    "demo": {"engine", "domain", "store", "evidence", "config", "sandbox"},
    "api": {"engine", "domain", "sources", "evidence", "config"},
    "testing": {"engine", "connectors", "domain"},
    "sandbox": {"engine", "domain", "store"},
    "engine": {"domain", "store", "sources", "connectors", "evidence", "config"},
    "evidence": {"domain", "store"},
    "config": {"domain", "sources"},
    "connectors": {"domain"},
    "sources": {"domain"},
    "store": set(),
    "domain": set(),
    "errors": set(),
    "redaction": set(),
    "": set(),  # provisor/__init__.py
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = ("provisor", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """Modules of ``provisor`` that ``module`` imports anywhere (top level or in a function)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_another_that_imports_it_back() -> None:
    assert _cycles(GRAPH) == []


def test_no_cycle_between_packages() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, imported in GRAPH.items():
        for other in imported:
            if _package(other) != _package(module):
                packages[_package(module)].add(_package(other))
    assert _cycles(dict(packages)) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str) -> None:
    mine = _package(module)
    assert mine in ALLOWED, f"{module}: package {mine!r} has no place in the layers"
    wrong = sorted(
        other
        for other in GRAPH[module]
        if _package(other) not in {mine, "errors", "redaction"}
        and _package(other) not in ALLOWED[mine]
    )
    assert wrong == [], f"{module} ({mine}) must not import {wrong}"


def test_no_function_longer_than_80_lines() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []
