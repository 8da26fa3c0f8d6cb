"""On a real Redis Cluster (3 primaries, tests/conftest.py): the partitions spread over the
shards, every primary has the library, a function call costs one round trip, and the API, the
drain and reconcile keep every count exact with PARTITIONS at the cluster's default.

The modules marked `cluster` (reserve, orders, expiry, coalescing, drain, reconcile, rebuild,
the reservation and order API) run whole on the cluster too, with PARTITIONS=1; this module is
about what only a cluster has."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine

from engine import errors
from engine.connection import CLUSTER_PARTITIONS, connect_sync, resolve
from engine.engine import Engine
from engine.keys import login_attempts, partition_keys, partition_of, rate_limit_bucket
from engine.layout import PartitionsMismatch, check_sync
from engine.models import SYSTEM, LineRequest
from engine.scripts import library
from engine.settings import PROJECT_ROOT, Settings
from persistence import reconcile, users
from persistence.drain import drain_partition
from scripts.bench.cluster import one_per_partition
from scripts.redis_cluster import RedisClusterServer
from scripts.redis_server import RedisServer, free_port
from tests.api import bearer, data, running
from tests.support import ALICE, add_product, last_json, run_cli, wait_until_serving
from web import passwords
from web.app import create_app
from web.ratelimit import settle


@pytest.fixture
def spread(redis_cluster: RedisClusterServer, redis_server: RedisServer) -> Settings:
    """Settings for the cluster as a deployment has them: PARTITIONS not set, detected."""
    own = resolve(
        Settings(
            redis_url=redis_cluster.url,
            queue_redis_url=redis_server.url,
            reservation_ttl_min_ms=50,
        )
    )
    for s in (own, dataclasses.replace(own, redis_url=redis_server.url, redis_cluster=False)):
        client = connect_sync(s)
        client.flushall()
        client.close()
    return own


@pytest.fixture
async def cluster_engine(spread: Settings) -> AsyncIterator[Engine]:
    e = Engine.from_settings(spread)
    yield e
    await e.aclose()


def node_clients(cluster: RedisClusterServer) -> list[redis.Redis]:
    return [
        redis.Redis.from_url(cluster.node_url(p), decode_responses=True)
        for p in cluster.primary_ports()
    ]


def libraries(node: redis.Redis) -> list[str]:
    """The names of the function libraries a node holds (FUNCTION LIST, RESP2: flat pairs)."""
    found = []
    for lib in node.function_list():
        fields = dict(zip(lib[::2], lib[1::2], strict=True)) if isinstance(lib, list) else lib
        found.append(str(fields["library_name"]))
    return found


def node_of(engine: Engine, product: str) -> str:
    """The node (host:port) holding a product's partition."""
    key = partition_keys(partition_of(product, engine.settings.partitions)).stock
    node = engine.redis.get_node_from_key(key)  # type: ignore[attr-defined]
    return f"{node.host}:{node.port}"


def products_on_every_partition_of_each_node(n: int) -> list[str]:
    """`n` product names, each in a partition of its own."""
    return one_per_partition("sku-", n)


async def test_detected_and_spread_over_every_primary(
    cluster_engine: Engine, redis_cluster: RedisClusterServer
) -> None:
    assert cluster_engine.settings.redis_cluster is True
    assert cluster_engine.settings.partitions == CLUSTER_PARTITIONS
    products = products_on_every_partition_of_each_node(CLUSTER_PARTITIONS)
    for name in products:
        await add_product(cluster_engine, name, {"main": 5})
    made = await asyncio.gather(
        *(cluster_engine.reserve([LineRequest(p, 2)], ALICE, ttl_ms=60_000) for p in products)
    )
    assert len(made) == CLUSTER_PARTITIONS

    # every primary holds some partitions' stock, and the library
    nodes = node_clients(redis_cluster)
    try:
        holding = [sum(1 for _ in n.scan_iter(match="inv:{p*}:stock")) for n in nodes]
        assert sum(holding) == CLUSTER_PARTITIONS
        assert all(h > 0 for h in holding), holding
        for n in nodes:
            assert library().name in libraries(n)
    finally:
        for n in nodes:
            n.close()
    reports = await cluster_engine.check_invariants()
    assert len(reports) == CLUSTER_PARTITIONS
    assert all(r.ok for r in reports)


