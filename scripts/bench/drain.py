"""`inventory bench --scenario drain`: how fast the outbox reaches the database.

Two measures, against the Redis and database the settings name:
- throughput: a backlog of N events is drained from a standing start (events/s);
- lag: a steady load of reservations (from two producer processes calling the engine) at a
  fixed offered rate while a drainer runs in its own process; the lag of an event is the time
  from its script's timestamp (Redis clock) to the commit of the transaction that applied it
  (p50/p99, ms).
The products it creates are its own (`bench-<run>`); it never flushes.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import time
import uuid
from collections.abc import Sequence
from multiprocessing.synchronize import Event
from typing import Any

import redis

from engine import outbox
from engine.connection import connect_sync
from engine.engine import Engine
from engine.models import SYSTEM, CallContext, LineRequest
from engine.settings import Settings
from persistence.db import database_engine
from persistence.drain import drain_partition
from persistence.jobs import percentile

# one buyer per reservation (a buyer holds at most MAX_LIVE_RESERVATIONS_PER_CUSTOMER)
BUYERS = itertools.count()


async def _produce(
    settings: Settings, product: str, pairs: int, rate: float | None, *, release: bool = True
) -> float:
    """reserve (+ release) `pairs` times (1 or 2 events each); at `rate` per second if given."""
    async with Engine.from_settings(settings) as engine:
        started = time.monotonic()
        concurrency = 32
        done = 0

        async def one() -> None:
            buyer = CallContext(f"bench-{next(BUYERS)}")
            r = await engine.reserve([LineRequest(product, 1)], buyer)
            if release:
                await engine.release(r.id, buyer)

        while done < pairs:
            n = min(concurrency, pairs - done)
            if rate:
                due = started + (done + n) / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await asyncio.gather(*(one() for _ in range(n)))
            done += n
        return time.monotonic() - started


def _producer(settings: Settings, product: str, n: int, rate: float, out: Any) -> None:
    try:
        import uvloop

        out.put(uvloop.run(_produce(settings, product, n, rate, release=False)))
    except ImportError:  # pragma: no cover
        out.put(asyncio.run(_produce(settings, product, n, rate, release=False)))


def _drainer(settings: Settings, stop: Event, out: Any) -> None:
    """Drain every partition until told to stop and nothing is left (on a cluster too)."""
    client = connect_sync(settings)
    db = database_engine(settings)
    lags: list[int] = []
    applied = 0
    while True:
        stopping = stop.is_set()
        this_round = 0
        waiting: Sequence[int] = range(settings.partitions)
        if settings.partitions > 1:  # only those with events: one XLEN each, pipelined
            with client.pipeline(transaction=False) as pipe:
                for p in waiting:
                    outbox.length(pipe, p)
                waiting = [p for p, n in zip(waiting, pipe.execute(), strict=True) if n]
        for p in waiting:
            result = drain_partition(client, db, settings, p)
            lags.extend(result.lag_ms)
            this_round += result.applied
        applied += this_round
        if stopping and this_round == 0:
            break
        if this_round == 0:
            time.sleep(0.005)
    cpu = os.times()
    out.put((applied, lags, cpu.user + cpu.system))


def run(
    settings: Settings,
    *,
    events: int,
    rate: float,
    seconds: float,
    producers: int = 2,
    products: set[str] | None = None,
) -> dict[str, Any]:
    """`products`: where to note the product it makes (to check the database copy after)."""
    if settings.partitions != 1:
        raise ValueError("the drain bench runs on a single partition")
    product = f"bench-{uuid.uuid4().hex[:8]}"
    if products is not None:
        products.add(product)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    db = database_engine(settings)

    async def setup() -> None:
        async with Engine.from_settings(settings) as engine:
            await engine.setup_product(product, SYSTEM, price=100, stock={"main": 1_000_000})

    asyncio.run(setup())
    drain_partition(client, db, settings, 0)  # start from an empty outbox

    # 1. throughput from a standing backlog
    asyncio.run(_produce(settings, product, events // 2, None))
    backlog = outbox.length(client, 0)
    started = time.perf_counter()
    result = drain_partition(client, db, settings, 0)
    elapsed = time.perf_counter() - started

    # 2. lag under a steady offered load, drainer in its own process
    mp = multiprocessing.get_context("fork")
    stop, out = mp.Event(), mp.Queue()
    drainer = mp.Process(target=_drainer, args=(settings, stop, out))
    drainer.start()
    # reservations alone (one event each), from `producers` processes sharing the rate
    per = int(rate * seconds / producers)
    done = mp.Queue()
    making = [
        mp.Process(target=_producer, args=(settings, product, per, rate / producers, done))
        for _ in range(producers)
    ]
    for proc in making:
        proc.start()
    produced_in = max(done.get(timeout=600) for _ in making)
    for proc in making:
        proc.join(timeout=30)
    pairs = per * producers
    stop.set()
    applied, lags, _ = out.get(timeout=300)
    drainer.join(timeout=30)
    db.dispose()
    return {
        "database": settings.database_url_or_default.split("://", 1)[0],
        "backlog_events": backlog,
        "drained": result.applied,
        "drain_seconds": round(elapsed, 3),
        "drain_events_per_s": round(result.applied / elapsed) if elapsed else None,
        "batch": settings.drain_batch,
        "offered_reservations_per_s": rate,
        "achieved_reservations_per_s": round(pairs / produced_in, 1),
        "steady_events": applied,
        "lag_p50_ms": percentile(lags, 0.50),
        "lag_p99_ms": percentile(lags, 0.99),
        "lag_max_ms": max(lags) if lags else None,
    }
