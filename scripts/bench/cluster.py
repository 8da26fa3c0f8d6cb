"""`inventory bench --cluster` (`--scenario cluster`): the engine on Redis Cluster, in this
process (no HTTP), on local clusters of its own — one shard doing all the work, the partitions
spread over three shards, carts of two lines in one partition against carts across two, and
three shards with a replica each, without and with REDIS_WAIT_REPLICAS=1: reservations/s,
latency, and Redis's CPU per reservation on each primary.

Each row is `--seconds` of 64 tasks, each reserving one unit of a product picked at random from
64 (one per partition, with stock that never runs out) through `Engine.reserve`, coalesced as
the API does. The clusters (scripts/redis_cluster/) run in a temporary folder and are stopped
at the end, also on error; the bench's single Redis (stack.py) is not used. After each row the
units reserved in Redis must be exactly the reservations made, and the invariants hold."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.cluster

from engine import errors
from engine.connection import CLUSTER_PARTITIONS
from engine.engine import Engine
from engine.keys import partition_keys, partition_of
from engine.models import SYSTEM, CallContext, LineRequest
from engine.settings import Settings
from scripts.bench.cluster_http import flush_primaries, http_rows, nodes_cpu, per
from scripts.bench.inprocess import batch_sizes
from scripts.bench.loadgen import Outcome
from scripts.bench.measure import Progress, summarise
from scripts.bench.options import HUGE
from scripts.bench.stack import Stack
from scripts.redis_cluster import RedisClusterServer

CONCURRENCY = 64
PRODUCTS = 64
TTL_MS = 600_000  # far longer than a row: nothing expires while it is measured
# A node busy on a shared 2-core machine must not be taken for a failed one (a failover in the
# middle of a row); the clusters of the tests use 1 s.
NODE_TIMEOUT_MS = 15_000
FSYNC = "everysec"  # the clusters' appendfsync
ONE_SHARD = "1 shard"
SPREAD = "3 shards"
CART_SAME = "3 shards, carts of 2 lines in 1 partition"
CART_ACROSS = "3 shards, carts of 2 lines across partitions"
REPLICATED = "3 shards + replicas, no WAIT"
WAITED = "3 shards + replicas, REDIS_WAIT_REPLICAS=1"
T = TypeVar("T")


def one_per_partition(prefix: str, count: int) -> list[str]:
    """`count` (at most CLUSTER_PARTITIONS) names `<prefix><n>`, each in a partition of its own
    at the cluster's partition count, by partition."""
    seen: dict[int, str] = {}
    i = 0
    while len(seen) < min(count, CLUSTER_PARTITIONS):
        name = f"{prefix}{i}"
        seen.setdefault(partition_of(name, CLUSTER_PARTITIONS), name)
        i += 1
    return [seen[p] for p in sorted(seen)]


def product_names() -> list[str]:
    """PRODUCTS names, each in a partition of its own at the cluster's partition count."""
    return one_per_partition("cluster-bench-", PRODUCTS)


def partner_names() -> list[str]:
    """A second product in each partition of product_names(), in the same order."""
    return one_per_partition("cluster-bench-b-", PRODUCTS)


def _cart(kind: str, rng: random.Random, names: list[str], partners: list[str]) -> list[str]:
    """The products of one reservation: one (`one`), two of one partition (`same`), or two of
    two partitions (`across`: a cart across partitions, engine/carts.py)."""
    i = rng.randrange(len(names))
    if kind == "one":
        return [names[i]]
    if kind == "same":
        return [names[i], partners[i]]
    j = (i + rng.randrange(1, len(names))) % len(names)
    return [names[i], names[j]]


def _shard_of(cluster: RedisClusterServer, names: list[str], partitions: int) -> dict[str, int]:
    """The port of the primary serving each product's partition."""
    client: Any = redis.cluster.RedisCluster.from_url(cluster.url)
    try:
        found: dict[int, int] = {}
        for p in {partition_of(name, partitions) for name in names}:
            k = partition_keys(p)
            found[p] = int(client.get_node_from_key(k.stock).port)
    finally:
        client.close()
    return {name: found[partition_of(name, partitions)] for name in names}


