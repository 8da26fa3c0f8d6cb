"""What a run found: the ratios against the targets, the tables, Markdown and the plot."""

from __future__ import annotations

import os
import platform
from typing import Any

from rich.markup import escape
from rich.table import Table

from scripts.bench.measure import console
from scripts.bench.options import BARE, BASELINE, OURS, PAIRS, STATEMENT

# -- ratios and targets -------------------------------------------------------------------------


def _row(
    rows: list[dict[str, Any]], system: str, mode: str, durability: str | None = None
) -> dict[str, Any] | None:
    for row in rows:  # the first match, unless the durability setting is named
        same = row["system"] == system and row["mode"] == mode
        if same and (durability is None or row.get("fsync") == durability):
            return row
    return None


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if a and b else None


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target: the measured ratio (or figure), the target and whether it is met."""
    out: dict[str, dict[str, Any]] = {}

    def target(name: str, value: float | None, want: float, higher: bool = True) -> None:
        met = value is not None and (value >= want if higher else value <= want)
        out[name] = {"value": value, "target": want, "higher_is_better": higher, "met": met}

    def informative(name: str, value: float | None, higher: bool = True) -> None:
        """A figure shown with the targets, with none to meet (target and met None)."""
        out[name] = {"value": value, "target": None, "higher_is_better": higher, "met": None}

    def pairs(
        rows: list[dict[str, Any]], mode: str, baseline: str = BASELINE
    ) -> list[tuple[str, Any, Any]]:
        """(suffix, ours, baseline) at the same durability, e.g. ' [always vs sync commit]'."""
        found = []
        for fsync, commit in PAIRS.items():
            ours, base = _row(rows, OURS, mode, fsync), _row(rows, baseline, mode, commit)
            if ours and base:
                found.append((f" [{fsync} vs {commit}]", ours, base))
        return found

    if "flash-sale" in results:
        rows = results["flash-sale"]["rows"]
        for suffix, ours, base in pairs(rows, "saturation"):
            throughput = _ratio(ours["ops_per_s"], base["ops_per_s"])
            target("flash_sale_throughput_x" + suffix, throughput, 8)
            p99 = _ratio(ours["p99_ms"], base["p99_ms"])
            target("flash_sale_p99_fraction" + suffix, p99, 0.2, False)
        # the single-statement design: what a user choosing PostgreSQL would write
        for suffix, ours, base in pairs(rows, "saturation", STATEMENT):
            throughput = _ratio(ours["ops_per_s"], base["ops_per_s"])
            # issue 12's target (issue 11's was 3)
            target("flash_sale_vs_statement_throughput_x" + suffix, throughput, 5)
            p99 = _ratio(ours["p99_ms"], base["p99_ms"])
            target("flash_sale_vs_statement_p99_fraction" + suffix, p99, 0.2, False)
        for suffix, ours, base in pairs(rows, "sale"):  # every buyer at once, then sold out
            throughput = _ratio(ours["ops_per_s"], base["ops_per_s"])
            target("flash_sale_burst_throughput_x" + suffix, throughput, 8)
            p99 = _ratio(ours["p99_ms"], base["p99_ms"])
            target("flash_sale_burst_p99_fraction" + suffix, p99, 0.2, False)
        ours, bare = _row(rows, OURS, "saturation"), _row(rows, BARE, "saturation")
        sale = [r for r in rows if r["mode"] == "sale" and r["system"] == OURS]
        target("flash_sale_oversold", sum(r["oversold"] for r in sale) if sale else None, 0, False)
        if ours and bare:
            target("api_vs_bare_endpoint", _ratio(ours["ops_per_s"], bare["ops_per_s"]), 0.75)
    if "catalog" in results:
        for suffix, ours, base in pairs(results["catalog"]["rows"], "saturation"):
            throughput = _ratio(ours["ops_per_s"], base["ops_per_s"])
            target("catalog_throughput_x" + suffix, throughput, 2)
    if "engine" in results:
        rows = results["engine"]["rows"]
        raw, wrapped = _row(rows, "redis-py", "in-process"), _row(rows, "engine", "in-process")
        if raw and wrapped:
            target("engine_vs_redis_py", _ratio(wrapped["ops_per_s"], raw["ops_per_s"]), 0.85)
        together = _row(rows, "engine, coalesced", "in-process")
        if wrapped and together:
            ratio = _ratio(together["ops_per_s"], wrapped["ops_per_s"])
            target("engine_coalesced_vs_alone", ratio, 2)
    if "cost" in results:
        c = results["cost"]
        target("redis_cpu_full_vs_reference", c.get("redis_cpu_full_vs_reference"), 3, False)
        # issue 12's: against the reference under the same HTTP load (cost.py)
        full_vs_http = c.get("redis_cpu_full_vs_reference_http")
        target("redis_cpu_full_vs_reference_http", full_vs_http, 1.5, False)
        target("api_cpu_full_vs_bare", c.get("api_cpu_full_vs_bare"), 1.33, False)
        target("api_cpu_read_vs_bare", c.get("api_cpu_read_vs_bare"), 1, False)
        if c.get("drain_vs_api_events_x") is not None:
            target("drain_vs_api_events_x", c["drain_vs_api_events_x"], 1.5)
    if "drain" in results:
        d = results["drain"]
        target("drain_events_per_s", d.get("drain_events_per_s"), 10_000)
        target("drain_lag_p99_ms", d.get("lag_p99_ms"), 500, False)
    if "cluster" in results:
        c = results["cluster"]
        # the busiest primary's share of the Redis CPU with 3 shards: 0.33 is an even spread
        informative("cluster_spread", c.get("cluster_spread"), False)
        wait = c.get("wait_cost") or {}
        informative("cluster_wait_cost_throughput_x", wait.get("throughput_x"), False)
        informative("cluster_wait_cost_p50_x", wait.get("p50_x"), False)
    return out


# -- output -------------------------------------------------------------------------------------

COLUMNS = (
    ("system", "system"),
    ("fsync", "durability"),
    ("mode", "load"),
    ("connections", "conns"),
    ("partitions", "partitions"),
    ("offered_per_s", "offered/s"),
    ("requests", "requests"),
    ("ops_per_s", "ops/s"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("ok", "ok"),
    ("refused", "409"),
    ("errors", "errors"),
    ("oversold", "oversold"),
    ("exact_counts", "exact"),
    ("api_cpu_us", "API CPU µs"),
    ("redis_cpu_us", "Redis CPU µs"),
    ("client_cpu_us", "client CPU µs"),
    ("redis_cpu_us_per_primary", "µs by primary"),
    ("primary_cpu_share", "share by primary"),
    ("replica_cpu_us", "replicas µs"),
    ("calls_per_fcall", "calls/FCALL"),
    ("postgres_cpu_us", "PG CPU µs"),
    ("drain_cpu_us_per_event", "drain CPU µs/event"),
    ("lag_p50_ms", "lag p50"),
    ("lag_p99_ms", "lag p99"),
    ("outbox_backlog", "backlog"),
    ("buyers", "buyers"),
    ("stock", "units"),
    ("refused_by_limit", "limit 409s"),
    ("waitlisted", "waitlisted"),
    ("walked_away", "walked away"),
    ("handed_off", "handed off"),
    ("handed_in_join_order", "in line order"),
    ("sold", "sold"),
    ("handoff_p50_ms", "hand-off p50 ms"),
    ("handoff_p99_ms", "hand-off p99 ms"),
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return "/".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 100 else f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_tables(results: dict[str, dict[str, Any]], targets: dict[str, dict[str, Any]]) -> None:
    for scenario, result in results.items():
        rows = result.get("rows") or []
        if rows:
            used = [(k, h) for k, h in COLUMNS if any(r.get(k) is not None for r in rows)]
            table = Table(*(h for _, h in used), title=f"bench: {scenario}")
            for row in rows:
                table.add_row(*(_cell(row.get(k)) for k, _ in used))
            console.print(table)
        for line in _breakdown(rows):
            console.print("  " + line)
        extra = {k: v for k, v in result.items() if k != "rows"}
        if extra:
            console.print("  " + ", ".join(f"{k} = {_cell(v)}" for k, v in extra.items()))
    if targets:
        table = Table("target", "measured", "wanted", "met", title="bench: against the targets")
        for name, t in targets.items():
            sign = "≥" if t["higher_is_better"] else "≤"
            wanted = "-" if t["target"] is None else f"{sign} {t['target']:g}"
            # escaped: a name's "[always vs sync commit]" is not a rich style
            table.add_row(escape(name), _cell(t["value"]), wanted, _met(t["met"]))
        console.print(table)


def markdown(report: dict[str, Any]) -> str:
    """The tables as Markdown (for docs/benchmarks.md)."""
    out: list[str] = []
    for scenario, result in report["scenarios"].items():
        rows = result.get("rows") or []
        out.append(f"### {scenario}\n")
        if rows:
            used = [(k, h) for k, h in COLUMNS if any(r.get(k) is not None for r in rows)]
            out.append("| " + " | ".join(h for _, h in used) + " |")
            out.append("|" + "---|" * len(used))
            out += ["| " + " | ".join(_cell(r.get(k)) for k, _ in used) + " |" for r in rows]
            out.append("")
            out += [f"- {line}" for line in _breakdown(rows)]
            if _breakdown(rows):
                out.append("")
        extra = {k: v for k, v in result.items() if k != "rows"}
        if extra:
            out.append(", ".join(f"{k} = {_cell(v)}" for k, v in extra.items()) + "\n")
    out.append("### against the targets\n")
    out.append("| target | measured | wanted | met |")
    out.append("|---|---|---|---|")
    for name, t in report["targets"].items():
        sign = ">=" if t["higher_is_better"] else "<="
        met = "-" if t["met"] is None else "yes" if t["met"] else "no"
        wanted = "-" if t["target"] is None else f"{sign} {t['target']:g}"
        out.append(f"| {name} | {_cell(t['value'])} | {wanted} | {met} |")
    return "\n".join(out) + "\n"


def _breakdown(rows: list[dict[str, Any]]) -> list[str]:
    """The cost rows' Redis commands per reservation: calls x µs (a script's or function's µs
    include the commands it runs); the cluster rows' shards, one by one."""
    out = []
    for row in rows:
        commands = row.get("redis_commands")
        if commands:
            parts = [f"{name} {c['calls']:g}x {c['usec']:g} µs" for name, c in commands.items()]
            out.append(f"{row['system']}, Redis per reservation: " + ", ".join(parts))
        if row.get("reservations_per_primary") is not None:
            ports = "/".join(str(port) for port in row["primary_ports"])
            out.append(
                f"{row['system']}: by primary ({ports}): "
                f"reservations {_cell(row['reservations_per_primary'])}, "
                f"Redis CPU µs per reservation it served "
                f"{_cell(row['redis_cpu_us_per_own_reservation'])}, projected "
                f"{_cell(row['projected_per_shard_per_s'])} reservations/s of one core each; "
                f"this process's CPU {_cell(row['client_cpu_us'])} µs per reservation"
            )
    return out


