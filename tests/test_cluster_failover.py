"""REDIS_WAIT_REPLICAS: a write is answered only once a replica has it, so a failover loses no
acknowledged reservation. Shown by doing it: a real cluster with a replica per primary, buyers
reserving while a primary is killed with SIGKILL, then every acknowledged reservation read back
from the promoted replica, and the counters exact."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from engine import errors
from engine.connection import resolve
from engine.engine import Engine
from engine.keys import partition_keys, partition_of
from engine.models import SYSTEM, LineRequest
from engine.settings import Settings
from scripts.redis_cluster import RedisClusterServer
from scripts.redis_server import RedisServer
from tests.api import bearer, err, running
from tests.support import ALICE, add_product
from web.app import create_app


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """3 primaries, each with a replica (failover in ~2 s: scripts/redis_cluster/)."""
    cluster = RedisClusterServer(Path(tmp_path_factory.mktemp("replicated")), replicas=1)
    cluster.start()
    yield cluster
    cluster.stop()


def waiting(url: str, **more: int) -> Settings:
    return resolve(
        Settings(
            redis_url=url,
            redis_wait_replicas=1,
            redis_wait_timeout_ms=more.pop("timeout_ms", 2_000),
            reservation_ttl_min_ms=50,
        )
    )


async def test_no_replica_to_confirm_means_no_acknowledgement(redis_server: RedisServer) -> None:
    # One server without replicas: the change is made, but never acknowledged.
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    s = waiting(redis_server.url, timeout_ms=50)
    async with Engine.from_settings(dataclasses.replace(s, redis_wait_replicas=0)) as plain:
        await add_product(plain, "sku-1", {"main": 5})
    async with Engine.from_settings(s) as engine:
        with pytest.raises(errors.NotReplicated) as refused:
            await engine.reserve([LineRequest("sku-1", 2)], ALICE, ttl_ms=60_000)
        assert refused.value.details() == {"replicas": 0, "wanted": 1}
        view = await engine.get_stock("sku-1")
        assert (view.available, view.reserved) == (3, 2)  # made on the primary all the same


async def test_with_a_replica_each_write_is_confirmed(replicated: RedisClusterServer) -> None:
    s = waiting(replicated.url)
    async with Engine.from_settings(s) as engine:
        await engine.scripts.load()
        await add_product(engine, "sku-w", {"main": 5})
        r = await engine.reserve([LineRequest("sku-w", 2)], ALICE, ttl_ms=60_000)
        assert r.quantity == 2
        # the replica of the product's primary holds the reservation already
        key = partition_keys(partition_of("sku-w", s.partitions)).reservation(r.id)
        replicas = [
            redis.Redis.from_url(replicated.node_url(p), decode_responses=True)
            for p in replicated.replica_ports()
        ]
        try:
            found = []
            for replica in replicas:
                replica.execute_command("READONLY")  # type: ignore[no-untyped-call]
                try:
                    found.append(replica.hget(key, "status"))
                except redis.exceptions.ResponseError:  # MOVED: not this shard's replica
                    continue
            assert "active" in found
        finally:
            for replica in replicas:
                replica.close()


async def test_a_primary_killed_under_load_loses_no_acknowledged_reservation(
    replicated: RedisClusterServer,
) -> None:
    s = waiting(replicated.url)
    products = [f"fo-{i}" for i in range(6)]
    stock = 1_000_000
    async with Engine.from_settings(s) as engine:
        await engine.scripts.load()
        for name in products:
            await add_product(engine, name, {"main": stock})
        victim_key = partition_keys(partition_of(products[0], s.partitions)).stock
        victim = int(engine.redis.get_node_from_key(victim_key).port)  # type: ignore[attr-defined]

        acknowledged: list[tuple[str, str]] = []  # (reservation id, product)
        failures: Counter[str] = Counter()
        stop = time.monotonic() + 5.0

        async def buyer(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                name = rng.choice(products)
                try:
                    r = await engine.reserve([LineRequest(name, 1)], ALICE, ttl_ms=600_000)
                except (redis.exceptions.RedisError, errors.NotReplicated) as exc:
                    failures[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                acknowledged.append((r.id, name))

        async def kill_after(delay: float) -> None:
            await asyncio.sleep(delay)
            await asyncio.to_thread(replicated.kill, victim)

        await asyncio.gather(*(buyer(i) for i in range(16)), kill_after(1.5))

    await asyncio.to_thread(replicated.wait_ok, 30)
    assert victim not in replicated.primary_ports()  # its replica took over
    assert sum(failures.values()) > 0  # the kill was felt
    on_victim = [rid for rid, name in acknowledged if name == products[0]]
    assert on_victim  # some acknowledged reservations lived on the killed primary

    # every acknowledged reservation is there after the failover; nothing oversold
    async with Engine.from_settings(dataclasses.replace(s, redis_wait_replicas=0)) as after:
        for rid, _ in acknowledged:
            got = await after.get_reservation(rid, ALICE)
            assert got.status == "active", rid
        held = Counter(name for _, name in acknowledged)
        for name in products:
            view = await after.get_stock(name)
            assert view.available + view.reserved == stock
            assert view.reserved >= held[name]  # made but unconfirmed ones may be there too
        assert all(r.ok for r in await after.check_invariants())
    await asyncio.to_thread(replicated.restart, victim)
    await asyncio.to_thread(replicated.wait_ok, 30)


async def test_over_http_an_unconfirmed_write_is_a_503_to_retry(
    redis_server: RedisServer, sqlite_url: str
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    s = dataclasses.replace(
        waiting(redis_server.url, timeout_ms=50), database_url=sqlite_url, jwt_keys="k:" + "k" * 40
    )
    app = create_app(s)
    async with running(app) as http:
        engine: Engine = app.state.services.engine
        plain = Engine(engine.redis, dataclasses.replace(s, redis_wait_replicas=0))
        await plain.setup_product("7", SYSTEM, price=100, stock={"main": 3})
        alice = bearer(app, "1")
        key = {"Idempotency-Key": "once"}
        response = await http.post(
            "/api/reservations/", json={"product": 7, "quantity": 1}, headers=alice | key
        )
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert err(response)["code"] == "not_replicated"
        assert err(response)["details"] == {"replicas": 0, "wanted": 1}
