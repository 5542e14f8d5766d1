"""The package's layers, read from its source: imports only point down, no circles.

Layers, bottom up: ``core`` (pure) < ``runtime`` (the hub process's shared state, Docker and
NVML links) < ``backends`` (the spawners) < ``hub`` (hub-side features, operator commands) <
the package's top (``spawner``, ``__main__`` and the old import paths). Every import counts,
also one inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "spawner"
LAYERS = {"core": 0, "runtime": 1, "backends": 2, "hub": 3}
TOP = 4
#: What each layer may not import from outside the package.
FORBIDDEN = {
    "core": {"docker", "dockerspawner", "jupyterhub", "tornado", "pynvml", "requests"},
    "runtime": {"dockerspawner", "jupyterhub", "tornado"},
}
MAX_FUNCTION_LINES = 60
#: Functions allowed to be longer, and why.
LONG_FUNCTIONS = {
    "spawner.core.pool.GPUPool.acquire": "one wait loop whose steps share the ticket's state",
    "spawner.core.profiles._parse_one": "one check per profile key, each with its sentence",
    "spawner.core.inventory._entry": "one check per inventory key, each with its sentence",
    "spawner.core.devices.build_device_request": "one table of the --gpus forms",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, tree: ast.Module) -> Iterator[str]:
    """Every module ``name`` imports, anywhere in its body (relative imports resolved)."""
    package = name if name in PACKAGES else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # ``from spawner.core import hardening`` imports the module spawner.core.hardening
            yield from (f"{base}.{alias.name}" for alias in node.names)


ALL = modules()
PACKAGES = {name for name in ALL if (PACKAGE.parent / name.replace(".", "/")).is_dir()}


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, tree in ALL.items():
        graph[name] = {m for m in imported(name, tree) if m in ALL and m != name}
    return graph


def test_the_layers_are_the_folders() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "templates"}
    assert folders - {"__pycache__"} == set(LAYERS)
    top = sorted(n for n in ALL if layer(n) == TOP)
    assert top == [
        "spawner",
        "spawner.__main__",
        "spawner.docker_spawner",
        "spawner.swarm_spawner",
    ]


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_only_point_down(name: str) -> None:
    upward = sorted(m for m in edges()[name] if layer(m) > layer(name))
    assert not upward, f"{name} (layer {layer(name)}) imports from above: {upward}"


LOWER = sorted(n for n in ALL if n.count(".") >= 1 and n.split(".")[1] in FORBIDDEN)


@pytest.mark.parametrize("name", LOWER)
def test_the_lower_layers_import_no_hub_or_engine_library(name: str) -> None:
    forbidden = FORBIDDEN[name.split(".")[1]]
    used = {m.split(".")[0] for m in imported(name, ALL[name])}
    assert not used & forbidden, f"{name} imports {sorted(used & forbidden)}"


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle() -> None:
    assert circles(edges()) == []


def test_the_circle_finder_finds_one() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def functions() -> Iterator[tuple[str, int]]:
    for name, tree in ALL.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        yield f"{name}.{node.name}.{item.name}", _lines(item)
        for item in tree.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{name}.{item.name}", _lines(item)


def _lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return (node.end_lineno or node.lineno) - node.lineno + 1


def test_no_function_is_longer_than_60_lines_without_a_reason() -> None:
    long = {name: n for name, n in functions() if n > MAX_FUNCTION_LINES}
    unexplained = {name: n for name, n in long.items() if name not in LONG_FUNCTIONS}
    assert not unexplained
    stale = sorted(set(LONG_FUNCTIONS) - set(long))
    assert not stale, f"no longer long, drop from LONG_FUNCTIONS: {stale}"
