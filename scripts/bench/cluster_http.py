"""`inventory bench --cluster`, over HTTP: the catalog scenario (scripts/bench/scenarios.py,
ours only) served by `inventory serve --bench` on a local Redis Cluster, with PARTITIONS=1 (one
shard does the work) and with the cluster's 64 partitions; each layout on services of its own
(PostgreSQL, the queue's Redis, the API: scripts/bench/stack.py). And what the cluster rows
share (scripts/bench/cluster.py): flushing the primaries, each node's CPU."""

from __future__ import annotations

from typing import Any

import redis

from engine.connection import CLUSTER_PARTITIONS
from scripts.bench.measure import Progress
from scripts.bench.meter import redis_cpu
from scripts.bench.scenarios import catalog
from scripts.bench.stack import Stack
from scripts.redis_cluster import RedisClusterServer

HTTP_ONE = "catalog over HTTP, 1 shard"
HTTP_SPREAD = "catalog over HTTP, 3 shards"


def flush_primaries(cluster: RedisClusterServer) -> None:
    """FLUSHALL on every primary (their replicas follow); the function library stays."""
    for port in cluster.primary_ports():
        with redis.Redis.from_url(cluster.node_url(port)) as client:
            client.flushall()


def nodes_cpu(clients: dict[int, redis.Redis]) -> dict[int, float]:
    """Each node's CPU so far (µs, INFO cpu: used_cpu_user + used_cpu_sys)."""
    return {port: redis_cpu(client)[0] for port, client in clients.items()}


def per(value: float, n: int) -> float | None:
    return round(value / n, 1) if n else None


def http_rows(
    cluster: RedisClusterServer, stack_opts: Any, progress: Progress
) -> list[dict[str, Any]]:
    """The catalog scenario over HTTP (scripts/bench/scenarios.py, ours only) with
    `inventory serve --bench` on the cluster: its 3 primaries with PARTITIONS=1 (one shard
    does the work), then with the cluster's 64 partitions. Each layout on services of its own
    (PostgreSQL, the queue's Redis, the API); Redis CPU per reservation on each primary."""
    rows: list[dict[str, Any]] = []
    primaries = cluster.primary_ports()
    for name, partitions in ((HTTP_ONE, 1), (HTTP_SPREAD, CLUSTER_PARTITIONS)):
        flush_primaries(cluster)
        stack = Stack(stack_opts, cluster=cluster, partitions=partitions)
        clients = {
            port: redis.Redis.from_url(cluster.node_url(port), decode_responses=True)
            for port in primaries
        }
        try:
            progress.step(f"cluster: {name}: PostgreSQL, the queue's Redis, inventory serve")
            stack.start()
            before = nodes_cpu(clients)
            result = catalog(stack, progress)
            after = nodes_cpu(clients)
        finally:
            stack.close()
            for client in clients.values():
                client.close()
        used = {port: after[port] - before[port] for port in primaries}
        total = sum(used.values())
        ok = sum(r["ok"] for r in result["rows"])
        saturation = result["rows"][0]
        rows.append(
            {
                "system": name,
                "mode": "http",
                "partitions": partitions,
                "wait_replicas": 0,
                "lines_per_reservation": "1-3",
                **{
                    k: saturation.get(k)
                    for k in ("ops_per_s", "p50_ms", "p99_ms", "ok", "refused", "errors")
                },
                "fixed_rate": {
                    k: result["rows"][1].get(k) for k in ("ops_per_s", "p50_ms", "p99_ms", "ok")
                },
                "connections": stack_opts.connections,
                "redis_cpu_us": per(total, ok),
                "primary_ports": primaries,
                "redis_cpu_us_per_primary": [per(used[port], ok) for port in primaries],
                "primary_cpu_share": [
                    round(used[port] / total, 2) if total else None for port in primaries
                ],
                "invariants_ok": result["invariants_ok"],
                "database_copy_ok": result["database_copy_ok"],
                "exact_counts": bool(result["invariants_ok"] and result["database_copy_ok"]),
            }
        )
    return rows
