"""Draw docs/architecture.md from the code: the layers, their packages and who imports whom.

`python -m scripts.architecture` rewrites the file; `--check` exits 1 when it is out of date
(the suite runs that, so the picture cannot drift from the tree). The layers and the allowed
direction of imports are the ones DESIGN.md states: `lua ← engine ← persistence ← web ← scripts`.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("engine", "persistence", "web", "scripts")
OUTPUT = ROOT / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (at any depth of its code, TYPE_CHECKING included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from engine import errors` imports the module engine.errors, and runs the
                # package engine/__init__; `from engine.keys import x` imports engine.keys.
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def group(name: str, path: Path) -> str:
    """A module's box in the picture: its layer, or its sub-package inside the layer."""
    parts = path.relative_to(ROOT).parts
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    return first.replace("|", "\\|")


def render() -> str:
    # Alembic's migration scripts are data more than code: left out of the picture.
    every = modules()
    found = {n: p for n, p in every.items() if "migrations" not in p.parts}
    edges = graph()
    groups = sorted(
        {group(n, p) for n, p in found.items()}, key=lambda g: (LAYERS.index(g.split(".")[0]), g)
    )
    weight: Counter[tuple[str, str]] = Counter()
    for source, targets in edges.items():
        if source not in found:
            continue
        for target in targets:
            a, b = group(source, found[source]), group(target, every[target])
            if a != b:
                weight[(a, b)] += 1
    lines = [
        "# Architecture",
        "",
        "Drawn from the code by `python -m scripts.architecture` (the suite checks it is current).",
        "Arrows point from the importer to what it imports; a number is how many module imports",
        "the arrow stands for. Dependencies point one way, `lua ← engine ← persistence ← web ←",
        "scripts`, and there is no import cycle (`tests/test_import_graph.py`).",
        "",
        "```mermaid",
        "flowchart RL",
        '  lua[("lua/: one script per operation")]',
    ]
    by_layer: dict[str, list[str]] = defaultdict(list)
    for g in groups:
        by_layer[g.split(".")[0]].append(g)
    for layer in LAYERS:
        lines.append(f'  subgraph layer_{layer}["{layer}/"]')
        for g in by_layer[layer]:
            label = f"{g.replace('.', '/')}/" if "." in g else f"{g}/*.py"
            lines.append(f'    {g.replace(".", "_")}["{label}"]')
        lines.append("  end")
    lines.append("  engine --> lua")
    for (a, b), n in sorted(weight.items()):
        lines.append(f"  {a.replace('.', '_')} -->|{n}| {b.replace('.', '_')}")
    lines += ["```", "", "## Modules", ""]
    for layer in LAYERS:
        lines += [f"### `{layer}/`", "", "| module | what it owns |", "| --- | --- |"]
        for name in sorted(n for n in found if n.split(".")[0] == layer):
            rel = found[name].relative_to(ROOT).as_posix()
            lines.append(f"| `{rel}` | {summary(found[name])} |")
        lines.append("")
    return "\n".join(lines)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.architecture", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render() + "\n"
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run python -m scripts.architecture")
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
