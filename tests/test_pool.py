"""The engine's Redis pool: bounded, first come first served, a timeout that leaks nothing,
and a caller who gave up never holds the line. Against the real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from engine.connection import connect_async, resolve
from engine.pool import FairConnectionPool
from engine.settings import Settings
from scripts.redis_server import RedisServer


@pytest.fixture
async def pool(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> AsyncIterator[FairConnectionPool]:
    size, timeout = getattr(request, "param", (1, 5.0))
    made = FairConnectionPool.from_url(redis_server.url, max_connections=size, timeout=timeout)
    yield made
    await made.aclose()


def created(pool: FairConnectionPool) -> int:
    return len(pool._in_use_connections) + len(pool._available_connections)


@pytest.mark.parametrize("pool", [(3, 5.0)], indirect=True)
async def test_many_callers_share_a_few_connections(pool: FairConnectionPool) -> None:
    client = Redis.from_pool(pool)
    script = "redis.call('INCR', KEYS[1]); return redis.call('GET', KEYS[1])"
    await client.delete("pool-test")
    answers = await asyncio.gather(*(client.eval(script, 1, "pool-test") for _ in range(200)))
    assert sorted(int(a) for a in answers) == list(range(1, 201))
    assert created(pool) <= 3
    assert len(pool._in_use_connections) == 0


async def test_waiters_are_served_in_arrival_order(pool: FairConnectionPool) -> None:
    held = await pool.get_connection()
    served: list[int] = []

    async def caller(i: int) -> None:
        connection = await pool.get_connection()
        served.append(i)
        await asyncio.sleep(0)  # a newcomer may ask meanwhile: it must queue behind
        await pool.release(connection)

    callers = []
    for i in range(6):
        callers.append(asyncio.create_task(caller(i)))
        await asyncio.sleep(0)  # arrive in this order
    await pool.release(held)
    late = asyncio.create_task(caller(99))  # arrives after the release: last
    await asyncio.gather(*callers, late)
    assert served == [0, 1, 2, 3, 4, 5, 99]
    assert created(pool) == 1


@pytest.mark.parametrize("pool", [(1, 0.2)], indirect=True)
async def test_a_timed_out_caller_leaks_nothing(pool: FairConnectionPool) -> None:
    held = await pool.get_connection()
    with pytest.raises(RedisConnectionError, match="No connection available"):
        await pool.get_connection()
    await pool.release(held)
    again = await asyncio.wait_for(pool.get_connection(), 1)  # not stuck behind the one gone
    await pool.release(again)
    assert created(pool) == 1
    assert len(pool._in_use_connections) == 0


async def test_a_cancelled_caller_does_not_hold_the_line(pool: FairConnectionPool) -> None:
    held = await pool.get_connection()
    gone = asyncio.create_task(pool.get_connection())
    await asyncio.sleep(0.01)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    await pool.release(held)  # the cancelled caller is skipped: back on the shelf
    assert len(pool._in_use_connections) == 0
    again = await asyncio.wait_for(pool.get_connection(), 1)
    await pool.release(again)


async def test_connections_the_server_closed_are_replaced_before_use(tmp_path: Path) -> None:
    """A Redis restart closes every pooled connection: the next command on each gets a new
    one, not 'Connection closed by server' (redis-py skips that check while maintenance
    notifications are on, engine/connection.py)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings = dataclasses.replace(Settings.from_env(), redis_url=server.url)
    client = connect_async(resolve(settings))
    try:
        await asyncio.gather(*(client.ping() for _ in range(8)))  # a few pooled connections
        server.stop()
        server.start()
        await asyncio.sleep(0.2)  # (the loop sees the closes, as a serving process's does)
        assert await asyncio.gather(*(client.ping() for _ in range(8))) == [True] * 8
        assert await client.set("k", "v")
        assert await client.get("k") == "v"
    finally:
        await client.aclose()
        server.stop()
