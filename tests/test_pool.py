"""The engine's Redis pool: bounded, first come first served, a timeout that leaks nothing,
and a caller who gave up never holds the line. Against the real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from engine.pool import FairConnectionPool
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