def _met(met: bool | None) -> str:
    if met is None:  # an informative figure, no target
        return "-"
    return "[green]yes[/green]" if met else "[red]no[/red]"


def plot(results: dict[str, dict[str, Any]], path: str) -> None:
    """Throughput and latency percentiles per scenario: ours against the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {s: r["rows"] for s, r in results.items() if r.get("rows")}
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), 2, figsize=(13, 3.6 * len(shown)), squeeze=False)
    for (scenario, rows), (left, right) in zip(shown.items(), axes, strict=True):
        labels = [
            f"{r['system']}\n{r['mode']}" + (f"\n{r['fsync']}" if r.get("fsync") else "")
            for r in rows
        ]
        palette = {BASELINE: "#c0392b", STATEMENT: "#e67e22", BARE: "#7f8c8d"}
        colours = [palette.get(r["system"], "#2471a3") for r in rows]
        left.bar(range(len(rows)), [r.get("ops_per_s") or 0 for r in rows], color=colours)
        left.set_xticks(range(len(rows)), labels, fontsize=7)
        left.set_title(f"{scenario}: throughput (ops/s)")
        width = 0.27
        for i, (key, shade) in enumerate((("p50_ms", 0.45), ("p95_ms", 0.7), ("p99_ms", 1.0))):
            right.bar(
                [x + (i - 1) * width for x in range(len(rows))],
                [r.get(key) or 0 for r in rows],
                width,
                label=key.split("_")[0],
                alpha=shade,
                color=colours,
            )
        right.set_yscale("log")
        right.set_xticks(range(len(rows)), labels, fontsize=7)
        right.set_title(f"{scenario}: latency p50 / p95 / p99 (ms, log)")
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        # a shared machine: how busy it was when the run ended (1, 5, 15 minutes)
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_generator": "scripts/bench/loadgen.py: asyncio + uvloop, raw keep-alive connections",
    }