async def _row(
    cluster: RedisClusterServer, name: str, settings: Settings, seconds: float, kind: str = "one"
) -> dict[str, Any]:
    """One timed row on `cluster` (flushed before), as described in the module's docstring."""
    primaries, replicas = cluster.primary_ports(), cluster.replica_ports()
    clients = {
        port: redis.Redis.from_url(cluster.node_url(port), decode_responses=True)
        for port in (*primaries, *replicas)
    }
    names, partners = product_names(), partner_names()
    buyers = itertools.count()  # one buyer per reservation (MAX_LIVE_RESERVATIONS_PER_CUSTOMER)
    try:
        async with Engine.from_settings(settings) as engine:
            partitions = engine.settings.partitions
            await engine.scripts.load()  # on every primary
            everything = names + partners if kind != "one" else names
            await asyncio.gather(
                *(
                    engine.setup_product(p, SYSTEM, price=1999, stock={"main": HUGE})
                    for p in everything
                )
            )
            # warm: each product once, at the row's concurrency (the pools' connections open)
            await asyncio.gather(
                *(
                    engine.reserve([LineRequest(p, 1)], CallContext(f"bench-{i}"), ttl_ms=TTL_MS)
                    for i, p in enumerate(names)
                )
            )
            assert engine.coalescer is not None
            sizes = engine.coalescer.sizes
            sizes.clear()
            made: Counter[str] = Counter()  # units reserved, per product
            carts = 0  # reservations made
            failures: Counter[str] = Counter()
            outcomes: list[Outcome] = []
            not_replicated = 0
            end = time.monotonic() + seconds

            async def buyer(seed: int) -> None:
                nonlocal not_replicated, carts
                rng = random.Random(seed)
                while time.monotonic() < end:
                    products = _cart(kind, rng, names, partners)
                    lines = [LineRequest(p, 1) for p in products]
                    started = time.monotonic()
                    try:
                        ctx = CallContext(f"bench-{next(buyers)}")
                        await engine.reserve(lines, ctx, ttl_ms=TTL_MS)
                    except errors.NotReplicated:  # made on the primary, not acknowledged
                        outcomes.append(Outcome("", 503, 0.0, time.monotonic() - started))
                        made.update(products)
                        carts += 1
                        not_replicated += 1
                    except (redis.exceptions.RedisError, errors.EngineError) as exc:
                        outcomes.append(Outcome("", 500, 0.0, time.monotonic() - started))
                        failures[type(exc).__name__] += 1
                        await asyncio.sleep(0.05)
                    else:
                        outcomes.append(Outcome("", 201, 0.0, time.monotonic() - started))
                        made.update(products)
                        carts += 1

            before, me = nodes_cpu(clients), os.times()
            started = time.monotonic()
            await asyncio.gather(*(buyer(i) for i in range(CONCURRENCY)))
            elapsed = time.monotonic() - started
            after, me_after = nodes_cpu(clients), os.times()

            # exact: the units reserved in Redis are the reservations made, warm-up included
            stocks = await engine.get_stocks(everything)
            reserved = sum(s.reserved for s in stocks.values())
            intact = len(stocks) == len(everything) and all(
                s.available + s.reserved == HUGE for s in stocks.values()
            )
            invariants_ok = all(r.ok for r in await engine.check_invariants())
            batches = batch_sizes(sizes)
    finally:
        for client in clients.values():
            client.close()

    timed, units = carts, sum(made.values())
    shard = _shard_of(cluster, everything, partitions)
    served = Counter(dict.fromkeys(primaries, 0))
    for product, n in made.items():
        served[shard[product]] += n
    used = {port: after[port] - before[port] for port in clients}
    total = sum(used[port] for port in primaries)
    own = [per(used[port], served[port]) for port in primaries]
    client_us = (me_after.user + me_after.system - me.user - me.system) * 1e6
    # summarise's, less what says little here (the table is wide): no call can be refused
    # (the stock never runs out), `requests` is ok + errors, p50 and p99 tell the latency, and
    # every row is at appendfsync FSYNC
    row = {
        k: v
        for k, v in summarise(outcomes, system=name, mode="in-process").items()
        if k not in ("refused", "requests", "p95_ms", "max_ms")
    }
    row |= {
        "appendfsync": FSYNC,
        "connections": CONCURRENCY,
        "partitions": partitions,
        "wait_replicas": settings.redis_wait_replicas,
        "ops_per_s": round(timed / elapsed, 1) if elapsed > 0 else None,
        "seconds": round(elapsed, 2),
        "not_replicated": not_replicated,
        "error_kinds": dict(failures),
        "lines_per_reservation": {"one": 1, "same": 2, "across": 2}[kind],
        "made": timed + len(names),
        "reserved_in_redis": reserved,
        "exact_counts": intact and reserved == units + len(names),
        "invariants_ok": invariants_ok,
        "redis_cpu_us": per(total, timed),
        # this process (the engine and its cluster client): the load generator too
        "client_cpu_us": per(client_us, timed),
        "primary_ports": primaries,
        "redis_cpu_us_per_primary": [per(used[port], timed) for port in primaries],
        "primary_cpu_share": [
            round(used[port] / total, 2) if total else None for port in primaries
        ],
        "reservations_per_primary": [served[port] for port in primaries],
        # a shard's own cost: its CPU over the reservations it served (none: idle)
        "redis_cpu_us_per_own_reservation": own,
        "projected_per_shard_per_s": [round(1e6 / us) if us else None for us in own],
        "replica_cpu_us": per(sum(used[port] for port in replicas), timed) if replicas else None,
        **batches,
    }
    return row


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if a and b else None