async def test_a_function_call_is_one_round_trip(
    cluster_engine: Engine, redis_cluster: RedisClusterServer
) -> None:
    # redis-py asks a node for an FCALL's keys (COMMAND GETKEYS) unless told: the engine
    # computes the slot from the call's own keys, so no node ever sees that command.
    products = products_on_every_partition_of_each_node(8)
    for name in products:
        await add_product(cluster_engine, name, {"main": 3})
    nodes = node_clients(redis_cluster)
    try:
        for n in nodes:
            n.config_resetstat()
        for name in products:
            await cluster_engine.reserve([LineRequest(name, 1)], ALICE, ttl_ms=60_000)
        stats = [n.info("commandstats") for n in nodes]
    finally:
        for n in nodes:
            n.close()
    fcalls = sum(s.get("cmdstat_fcall", {}).get("calls", 0) for s in stats)
    assert fcalls == len(products)
    assert not [k for s in stats for k in s if "getkeys" in k]


async def test_a_new_clients_first_calls_at_once_go_straight_to_their_nodes(
    spread: Settings, redis_cluster: RedisClusterServer
) -> None:
    # redis-py sends a command made before its client knows the layout to the node it starts
    # from; a burst of first calls came back MOVED, and after 5 the client closed every
    # connection under the others (engine/connection.py AsyncCluster._known).
    nodes = node_clients(redis_cluster)
    try:
        for n in nodes:
            n.config_resetstat()
        async with Engine.from_settings(spread) as fresh:
            await asyncio.gather(
                *(
                    fresh.setup_product(f"burst-{i}", SYSTEM, price=100, stock={"main": 1})
                    for i in range(600)
                )
            )
        moved = [n.info("errorstats").get("errorstat_MOVED", {}).get("count", 0) for n in nodes]
    finally:
        for n in nodes:
            n.close()
    assert moved == [0] * len(nodes)


async def test_a_primary_that_lost_the_library_gets_it_again(
    cluster_engine: Engine, redis_cluster: RedisClusterServer
) -> None:
    # A shard that lacks the library (added later, or flushed) answers "Function not found":
    # the engine loads it on every primary and the call goes through.
    products = products_on_every_partition_of_each_node(CLUSTER_PARTITIONS)
    await add_product(cluster_engine, products[0], {"main": 3})
    nodes = node_clients(redis_cluster)
    try:
        for n in nodes:
            n.function_flush()
        for name in products[1:]:
            await add_product(cluster_engine, name, {"main": 3})
        for n in nodes:
            assert library().name in libraries(n)
    finally:
        for n in nodes:
            n.close()
    r = await cluster_engine.reserve([LineRequest(products[-1], 3)], ALICE, ttl_ms=60_000)
    assert r.quantity == 3


async def test_concurrent_buyers_on_every_shard_get_exact_counts(cluster_engine: Engine) -> None:
    # 12 products over the shards, 5 units each; 30 buyers each: exactly 5 held per product.
    products = products_on_every_partition_of_each_node(12)
    for name in products:
        await add_product(cluster_engine, name, {"main": 5})

    async def buy(name: str) -> bool:
        try:
            await cluster_engine.reserve([LineRequest(name, 1)], ALICE, ttl_ms=60_000)
        except errors.InsufficientStock:
            return False
        return True

    outcomes = await asyncio.gather(*(buy(p) for p in products for _ in range(30)))
    assert sum(outcomes) == 5 * len(products)
    for name in products:
        view = await cluster_engine.get_stock(name)
        assert (view.available, view.reserved) == (0, 5)
    assert all(r.ok for r in await cluster_engine.check_invariants())


async def test_the_sweep_releases_due_reservations_on_every_shard(cluster_engine: Engine) -> None:
    products = products_on_every_partition_of_each_node(CLUSTER_PARTITIONS)
    for name in products:
        await add_product(cluster_engine, name, {"main": 2})
    held = [
        await cluster_engine.reserve([LineRequest(name, 2)], ALICE, ttl_ms=50) for name in products
    ]
    await asyncio.sleep(0.2)
    result = await cluster_engine.expire()
    assert (result.expired, result.still_due) == (len(held), 0)
    for name in products:
        view = await cluster_engine.get_stock(name)
        assert (view.available, view.reserved) == (2, 0)
    assert all(r.ok for r in await cluster_engine.check_invariants())
    gauges = await cluster_engine.gauges()
    assert sum(g.live for g in gauges.partitions) == 0


