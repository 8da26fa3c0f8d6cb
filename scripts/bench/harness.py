"""A run: the services started, each scenario measured in turn, the report put together."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from scripts.bench.cluster import cluster_scenario
from scripts.bench.cost import cost_scenario
from scripts.bench.fair import fair_sale_scenario
from scripts.bench.inprocess import drain_scenario, engine_scenario
from scripts.bench.measure import Progress
from scripts.bench.options import Options
from scripts.bench.report import machine, ratios
from scripts.bench.scenarios import catalog, flash_sale, lifecycle
from scripts.bench.stack import Stack

RUNNERS: dict[str, Callable[[Stack, Progress], dict[str, Any]]] = {
    "flash-sale": flash_sale,
    "catalog": catalog,
    "lifecycle": lifecycle,
    "engine": engine_scenario,
    "drain": drain_scenario,
    "cost": cost_scenario,
    "cluster": cluster_scenario,
    "fair-sale": fair_sale_scenario,
}
# Scenarios that start services of their own: a run of only these starts no Stack.
SELF_CONTAINED = frozenset({"cluster"})


def run(opts: Options) -> dict[str, Any]:
    stack = Stack(opts)
    results: dict[str, dict[str, Any]] = {}
    with Progress() as progress:
        try:
            if any(s not in SELF_CONTAINED for s in opts.scenarios):
                progress.step("starting Redis, PostgreSQL (durable) and inventory serve --bench")
                stack.start()
            for scenario in opts.scenarios:
                if scenario not in SELF_CONTAINED:
                    stack.settle()
                results[scenario] = RUNNERS[scenario](stack, progress)
        finally:
            stack.close()
    return {
        "scenarios": results,
        "exact_counts": exact_counts(results),
        "targets": ratios(results),
        "machine": machine(),
        "options": {
            k: (sorted(v) if isinstance(v, set) else v) for k, v in dataclasses.asdict(opts).items()
        },
    }


def exact_counts(results: dict[str, dict[str, Any]]) -> bool:
    """Every sale sold exactly its units (no more, no fewer, every other buyer refused), every
    invariant held, and the database copy ended with Redis's counters after each scenario."""
    sales = all(
        row.get("exact_counts", True) for r in results.values() for row in r.get("rows") or []
    )
    held = all(r.get("invariants_ok", True) for r in results.values())
    copies = all(r.get("database_copy_ok", True) for r in results.values())
    return sales and held and copies