def _note(rows: dict[str, dict[str, Any]]) -> str:
    def projected(row: dict[str, Any] | None) -> str:
        found = [f"{n:,}" for n in (row or {}).get("projected_per_shard_per_s") or [] if n]
        return " / ".join(found) or "-"

    return (
        f"This machine has {os.cpu_count()} cores for the client (one Python process) and every "
        "node, so more shards can't show more total throughput here. What scales is each "
        "shard's own work: projected capacity per shard = 1e6 / (Redis CPU µs per reservation "
        f"on that shard) reservations/s of one core — {ONE_SHARD}: "
        f"{projected(rows.get(ONE_SHARD))}; {SPREAD}: {projected(rows.get(SPREAD))} per shard. "
        f"Every node at appendfsync {FSYNC}. The cart rows reserve 2 units per reservation: "
        "two products of one partition (one function call), or of two partitions (the saga of "
        "engine/carts.py: the other part held, the home's reservation its commit point, the "
        "other part following, the step cleared); `cart_across_cost` is the second's Redis "
        "CPU per reservation over the first's."
    )


def cluster_scenario(stack: Stack, progress: Progress) -> dict[str, Any]:
    seconds = stack.opts.seconds
    tmp = Path(tempfile.mkdtemp(prefix="ire-bench-cluster-"))
    rows: list[dict[str, Any]] = []
    # (replicas per primary, its rows: (name, settings of the row)); PARTITIONS left unset
    # takes the cluster's default, 64
    layouts: list[tuple[int, list[tuple[str, dict[str, Any]]]]] = [
        (
            0,
            [
                (ONE_SHARD, {"partitions": 1, "partitions_given": True}),
                (SPREAD, {}),
                (CART_SAME, {}),
                (CART_ACROSS, {}),
            ],
        ),
        (1, [(REPLICATED, {"redis_wait_replicas": 0}), (WAITED, {"redis_wait_replicas": 1})]),
    ]
    kinds = {CART_SAME: "same", CART_ACROSS: "across"}
    try:
        # one cluster at a time, to keep the machine quiet
        for replicas, runs in layouts:
            cluster = RedisClusterServer(
                tmp / f"replicas-{replicas}",
                primaries=3,
                replicas=replicas,
                appendfsync=FSYNC,
                node_timeout_ms=NODE_TIMEOUT_MS,
            )
            progress.step(f"cluster: starting 3 primaries with {replicas} replica(s) each")
            try:
                cluster.start()
                for name, given in runs:
                    flush_primaries(cluster)
                    settings = Settings(redis_url=cluster.url, redis_cluster=True, **given)
                    progress.step(f"cluster: {name}, {CONCURRENCY} tasks for {seconds:g}s")
                    kind = kinds.get(name, "one")
                    rows.append(_run(_row(cluster, name, settings, seconds, kind)))
                if not replicas:
                    http_opts = dataclasses.replace(stack.opts, baselines=(), fsync=(FSYNC,))
                    rows.extend(http_rows(cluster, http_opts, progress))
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by_name = {r["system"]: r for r in rows}
    spread = by_name.get(SPREAD)
    shares = [s for s in (spread or {}).get("primary_cpu_share") or [] if s is not None]
    without, waited = by_name.get(REPLICATED), by_name.get(WAITED)
    wait_cost = {
        "throughput_x": _ratio((without or {}).get("ops_per_s"), (waited or {}).get("ops_per_s")),
        "p50_x": _ratio((waited or {}).get("p50_ms"), (without or {}).get("p50_ms")),
    }
    same, across = by_name.get(CART_SAME) or {}, by_name.get(CART_ACROSS) or {}
    return {
        "rows": rows,
        "invariants_ok": all(r["invariants_ok"] for r in rows),
        "cluster_spread": max(shares) if shares else None,
        "wait_cost": wait_cost,
        "cart_across_cost": {
            "redis_cpu_x": _ratio(across.get("redis_cpu_us"), same.get("redis_cpu_us")),
            "client_cpu_x": _ratio(across.get("client_cpu_us"), same.get("client_cpu_us")),
            "p50_x": _ratio(across.get("p50_ms"), same.get("p50_ms")),
        },
        "note": _note(by_name),
    }
