"""The import layering of docs/architecture.md, enforced: a lower layer never imports a higher one, and no
two modules import each other (directly or round a loop), counting imports inside functions too (a
deferred import is still a dependency) but not `if TYPE_CHECKING:` ones (annotations only)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "gateway"

# The layers, lowest first (docs/architecture.md, "Import layering"). The most specific prefix wins.
LAYERS: list[tuple[str, list[str]]] = [
    ("shapes", ["gateway", "gateway.shapes", "gateway.errors", "gateway.yamlspec", "gateway.extensions",
                "gateway.offline", "gateway.api_requests", "gateway.surfaces"]),
    ("records", ["gateway.db", "gateway.settings", "gateway.keys", "gateway.principals", "gateway.registry",
                 "gateway.kinds", "gateway.tokens_cost", "gateway.egress", "gateway.rollouts", "gateway.prompts", "gateway.limits",
                 "gateway.providers.deployment", "gateway.cli_common", "gateway.ml.config",
                 "gateway.evaluation.config", "gateway.monitoring.config", "gateway.traffic.config"]),
    ("services", ["gateway.providers", "gateway.routing", "gateway.policy", "gateway.monitoring",
                  "gateway.snapshot", "gateway.traffic"]),
    ("features", ["gateway.retrieval", "gateway.evaluation", "gateway.ml"]),
    ("flow", ["gateway.flow", "gateway.ml.service"]),
    ("surfaces", ["gateway.api", "gateway.ui", "gateway.cli", "gateway.app", "gateway.server"]),
]  # fmt: skip
RANK = {prefix: rank for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes}


def module_names() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer_of(module: str) -> int:
    """The layer of a module: its most specific prefix; a package's `cli` modules are surfaces."""
    if module.rsplit(".", maxsplit=1)[-1] == "cli":
        return len(LAYERS) - 1
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in RANK and (prefix != "gateway" or module == "gateway"):
            return RANK[prefix]
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/architecture.md")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported gateway module, line) for every import outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target in modules:
                found.append((target, node.lineno))
            found += [
                (f"{target}.{a.name}", node.lineno) for a in node.names if f"{target}.{a.name}" in modules
            ]
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_no_lower_layer_imports_a_higher_one() -> None:
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]}) on line {line}"
        for name, targets in import_graph().items()
        for target, line in targets
        if layer_of(target) > layer_of(name)
    ]
    assert upward == [], "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = {name: sorted({t for t, _ in targets if t != name}) for name, targets in import_graph().items()}
    cycles = strongly_connected(graph)
    assert cycles == [], "\n".join(" <-> ".join(sorted(c)) for c in cycles)


def strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            edges = graph.get(node, [])
            if i < len(edges):
                work.append((node, i + 1))
                nxt = edges[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": ["b"], "b": ["a"]}, [["a", "b"]]),
        ({"a": ["b"], "b": ["c"], "c": []}, []),
        ({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}, [["a", "b", "c"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, list[str]], expected: list[list[str]]) -> None:
    assert [sorted(c) for c in strongly_connected(graph)] == expected


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The scan reads deferred imports and skips TYPE_CHECKING ones, as the module docstring says."""
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gateway.flow.call import Call\n"
        "def f():\n    from gateway.app import create_app\n"
    )
    found = imports_of("gateway.registry.m", module, {"gateway.flow.call": module, "gateway.app": module})
    assert found == [("gateway.app", 5)]
    assert layer_of("gateway.app") > layer_of("gateway.registry.m")
