"""The reference of `inventory bench --scenario cost`: `reference.lua`, a reservation's real work
in Redis and nothing else, called straight from redis-py (`reference_row`), and behind the
bare endpoint's stack (`POST /bench/bare/reference`, scripts/bench/app.py) on keys of its own
(`keys`, `fields`; `stocked` puts the units there for a row and clears the keys after)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio

from scripts.bench.options import HUGE

if TYPE_CHECKING:
    from scripts.bench.measure import Progress
    from scripts.bench.meter import Meter
    from scripts.bench.stack import Stack

SCRIPT = Path(__file__).with_name("reference.lua")
PREFIX = "bench:ref:"  # the keys of the reference over HTTP


def keys(rid: str) -> list[str]:
    """The reference endpoint's KEYS for reservation `rid`: the stock hash (`fields`), the
    record, the expiry index, the stream (reference.lua)."""
    return [f"{PREFIX}stock", f"{PREFIX}r:{rid}", f"{PREFIX}expiry", f"{PREFIX}outbox"]


def fields(product: int | str) -> tuple[str, str]:
    """A product's fields in the reference endpoint's stock hash: available, reserved."""
    return f"available:{product}", f"reserved:{product}"


@contextmanager
def stocked(stack: Stack, product: int) -> Iterator[None]:
    """Units without end on `product` for the reference over HTTP; its keys gone after."""
    available, reserved = fields(product)
    with stack.redis_client() as client:
        client.hset(keys("")[0], mapping={available: HUGE, reserved: 0})
    try:
        yield
    finally:
        with stack.redis_client() as client:
            client.unlink(*client.scan_iter(f"{PREFIX}*", count=1000))


async def _calls(
    stack: Stack, seconds: float, concurrency: int, meter: Meter
) -> tuple[int, float, dict[str, Any], dict[str, Any]]:
    """(calls, seconds, the meter before, after): read around the timed calls alone, the
    set-up and the clean-up left out."""
    client = redis.asyncio.Redis.from_url(stack.redis_url, max_connections=concurrency)
    tag = f"bench-ref-{uuid.uuid4().hex[:8]}"
    stock, expiry, events = f"{{{tag}}}:stock", f"{{{tag}}}:expiry", f"{{{tag}}}:outbox"
    script = client.register_script(SCRIPT.read_text())
    await client.hset(stock, mapping={"available": HUGE, "reserved": 0})
    made: list[str] = []
    try:

        async def one() -> None:
            rid = uuid.uuid4().hex
            record = json.dumps({"id": rid, "owner": "bench", "lines": [["ref", "main", 1]]})
            keys = [stock, f"{{{tag}}}:r:{rid}", expiry, events]
            await script(keys=keys, args=["available", "reserved", 1, rid, 600_000, record])
            made.append(rid)

        await asyncio.gather(*(one() for _ in range(concurrency)))  # cached, connected
        made.clear()
        before = meter.read()
        end = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < end:
                await one()

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
        after = meter.read()
        return len(made), elapsed, before, after
    finally:
        for i in range(0, len(made), 1000):
            await client.delete(*(f"{{{tag}}}:r:{rid}" for rid in made[i : i + 1000]))
        await client.delete(stock, expiry, events)
        await client.aclose()


def reference_row(stack: Stack, meter: Meter, progress: Progress) -> dict[str, Any]:
    opts = stack.opts
    conns = opts.cost_connections
    progress.step(f"cost: reference script, {conns} concurrent calls for {opts.seconds:g}s")
    try:
        import uvloop

        calls, elapsed, before, after = uvloop.run(_calls(stack, opts.seconds, conns, meter))
    except ImportError:  # pragma: no cover
        calls, elapsed, before, after = asyncio.run(_calls(stack, opts.seconds, conns, meter))
    delta = meter.delta(before, after, calls)
    return {
        "system": "reference",
        "fsync": opts.fsync[0],
        "mode": "cost",
        "connections": conns,
        "requests": calls,
        "ops_per_s": round(calls / elapsed, 1) if elapsed else None,
        "ok": calls,
        "redis_cpu_us": delta["redis_cpu_us"],
        "redis_commands": delta["redis_commands"],
    }
