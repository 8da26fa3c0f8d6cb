"""`inventory bench --scenario cost`: what one reservation costs in CPU, against its work.

At one concurrency (`--cost-connections`, 64), 1,000 buyers making 4 requests each (at most
`--seconds` x 3) in each row:
- `full`: `POST /api/reservations/` with an Idempotency-Key, a drainer writing the events
  through (its Redis calls count in Redis's CPU: the events are read back once drained);
- `bare`: the bench's bare endpoint (the engine's reserve call and nothing around it), the
  drainer on too;
- `product read`: `GET /api/products/{id}/` as a customer (no drainer: reads write nothing);
- `single-statement`, at each `--baseline-commit`: the PostgreSQL baseline's reservation (no
  drainer);
- `reference`: `scripts/bench/reference.lua` — only a reservation's real work (read the
  counter, move the units, the record with its expiry, its index entry, one event: five
  writes) — called with EVALSHA straight from a redis-py client in this process;
- `reference over HTTP`: the same script behind the bare endpoint's stack
  (`POST /bench/bare/reference`), each call alone, under the same HTTP load as `full` and
  `bare`: what a command costs Redis grows with what else runs on the machine's two cores
  (the same HSET costs ~3x as much under the API's load as called alone), so the full API is
  set against the reference under like load too (`redis_cpu_full_vs_reference_http`).

Per reservation: the API server's CPU (µs; utime + stime of the uvicorn processes from
`/proc/<pid>/stat`), Redis's CPU (µs; `INFO cpu` used_cpu_user + used_cpu_sys) and where it
went (`INFO commandstats`: calls and µs per reservation by command — a script's or function's
µs include the commands it runs). Deltas over the timed run, the drain of its events included.
Then the drain's own cost: a backlog the full API made with no drainer running, drained here
from a standing start — events/s, this process's CPU (the worker's work), PostgreSQL's
processes' CPU, rows written and transactions per event — and the drain's events/s against the
events/s the API produced at saturation. And every process's CPU per reservation, all in
(`cpu_all_in_us`: API + Redis + PostgreSQL, and for ours the worker's drain of the event), ours
against the single statement's: on 2 shared cores, what bounds each one's rate.
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from engine import outbox
from persistence import schema
from persistence.db import database_engine
from persistence.drain import drain_partition
from scripts.bench import loadgen
from scripts.bench.measure import (
    Progress,
    buyer_tokens,
    drainer,
    nothing,
    offer,
    reserve_call,
    summarise,
)
from scripts.bench.meter import Meter
from scripts.bench.options import (
    BARE,
    BASELINES,
    HUGE,
    OURS,
    REFERENCE_HTTP,
    STATEMENT,
)
from scripts.bench.reference import reference_row, stocked
from scripts.bench.stack import Stack

PER_BUYER = 4  # requests per buyer in each row (1,000 buyers)


# -- the rows ---------------------------------------------------------------------------------


def _offer(stack: Stack, calls: list[loadgen.Call]) -> list[loadgen.Outcome]:
    """The timed load of a row: each buyer's request PER_BUYER times over (cycled), or as many
    as `--seconds` x 3 allows. The same count per buyer in every row, so that what a server
    pays once per buyer (its first token check, account read, rate-limit bucket, in each
    process) weighs the same per request in each row, whatever its speed."""
    opts = stack.opts
    return offer(
        stack,
        "saturate",
        calls,
        connections=opts.cost_connections,
        seconds=opts.seconds * 3,
        limit=len(calls) * PER_BUYER,
    )


def _http_row(
    stack: Stack,
    meter: Meter,
    system: str,
    progress: Progress,
    durability: str | None = None,
    first: int = 40_000,
) -> dict[str, Any]:
    opts = stack.opts
    conns = opts.cost_connections
    hot = stack.product_id()
    reference = system == REFERENCE_HTTP
    if not reference:  # (the reference's units are on keys of its own: reference.stocked)
        stack.stock(system, {hot: HUGE})
    tokens = buyer_tokens(stack, system, first, 1000)
    body = {"product": hot, "quantity": 1}
    calls = [reserve_call(stack, system, t, body, "reserve", durability) for t in tokens]
    baseline = system in BASELINES
    also = f" ({durability})" if durability else ", drainer on"
    progress.step(f"cost: {system}{also}, {conns} connections for {opts.seconds:g}s")
    stack.drain_to_end()
    with stocked(stack, hot) if reference else nothing():
        before = meter.read()
        with nothing() if baseline or reference else drainer(stack) as lag:
            got = _offer(stack, calls)
        # after the drainer has drained every event the run made: their drain counts too
        after = meter.read()
    fsync = durability or opts.fsync[0]
    row = summarise(got, system=system, fsync=fsync, mode="cost", connections=conns)
    row.update(meter.delta(before, after, row["ok"]))
    row.pop("self_cpu_us")
    drained = lag.get("_drained") or 0
    row["drain_cpu_us_per_event"] = (
        round(lag["_drain_cpu_s"] * 1e6 / drained, 1) if drained else None
    )
    return row


def _read_row(
    stack: Stack, meter: Meter, progress: Progress, first: int = 42_000
) -> dict[str, Any]:
    """`GET /api/products/{id}/` of one hot product, as a customer, at the same concurrency:
    the product page a sale's buyers read far more often than they buy (no drainer: reads
    write nothing)."""
    opts = stack.opts
    conns = opts.cost_connections
    hot = stack.product_id()
    stack.stock(OURS, {hot: HUGE})
    # its catalog row, under the bench's own id (the API's create would number it itself)
    now = datetime.now(UTC)
    page = {"id": hot, "sku": f"bench-read-{uuid.uuid4().hex[:8]}", "name": "A product page"}
    page |= {"price": 1999, "currency": stack.settings.default_currency}
    db = database_engine(stack.settings)
    try:
        with db.begin() as conn:
            conn.execute(schema.products.insert().values(**page, created_at=now, updated_at=now))
    finally:
        db.dispose()
    tokens = buyer_tokens(stack, OURS, first, 1000)
    path = f"/api/products/{hot}/"
    calls = [
        loadgen.encode("GET", path, host=stack.host, headers={"Authorization": f"Bearer {t}"})
        for t in tokens
    ]
    progress.step(f"cost: product reads, {conns} connections for {opts.seconds:g}s")
    offer(stack, "saturate", calls[:64], connections=conns, seconds=0.5)  # the catalog cached
    before = meter.read()
    got = _offer(stack, calls)
    after = meter.read()
    row = summarise(got, system="product read", fsync=opts.fsync[0], mode="cost")
    row["connections"] = conns
    row.update(meter.delta(before, after, row["ok"]))
    for name in ("self_cpu_us", "pg_rows", "pg_transactions"):
        row.pop(name)
    return row


def _drain_row(stack: Stack, meter: Meter, progress: Progress) -> dict[str, Any]:
    """A backlog made by the full API with nothing draining, then drained here alone."""
    opts = stack.opts
    conns = opts.cost_connections
    hot = stack.product_id()
    stack.stock(OURS, {hot: HUGE})
    tokens = buyer_tokens(stack, OURS, 41_000, 1000)
    calls = [reserve_call(stack, OURS, t, {"product": hot, "quantity": 1}, "r") for t in tokens]
    stack.drain_to_end()
    client = stack.redis_client()
    db = database_engine(stack.settings)
    parts = range(stack.settings.partitions)
    try:
        for p in parts:  # warm: connected, statements compiled
            drain_partition(client, db, stack.settings, p)
        progress.step(f"cost: the full API for {opts.seconds:g}s with no drainer: a backlog")
        got = offer(stack, "saturate", calls, connections=conns, seconds=opts.seconds)
        made = summarise(got)
        progress.step("cost: draining that backlog alone")
        backlog = sum(outbox.length(client, p) for p in parts)
        before = meter.read()
        started = time.perf_counter()
        applied = sum(drain_partition(client, db, stack.settings, p).applied for p in parts)
        elapsed = time.perf_counter() - started
        after = meter.read()  # before the database connections close (their CPU is read live)
    finally:
        db.dispose()
        client.close()
    # a backend reports its rows and commits to pg_stat_database when it exits (or idle, after
    # a second or more): read them once the drain's connections have closed
    time.sleep(0.5)
    after["pg"] = meter.pg_counts()
    delta = meter.delta(before, after, applied)
    return {
        "api_events_per_s": made["ops_per_s"],
        "backlog_events": backlog,
        "drained": applied,
        "drain_events_per_s": round(applied / elapsed) if elapsed else None,
        "worker_cpu_us_per_event": delta["self_cpu_us"],
        "postgres_cpu_us_per_event": delta["postgres_cpu_us"],
        "redis_cpu_us_per_event": delta["redis_cpu_us"],
        "pg_rows_per_event": delta["pg_rows"],
        "pg_transactions_per_event": delta["pg_transactions"],
    }


def _all_in(row: dict[str, Any], drain_us: float | None) -> float:
    """API + Redis + PostgreSQL CPU per reservation, and the worker's drain of its event."""
    parts = (row.get("api_cpu_us"), row.get("redis_cpu_us"), row.get("postgres_cpu_us"), drain_us)
    return round(sum(p for p in parts if p), 1)


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if a and b else None