async def test_a_cart_across_shards_is_one_reservation_and_one_order(
    cluster_engine: Engine,
) -> None:
    """A cart whose products live on two nodes (engine/carts.py): held, made live, committed
    into one order and cancelled, each step on both shards."""
    await cluster_engine.scripts.load()  # (the client knows the slots once it has connected)
    names = products_on_every_partition_of_each_node(CLUSTER_PARTITIONS)
    a = names[0]
    b = next(n for n in names if node_of(cluster_engine, n) != node_of(cluster_engine, a))
    for name in (a, b):
        await add_product(cluster_engine, name, {"main": 3})
    cart = await cluster_engine.reserve([LineRequest(a, 1), LineRequest(b, 2)], ALICE)
    assert sorted(line.quantity for line in cart.lines) == [1, 2]
    got = await cluster_engine.get_reservation(cart.id, ALICE)
    assert len(got.lines) == 2
    order = await cluster_engine.commit(cart.id, ALICE)
    assert sorted(line.quantity for line in order.lines) == [1, 2]
    assert [(await cluster_engine.get_stock(n)).available for n in (a, b)] == [2, 1]
    assert all(r.ok for r in await cluster_engine.check_invariants())
    await cluster_engine.transition(order.id, "cancelled", SYSTEM)
    for name in (a, b):
        view = await cluster_engine.get_stock(name)
        assert (view.available, view.reserved) == (3, 0)
    assert all(r.ok for r in await cluster_engine.check_invariants())


async def test_rate_limits_settle_in_one_call_per_slot(cluster_engine: Engine) -> None:
    # Buckets of many clients sit in many slots: the settle groups them, one call per group.
    await cluster_engine.scripts.load()
    buckets = [rate_limit_bucket("user", str(i)) for i in range(40)]
    left = await settle(cluster_engine.scripts, 10.0, 20, [(b, 3, 0) for b in buckets])
    assert left == pytest.approx([17.0] * len(buckets), abs=0.5)
    again = await settle(cluster_engine.scripts, 10.0, 20, [(b, 0, 0) for b in buckets])
    assert all(16.5 <= t <= 20 for t in again)


async def test_without_a_queue_server_the_app_refuses_to_start(spread: Settings) -> None:
    app = create_app(dataclasses.replace(spread, queue_redis_url="", jwt_keys="k:" + "k" * 40))
    with pytest.raises(ValueError, match="QUEUE_REDIS_URL"):
        async with running(app):
            pass


