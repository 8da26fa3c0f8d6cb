"""The layers point one way (`lua ← engine ← persistence ← web ← scripts`) and no module
imports itself in a circle. Read from the source (ast), every import counted: at the top of a
module, inside a function, under TYPE_CHECKING."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("engine", "persistence", "web", "scripts")  # each may import the ones before it


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in LAYERS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, tree: ast.AST, known: set[str]) -> Iterator[str]:
    """The modules of ours that `name` (at `path`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def ours(target: str) -> str | None:
        # the module itself, or the nearest package of ours that holds it
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (found := ours(alias.name)) is not None:
                    yield found
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from web.routes import stock` imports the module web.routes.stock
                found = ours(f"{base}.{alias.name}") if f"{base}.{alias.name}" in known else None
                found = found or ours(base)
                if found is not None:
                    yield found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = {target for target in _imported(name, path, tree, known) if target != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    graph = _graph()
    assert "web.app" in graph
    assert "web.routes" in graph["web.app"]
    assert "engine.engine" in graph["web.services.container"]
    assert "web.routes.stock" in graph["web.routes.products"]
    assert "web.services.stock" in graph["web.services.products"]


def test_no_module_imports_itself_in_a_circle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_imports_point_down_the_layers_only() -> None:
    against = [
        f"{source} imports {target}"
        for source, targets in sorted(_graph().items())
        for target in sorted(targets)
        if LAYERS.index(target.split(".")[0]) > LAYERS.index(source.split(".")[0])
    ]
    assert against == []


def test_nothing_imports_back_from_the_app_module() -> None:
    """web.app sits on top: only the callers that build an app (scripts/, the benchmark's
    endpoints) import it."""
    importers = sorted(
        source
        for source, targets in _graph().items()
        if "web.app" in targets and source.startswith("web.")
    )
    assert importers == []