# Per-operation figures of a row: pooled over rounds weighted by the operations each counted.
PER_OP = ("api_cpu_us", "redis_cpu_us", "postgres_cpu_us", "drain_cpu_us_per_event")
SUMMED = ("requests", "ok", "refused", "errors")
PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")


def pool(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the same row measured in several rounds: counts summed; CPU and commands
    per operation pooled (all the rounds' CPU over all their operations); the rate, all the
    operations over all the rounds' time; the latency percentiles the rounds' median and the
    max the largest."""
    if len(rows) == 1:
        return rows[0]
    out = dict(rows[0])
    weights = [max(r.get("ok") or 0, 0) for r in rows]
    total = sum(weights) or 1
    for name in SUMMED:
        if name in out:
            out[name] = sum(r[name] for r in rows)
    for name in PER_OP:
        per_op: list[float] = [r[name] for r in rows if r.get(name) is not None]
        if len(per_op) == len(rows):
            out[name] = round(sum(v * w for v, w in zip(per_op, weights, strict=True)) / total, 1)
    rates = [(r["requests"], r["ops_per_s"]) for r in rows if r.get("ops_per_s")]
    if rates:
        out["ops_per_s"] = round(sum(n for n, _ in rates) / sum(n / v for n, v in rates), 1)
    for name in PERCENTILES:
        ms: list[float] = [r[name] for r in rows if r.get(name) is not None]
        if ms:
            out[name] = round(statistics.median(ms), 2)
    if any(r.get("max_ms") is not None for r in rows):
        out["max_ms"] = max(r["max_ms"] for r in rows if r.get("max_ms") is not None)
    commands: dict[str, dict[str, float]] = {}
    for row, w in zip(rows, weights, strict=True):
        for name, c in row.get("redis_commands", {}).items():
            into = commands.setdefault(name, {"calls": 0.0, "usec": 0.0})
            into["calls"] += c["calls"] * w / total
            into["usec"] += c["usec"] * w / total
    if commands:
        ranked = sorted(commands.items(), key=lambda kv: -kv[1]["usec"])[:8]
        out["redis_commands"] = {name: {k: round(v, 2) for k, v in c.items()} for name, c in ranked}
    out["rounds"] = len(rows)
    return out


def median_ratio(pairs: list[tuple[Any, Any]]) -> tuple[float | None, list[float]]:
    """The median of the rounds' ratios a/b (each measured in one round, side by side), and
    each round's."""
    each = [r for a, b in pairs if (r := _ratio(a, b)) is not None]
    return (round(statistics.median(each), 2) if each else None), each


def cost_scenario(stack: Stack, progress: Progress) -> dict[str, Any]:
    """The rows compared by the targets (full, bare, product read, reference) are measured in
    `--cost-rounds` interleaved rounds, each with buyers of its own: on a shared machine a
    neighbour's burst lands on one round's rows, not on one row. Each ratio is the median of
    its rounds' ratios; each row's figures are pooled over the rounds."""
    meter = Meter(stack)
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for r in range(stack.opts.cost_rounds):
            if stack.opts.cost_rounds > 1:
                progress.step(f"cost: round {r + 1}/{stack.opts.cost_rounds}")
            offset = 10_000 * r
            rounds.append(
                {
                    "full": _http_row(stack, meter, OURS, progress, first=40_000 + offset),
                    "bare": _http_row(stack, meter, BARE, progress, first=40_000 + offset),
                    "read": _read_row(stack, meter, progress, first=42_000 + offset),
                    "reference": reference_row(stack, meter, progress),
                    "reference_http": _http_row(
                        stack, meter, REFERENCE_HTTP, progress, first=40_000 + offset
                    ),
                }
            )
        full, bare, read, reference, reference_http = (
            pool([one[name] for one in rounds])
            for name in ("full", "bare", "read", "reference", "reference_http")
        )
        statements = [
            _http_row(stack, meter, STATEMENT, progress, durability)
            for durability in stack.opts.baseline_commit
            if STATEMENT in stack.opts.baselines
        ]
        drain = _drain_row(stack, meter, progress) if stack.target is None else {}
    finally:
        meter.close()
    full["system"], bare["system"] = "full API", "bare endpoint"
    api_rate = drain.get("api_events_per_s")
    # Every process's CPU per reservation (the load generator's aside): on a machine whose
    # cores the API, Redis, the drain and PostgreSQL share, what bounds the rate.
    all_in = {"full API": _all_in(full, drain.get("worker_cpu_us_per_event"))}
    all_in |= {f"{STATEMENT} ({r['fsync']})": _all_in(r, None) for r in statements}
    ratios: dict[str, Any] = {}
    for name, (a, b, field) in {
        "redis_cpu_full_vs_reference": ("full", "reference", "redis_cpu_us"),
        "redis_cpu_bare_vs_reference": ("bare", "reference", "redis_cpu_us"),
        "redis_cpu_full_vs_reference_http": ("full", "reference_http", "redis_cpu_us"),
        "redis_cpu_bare_vs_reference_http": ("bare", "reference_http", "redis_cpu_us"),
        "api_cpu_full_vs_bare": ("full", "bare", "api_cpu_us"),
        "api_cpu_read_vs_bare": ("read", "bare", "api_cpu_us"),
    }.items():
        ratios[name], each = median_ratio([(o[a][field], o[b][field]) for o in rounds])
        if len(rounds) > 1:
            ratios[f"{name}_rounds"] = each
    return {
        "rows": [full, bare, reference, reference_http, read, *statements],
        "cost_rounds": len(rounds),
        **ratios,
        **drain,
        "drain_vs_api_events_x": _ratio(drain.get("drain_events_per_s"), api_rate),
        "cpu_all_in_us": all_in,
        **stack.checks(),
    }