def test_inventory_serve_refuses_a_cluster_without_a_queue_server(spread: Settings) -> None:
    # exit 2 and one line, as the worker refuses it; it was exit 3 (the code of a Redis that
    # can't be reached) and uvicorn's traceback, after a line saying it served
    done = run_cli(
        "serve", "--port", str(free_port()),
        env={"REDIS_URL": spread.redis_url, "QUEUE_REDIS_URL": "", "JWT_KEYS": "k:" + "k" * 40},
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "QUEUE_REDIS_URL" in done.stderr
    assert "Traceback" not in done.stderr
    assert "serving the API" not in done.stderr


async def test_the_api_drain_and_reconcile_over_the_shards(
    spread: Settings, db_url: str, db: DatabaseEngine
) -> None:
    # A shop on the cluster: products in many partitions, reservations and orders over HTTP,
    # each partition drained, and reconcile finds the database and Redis equal.
    own = dataclasses.replace(spread, database_url=db_url, jwt_keys="k:" + "k" * 40)
    app = create_app(own)
    async with running(app) as client:
        engine: Engine = app.state.services.engine
        for i in range(6):
            await engine.setup_product(str(1000 + i), SYSTEM, price=500, stock={"main": 4})
        alice = bearer(app, "1")
        made: list[dict[str, Any]] = []
        for i in range(6):
            response = await client.post(
                "/api/reservations/", json={"product": 1000 + i, "quantity": 2}, headers=alice
            )
            assert response.status_code == 201, response.text
            made.append(data(response))
        for r in made[:3]:
            response = await client.post(f"/api/reservations/{r['id']}/commit/", headers=alice)
            assert response.status_code == 201, response.text
        for r in made[3:4]:
            response = await client.delete(f"/api/reservations/{r['id']}/", headers=alice)
            assert response.status_code in (200, 204), response.text
        partitions = sorted({partition_of(str(1000 + i), own.partitions) for i in range(6)})
        sync = connect_sync(own)
        try:
            applied = Counter[int]()
            for p in range(own.partitions):
                applied[p] = drain_partition(sync, db, own, p).applied
            assert set(applied.elements()) == set(partitions)
            report = reconcile.check(sync, db, own)
        finally:
            sync.close()
        assert report.ok, report.to_json()
        listed = await client.get("/api/reservations/", headers=alice)
        assert listed.status_code == 200
        assert len(data(listed)) == len(made)
        # a failed login counts on the cluster; a success clears the counters (one MULTI)
        users.create_user(db, "carol", passwords.hash_password("a long enough password"))
        wrong = await client.post(
            "/api/token/", json={"username": "carol", "password": "not the password"}
        )
        assert wrong.status_code == 401
        right = await client.post(
            "/api/token/", json={"username": "carol", "password": "a long enough password"}
        )
        assert right.status_code == 200, right.text
        sync = connect_sync(own)
        try:
            assert sync.get(login_attempts("user", "carol")) is None  # cleared
        finally:
            sync.close()
        # the operators' views read every partition on every shard
        staff = bearer(app, "99", staff=True)
        metrics = await client.get("/metrics", headers=staff)
        assert metrics.status_code == 200, metrics.text
        assert 'inventory_outbox_backlog{partition="63"}' in metrics.text
        board = await client.get("/api/ops/dashboard/", headers=staff)
        assert board.status_code == 200, board.text


def test_the_cluster_keys_of_a_partition_share_one_slot(spread: Settings) -> None:
    client = connect_sync(spread)
    try:
        for p in range(spread.partitions):
            k = partition_keys(p)
            slots = {
                client.keyslot(key)  # type: ignore[attr-defined]
                for key in (k.stock, k.products, k.live, k.expiry, k.outbox, k.dead_letters)
            }
            slots |= {client.keyslot(k.reservation("x")), client.keyslot(k.order("y"))}  # type: ignore[attr-defined]
            assert len(slots) == 1
    finally:
        client.close()


async def test_a_process_with_another_partition_count_refuses_to_start(spread: Settings) -> None:
    # The first process records the count the data is laid out in; one started with another
    # PARTITIONS is refused before it serves anything (on one server the same holds).
    own = dataclasses.replace(spread, jwt_keys="k:" + "k" * 40)
    async with running(create_app(own)):
        pass
    other = dataclasses.replace(own, partitions=8, partitions_given=True)
    with pytest.raises(PartitionsMismatch, match="laid out in 64 partitions, but PARTITIONS is 8"):
        async with running(create_app(other)):
            pass
    client = connect_sync(spread)
    try:
        check_sync(client, 64)  # the same count passes
        with pytest.raises(PartitionsMismatch):
            check_sync(client, 1)
    finally:
        client.close()


def test_the_operators_commands_on_the_cluster(
    spread: Settings, sqlite_url: str, redis_server: RedisServer
) -> None:
    # check, sweep, drain, worker --burst, reconcile and rebuild's refusal, as an operator runs
    # them: a process of their own, told only REDIS_URL (the cluster is detected, PARTITIONS
    # at its default) and where the queue lives.
    async def shop() -> list[str]:
        async with Engine.from_settings(spread) as engine:
            products = products_on_every_partition_of_each_node(8)
            for name in products:
                await add_product(engine, name, {"main": 5})
            for name in products:
                await engine.reserve([LineRequest(name, 2)], ALICE, ttl_ms=50)
            await asyncio.sleep(0.1)
            return products

    products = asyncio.run(shop())
    env = {
        "REDIS_URL": spread.redis_url,
        "QUEUE_REDIS_URL": redis_server.url,
        "DATABASE_URL": sqlite_url,
    }
    check = run_cli("check", "--json", env=env)
    assert check.returncode == 0, check.stderr
    assert last_json(check)["partitions"] == CLUSTER_PARTITIONS
    sweep = run_cli("sweep", "--json", env=env)
    assert sweep.returncode == 0, sweep.stderr
    assert last_json(sweep) == {
        "expired": len(products),
        "still_due": 0,
        "carts": 0,
        "timed_out": 0,
        "waitlist_left": 0,
        "redis_behind": [],
    }
    drained = run_cli("drain", env=env, timeout=120)
    assert drained.returncode == 0, drained.stderr
    worker = run_cli("worker", "--burst", "--log-level", "WARNING", env=env, timeout=120)
    assert worker.returncode == 0, worker.stderr
    reconciled = run_cli("reconcile", "--json", env=env, timeout=120)
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert last_json(reconciled)["ok"] is True
    rebuilt = run_cli("rebuild", "--json", env=env, timeout=120)
    assert rebuilt.returncode == 2  # Redis holds data: refused without --force
    other = run_cli("check", "--json", env=env | {"PARTITIONS": "8"})
    assert other.returncode == 2
    assert "laid out in 64 partitions" in other.stdout + other.stderr


@pytest.mark.chaos
def test_chaos_on_the_cluster_with_carts_across_shards(redis_cluster: RedisClusterServer) -> None:
    # The run: 200 buyer processes, carts of up to 3 lines over 12 products spread
    # over the cluster's 64 partitions (so over its 3 shards), settled (commit or expiry):
    # carts across partitions made, exact totals, invariants, every event chained.
    client = connect_sync(resolve(Settings(redis_url=redis_cluster.url)))
    client.flushall()
    env = {"REDIS_URL": redis_cluster.url}
    args = ("chaos", "--processes", "200", "--products", "12", "--max-lines", "3", "--settle")
    done = run_cli(*args, "--stock", "30", "--json", env=env, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = last_json(done)
    assert (result["oversold"], result["problems"], result["crashed"]) == (0, [], 0)
    assert result["invariants_ok"] is True
    assert result["events_ok"] is True
    assert result["succeeded"] + result["failed"] == 200
    assert result["carts_across_partitions"] > 10
    assert result["committed"] + result["expired"] == result["succeeded"]
    assert result["reserved"] == 0
    # the run's keys sit on every primary
    for port in redis_cluster.primary_ports():
        node = redis.Redis(port=port)
        assert node.dbsize() > 0
        node.close()
    client.close()


def test_inventory_serve_on_the_cluster_over_http(
    redis_cluster: RedisClusterServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    # `inventory serve` as an operator starts it: told REDIS_URL (a cluster node) and
    # QUEUE_REDIS_URL; the README's walk: a product, a reservation, its order, the reads.
    for client in (connect_sync(resolve(Settings(redis_url=redis_cluster.url))),):
        client.flushall()
        client.close()
    env = {
        "REDIS_URL": redis_cluster.url,
        "QUEUE_REDIS_URL": redis_server.url,
        "DATA_DIR": str(tmp_path),
        "JWT_KEYS": "main:" + "m" * 40,
    }
    assert run_cli("migrate", env=env).returncode == 0
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "serve", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{base}/healthz", proc, "inventory serve")
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        for name, flags in (("alice", ["--staff"]), ("bob", [])):
            user = run_cli("createuser", name, *flags, "--password", "a long enough password",
                           env=env)  # fmt: skip
            assert user.returncode == 0, user.stderr

        def token(name: str) -> dict[str, str]:
            got = httpx.post(
                f"{base}/api/token/",
                json={"username": name, "password": "a long enough password"},
                timeout=10,
            )
            return {"Authorization": f"Bearer {got.json()['data']['access']}"}

        staff, bob = token("alice"), token("bob")
        for i in (1, 2):
            product = {"name": f"Drop {i}", "sku": f"D-{i}", "price": "9.99", "total_stock": 5}
            made = httpx.post(f"{base}/api/products/", json=product, headers=staff, timeout=10)
            assert made.status_code == 201, made.text
        held = httpx.post(
            f"{base}/api/reservations/", json={"product": 2, "quantity": 2}, headers=bob, timeout=10
        )
        assert held.status_code == 201, held.text
        order = httpx.post(
            f"{base}/api/reservations/{held.json()['data']['id']}/commit/", headers=bob, timeout=10
        )
        assert order.status_code == 201, order.text
        stock = httpx.get(f"{base}/api/products/2/", timeout=10).json()["data"]
        assert (stock["total_stock"], stock["available_stock"]) == (3, 3)
        assert partition_of("1", CLUSTER_PARTITIONS) != partition_of("2", CLUSTER_PARTITIONS)
        cart = {"lines": [{"product": 1, "quantity": 1}, {"product": 2, "quantity": 1}]}
        both = httpx.post(f"{base}/api/reservations/", json=cart, headers=bob, timeout=10)
        assert both.status_code == 201, both.text
        assert len(both.json()["data"]["lines"]) == 2
        bought = httpx.post(
            f"{base}/api/reservations/{both.json()['data']['id']}/commit/", headers=bob, timeout=10
        )
        assert bought.status_code == 201, bought.text
        assert len(bought.json()["data"]["lines"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
