"""The background jobs, run by RQ workers: importable, primitive arguments, safe to run twice.

Clients are built lazily, once per worker process, from the environment's settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from functools import cache
from typing import Any

import redis
from rq import Queue, Retry
from sqlalchemy import Engine as DatabaseEngine

from engine import bookkeeping, outbox
from engine.connection import connect_sync, resolve
from engine.engine import Engine
from engine.settings import Settings
from persistence import behind
from persistence.db import database_engine
from persistence.drain import DrainResult, drain_partition

QUEUE = "inventory"
# Postgres down: the drain retries with backoff; events wait in the outbox meanwhile.
DRAIN_RETRY = Retry(max=8, interval=[1, 2, 4, 8, 15, 30, 60, 60])
JOB_RESULT_TTL = 300  # seconds: periodic jobs would otherwise keep every result forever


@cache
def settings() -> Settings:
    """The environment's settings, one server or a cluster decided (engine/connection.py)."""
    return resolve(Settings.from_env(), warn=False)


@cache
def redis_client() -> redis.Redis:
    return connect_sync(settings())


@cache
def database() -> DatabaseEngine:
    return database_engine(settings())


def queue_connection(s: Settings | None = None) -> redis.Redis:
    """A connection to the Redis of the job queue (QUEUE_REDIS_URL, else REDIS_URL), which
    does not decode responses, as RQ wants. RQ cannot run on a Redis Cluster: there the queue
    must have a single server of its own."""
    s = s or settings()
    if not s.queue_redis_url and s.redis_cluster:
        raise ValueError(
            "REDIS_URL names a Redis Cluster, and RQ's job queue cannot run on one: "
            "set QUEUE_REDIS_URL to a single Redis server for the queue"
        )
    return redis.Redis.from_url(s.queue_url)


def queue(connection: redis.Redis | None = None) -> Queue:
    """The jobs' queue."""
    return Queue(QUEUE, connection=connection or queue_connection())


def percentile(values: list[int], p: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def summary(result: DrainResult) -> dict[str, Any]:
    out = dataclasses.asdict(result)
    lag = out.pop("lag_ms")
    out["lag_p50_ms"] = percentile(lag, 0.50)
    out["lag_p99_ms"] = percentile(lag, 0.99)
    out["lag_max_ms"] = max(lag) if lag else None
    return out


def _keep_last_drain(client: redis.Redis, partition: int, result: dict[str, Any]) -> None:
    if not result["applied"] or result["lag_p50_ms"] is None:
        return  # an idle drain has no lag to tell: the last real one stays
    fields = ("applied", "lag_p50_ms", "lag_p99_ms", "lag_max_ms")
    record = {"at_ms": int(time.time() * 1000), **{f: result[f] for f in fields}}
    bookkeeping.keep_last_drain(client, partition, record)
    bookkeeping.keep_series(
        client, partition, record["at_ms"], result["applied"], result["lag_p99_ms"]
    )


def drain(partition: int) -> dict[str, Any]:
    """Drain one partition's outbox into the database."""
    client = redis_client()
    outbox.drain_started(client, partition)
    result = summary(drain_partition(client, database(), settings(), partition))
    _keep_last_drain(client, partition, result)
    return result


def drain_all() -> list[dict[str, Any]]:
    return [drain(p) for p in range(settings().partitions)]


def enqueue_drain(q: Queue, partition: int) -> None:
    q.enqueue(drain, partition, retry=DRAIN_RETRY, result_ttl=JOB_RESULT_TTL, failure_ttl=86_400)


def request_drain(q: Queue, client: redis.Redis, partition: int) -> bool:
    """Enqueue a drain of `partition` unless one is already waiting: no job storm under load.
    (Async callers use persistence.trigger.DrainTrigger: the same flag, engine/outbox.py.)"""
    if not outbox.ask_drain(client, partition):
        return False
    enqueue_drain(q, partition)
    return True


def reconcile_check() -> dict[str, Any]:
    """Compare Redis and the database (report only); the last result is kept for operators."""
    import logging

    from persistence.reconcile import check

    report = check(redis_client(), database(), settings())
    result = report.to_json()
    bookkeeping.keep_last_reconcile(redis_client(), json.dumps(result, default=str))
    if not report.ok:
        logging.getLogger("inventory.reconcile").warning(
            "reconcile found drift: %s", json.dumps(result, default=str)[:4000]
        )
    return {"ok": report.ok, "drift": len(report.drift)}


def purge_idempotency() -> dict[str, int]:
    """Forget the idempotency records whose keys have expired (Redis forgot them already)."""
    from persistence.records import purge_idempotency as purge

    return {"purged": purge(database())}


def expire() -> dict[str, Any]:
    """Release due reservations in every partition, and finish the steps of carts across
    partitions a crashed process left (the sweep)."""

    async def run() -> dict[str, Any]:
        # a Redis that has started is checked against the database before its first release
        checked = behind.checkpoints(database())
        async with Engine.from_settings(settings(), checkpoints=checked) as engine:
            result = await engine.expire()
        return result.as_json()

    outcome = asyncio.run(run())
    if any(outcome[k] for k in ("expired", "carts", "timed_out", "waitlist_left")):
        client = redis_client()
        bookkeeping.count_expired(client, outcome["expired"])
        q = queue()
        for p in range(settings().partitions):
            request_drain(q, client, p)
    return outcome
