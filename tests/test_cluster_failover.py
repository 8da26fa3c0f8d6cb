"""REDIS_WAIT_REPLICAS: a write is answered only once a replica has it, so a failover loses no
acknowledged reservation. Shown by doing it: a real cluster with a replica per primary, buyers
reserving while a primary is killed with SIGKILL, then every acknowledged reservation read back
from the promoted replica, and the counters exact."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from engine import errors
from engine.connection import connect_sync, resolve
from engine.engine import Engine
from engine.keys import part_id, partition_keys, partition_of
from engine.models import SYSTEM, LineRequest
from engine.settings import Settings
from persistence import migrate, reconcile
from persistence.db import database_engine
from persistence.drain import drain_partition
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
            # one buyer holds many reservations here: no cap (tests/test_limits.py has it)
            max_live_reservations_per_customer=0,
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


async def test_a_primary_killed_under_carts_across_shards_leaves_every_cart_whole(
    replicated: RedisClusterServer,
) -> None:
    """Carts across partitions (engine/carts.py) while a primary is killed: every acknowledged
    cart is live and whole after the failover; the sagas the kill cut short are finished or
    undone by the sweep, so no cart is left with a part missing and no unit is made or lost."""
    s = dataclasses.replace(waiting(replicated.url), cart_hold_ms=1_000)
    stock = 1_000_000
    async with Engine.from_settings(s) as engine:
        await engine.scripts.load()
        names = [f"cart-fo-{i}" for i in range(40)]
        node = {
            n: int(
                engine.redis.get_node_from_key(  # type: ignore[attr-defined]
                    partition_keys(partition_of(n, s.partitions)).stock
                ).port
            )
            for n in names
        }
        victim = node[names[0]]
        here = [n for n in names if node[n] == victim][:3]
        there = [n for n in names if node[n] != victim][:3]
        for name in here + there:
            await add_product(engine, name, {"main": stock})

        acknowledged: list[str] = []
        failures: Counter[str] = Counter()
        stop = time.monotonic() + 5.0

        async def buyer(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                cart = [LineRequest(rng.choice(here), 1), LineRequest(rng.choice(there), 1)]
                try:
                    r = await engine.reserve(cart, ALICE, ttl_ms=600_000)
                except (redis.exceptions.RedisError, errors.EngineError) as exc:
                    failures[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                acknowledged.append(r.id)

        async def kill_after(delay: float) -> None:
            await asyncio.sleep(delay)
            await asyncio.to_thread(replicated.kill, victim)

        await asyncio.gather(*(buyer(i) for i in range(12)), kill_after(1.5))

    await asyncio.to_thread(replicated.wait_ok, 30)
    assert sum(failures.values()) > 0  # the kill was felt
    assert acknowledged
    alive = replicated.node_url(replicated.primary_ports()[0])  # (the killed node may be s's)
    async with Engine.from_settings(
        dataclasses.replace(s, redis_url=alive, redis_wait_replicas=0)
    ) as after:
        # the steps the kill left: past their deadline, the sweep finishes them; the holds of
        # carts never made live run out (twice CART_HOLD_TTL)
        await asyncio.sleep(2.2)
        for _ in range(3):
            await after.expire()
        for rid in acknowledged:
            got = await after.get_reservation(rid, ALICE)
            assert (got.status, len(got.lines)) == ("active", 2), rid
        for name in here + there:
            view = await after.get_stock(name)
            assert view.available + view.reserved == stock  # no unit made or lost
        assert all(r.ok for r in await after.check_invariants())
        # every live cart is whole: its other part live, with the home's expires_at
        for p in range(s.partitions):
            k = partition_keys(p)
            live = cast(list[str], await after.redis.hkeys(k.live))
            for rid in live:
                rec = cast(dict[str, str], await after.redis.hgetall(k.reservation(rid)))
                if rec.get("cart") == rid:
                    for other in json.loads(rec["parts"])[1:]:
                        part = part_id(rid, other, s.partitions)
                        key = partition_keys(other).reservation(part)
                        assert await after.redis.hget(key, "expires_at") == rec["expires_at"]
                        assert await after.redis.hexists(partition_keys(other).live, part)
                elif "cart" in rec:  # a part: its cart is live too (no hold outlives the run)
                    assert await after.redis.hexists(
                        partition_keys(partition_of(rec["cart"], s.partitions)).live, rec["cart"]
                    ), rid
    await asyncio.to_thread(replicated.restart, victim)
    await asyncio.to_thread(replicated.wait_ok, 30)


def test_without_wait_a_failover_can_lose_writes_and_reconcile_restores_them(
    replicated: RedisClusterServer, sqlite_url: str
) -> None:
    """Without REDIS_WAIT_REPLICAS, a primary acknowledges writes its replica may not have yet:
    a failover then loses them (the README says so). Done for real: the replica is paused
    (SIGSTOP) and its link cut, reservations are made and drained to the database, the primary
    is killed (SIGKILL) and the replica, resumed, takes over without them. The drain finds this
    Redis behind the database and stops; `reconcile --fix` puts back what the database
    recorded."""
    s = dataclasses.replace(
        resolve(Settings(redis_url=replicated.url, max_live_reservations_per_customer=0)),
        database_url=sqlite_url,
    )
    migrate.upgrade(sqlite_url)
    db = database_engine(s)
    client = connect_sync(s)
    name = "lost-1"
    p = partition_of(name, s.partitions)
    victim: int | None = None

    async def before() -> list[str]:
        async with Engine.from_settings(s) as engine:
            await engine.scripts.load()
            await add_product(engine, name, {"main": 10})
            return [
                (await engine.reserve([LineRequest(name, 1)], ALICE, ttl_ms=600_000)).id
                for _ in range(3)
            ]

    try:
        first = asyncio.run(before())
        drain_partition(client, db, s, p)
        victim = int(client.get_node_from_key(partition_keys(p).stock).port)  # type: ignore[attr-defined]
        replica = replicated.replica_of(victim)
        replicated.pause(replica)
        # ... and its link cut by the primary, so nothing more reaches it (what was sent before
        # sits in its socket, and it reads that when it wakes up)
        with redis.Redis.from_url(replicated.node_url(victim)) as primary:
            primary.client_kill_filter(_type="replica")
        try:

            async def unreplicated() -> list[str]:
                async with Engine.from_settings(s) as engine:
                    return [
                        (await engine.reserve([LineRequest(name, 2)], ALICE, ttl_ms=600_000)).id
                        for _ in range(2)
                    ]

            lost = asyncio.run(unreplicated())  # acknowledged by the primary alone
            drain_partition(client, db, s, p)  # ... and recorded by the database
            replicated.kill(victim)
        finally:
            replicated.resume(replica)
        replicated.wait_ok(60)
        client.close()
        s = dataclasses.replace(s, redis_url=replicated.node_url(replicated.primary_ports()[0]))
        client = connect_sync(s)

        async def after() -> tuple[int, int]:
            async with Engine.from_settings(s) as engine:
                view = await engine.get_stock(name)
                return view.available, view.reserved

        assert asyncio.run(after()) == (7, 3)  # the promoted replica lacks the last two
        result = drain_partition(client, db, s, p)
        assert result.behind  # the drain sees the database ahead and stops
        found = reconcile.check(client, db, s, [p])
        assert "redis_behind" in {d.kind for d in found.drift}
        fixed = reconcile.reconcile(client, db, s, fix=True)
        assert fixed.ok, fixed.drift
        assert asyncio.run(after()) == (3, 7)  # what the database recorded is back

        async def read_back() -> None:
            async with Engine.from_settings(s) as engine:
                for rid in [*first, *lost]:
                    assert (await engine.get_reservation(rid, ALICE)).status == "active", rid
                again = await engine.reserve([LineRequest(name, 1)], ALICE, ttl_ms=600_000)
                assert again.quantity == 1  # the partition decides again
                assert all(r.ok for r in await engine.check_invariants())

        asyncio.run(read_back())
    finally:
        client.close()
        db.dispose()
        if victim is not None:
            replicated.restart(victim)
            replicated.wait_ok(60)
