"""The layers point one way (`lua ← engine ← persistence ← web ← scripts`), no module imports
itself in a circle, and docs/architecture.md is the picture of the tree as it is. The graph is
read from the source by scripts/architecture.py (ast), every import counted: at the top of a
module, inside a function, under TYPE_CHECKING."""

from __future__ import annotations

from scripts import architecture
from scripts.architecture import LAYERS, cycles, graph


def test_the_graph_is_read() -> None:
    found = graph()
    assert "web.app" in found
    assert "web.routes" in found["web.app"]
    assert "engine.engine" in found["web.services.container"]
    assert "web.routes.stock" in found["web.routes.products"]
    assert "web.services.stock" in found["web.services.products"]
    # `from engine import errors` is the module engine.errors, not the package
    assert "engine.errors" in found["engine.replies"]
    assert "engine" not in found["engine.replies"]


def test_no_module_imports_itself_in_a_circle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_imports_point_down_the_layers_only() -> None:
    against = [
        f"{source} imports {target}"
        for source, targets in sorted(graph().items())
        for target in sorted(targets)
        if LAYERS.index(target.split(".")[0]) > LAYERS.index(source.split(".")[0])
    ]
    assert against == []


def test_nothing_imports_back_from_the_app_module() -> None:
    """web.app sits on top: only the callers that build an app (scripts/) import it."""
    importers = sorted(
        source
        for source, targets in graph().items()
        if "web.app" in targets and source.startswith("web.")
    )
    assert importers == []


def test_the_architecture_picture_is_current() -> None:
    assert architecture.main(["--check"]) == 0, "run: python -m scripts.architecture"
