"""A Redis that comes back behind the database — an older copy of its AOF restored after later
writes were drained — is detected exactly (`redis_behind`), its drain pauses, and `reconcile
--fix` restores what it lost from the database: the units sold stay sold, the order reads and
moves on, a retried write under the same Idempotency-Key gets its first answer, and the next
reconcile is clean."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import random
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import select
from starlette.applications import Starlette

from engine import errors, specs
from engine.engine import Engine
from engine.errors import RedisBehind
from engine.keys import partition_keys
from engine.models import SYSTEM, CallContext, LineRequest, ProductLimits
from engine.scripts import Call, call_sync, library, load_sync, parse, verify_call
from engine.settings import Settings
from persistence import behind, schema
from persistence.behind import is_behind
from persistence.db import database_engine
from persistence.drain import drain_partition
from persistence.reconcile import check
from scripts.redis_server import RedisServer
from tests.api import bearer, err, running
from tests.durable import redis_counters
from tests.helpers import snapshot
from tests.support import last_json, run_cli
from tests.test_http_faults import until_not_ready, until_ready
from tests.test_reconcile_never_resells import run_ops, set_up
from web.app import create_app

K = partition_keys(0)
BUYER = CallContext(actor="buyer-7", request_id="req-7")
KEYED = dataclasses.replace(BUYER, idempotency_key="cart-7")


@dataclasses.dataclass
class Stack:
    server: RedisServer
    settings: Settings
    client: redis.Redis
    db: DatabaseEngine
    env: dict[str, str]

    def copy_aof(self, to: Path) -> None:
        """An older copy of Redis's files: taken while the server is stopped (clean)."""
        self.server.stop()
        shutil.copytree(self.server.data_dir / "appendonlydir", to)
        self.server.start()

    def restore_aof(self, copy: Path) -> None:
        self.server.stop()
        shutil.rmtree(self.server.data_dir / "appendonlydir")
        shutil.copytree(copy, self.server.data_dir / "appendonlydir")
        self.server.start()

    def inventory(self, *args: str) -> tuple[int, dict[str, Any]]:
        proc = run_cli(*args, "--json", env=self.env)
        return proc.returncode, last_json(proc)


@pytest.fixture
async def stack(
    tmp_path: Path, pg_url: str, pg: DatabaseEngine, settings: Settings
) -> AsyncIterator[Stack]:
    server = RedisServer(tmp_path / "redis", appendfsync="always")
    server.start()
    own = dataclasses.replace(settings, redis_url=server.url, database_url=pg_url)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    env = {"REDIS_URL": server.url, "DATABASE_URL": pg_url}
    try:
        yield Stack(server, own, client, pg, env)
    finally:
        client.close()
        server.stop()


async def available(engine: Engine, product: str = "drop") -> tuple[int, int]:
    level = (await engine.get_stock(product)).levels[0]
    return level.available, level.reserved


async def stock_then_copy(stack: Stack, to: Path) -> None:
    """10 units of product "drop", drained; then an older copy of Redis's files taken."""
    async with Engine.from_settings(stack.settings) as engine:
        await engine.setup_product("drop", SYSTEM, price=500, stock={"main": 10})
        drain_partition(stack.client, stack.db, stack.settings, 0)
    stack.copy_aof(to)


async def test_an_older_aof_is_detected_and_restored_from_the_database(
    stack: Stack, tmp_path: Path
) -> None:
    await stock_then_copy(stack, tmp_path / "older")

    async with Engine.from_settings(stack.settings) as engine:
        first = await engine.reserve([LineRequest("drop", 4)], KEYED)
        order = await engine.commit(first.id, BUYER)
        assert await available(engine) == (6, 0)
    assert drain_partition(stack.client, stack.db, stack.settings, 0).applied == 2

    stack.restore_aof(tmp_path / "older")  # Redis is back where it was before the sale

    async with Engine.from_settings(stack.settings) as engine:
        assert await available(engine) == (10, 0)  # the 4 sold units look free again

    # the drain refuses rather than skip or misplace events, and says so
    drained = drain_partition(stack.client, stack.db, stack.settings, 0)
    assert (drained.behind, drained.applied) == (True, 0)
    flag = json.loads(str(stack.client.get(K.behind)))
    assert flag["checkpoint"] == drained.checkpoint

    # and from then on this Redis decides nothing: no write, no sweep, nothing changed
    async with Engine.from_settings(stack.settings) as engine:
        before = await snapshot(engine.redis)
        with pytest.raises(RedisBehind):
            await engine.reserve([LineRequest("drop", 4)], KEYED)
        with pytest.raises(RedisBehind):
            await engine.adjust_stock("drop", {"main": 1}, "received", SYSTEM)
        assert (await engine.expire()).expired == 0
        assert await snapshot(engine.redis) == before

    code, report = stack.inventory("reconcile")
    assert code == 1
    kinds = [d["kind"] for d in report["drift"]]
    assert kinds[0] == "redis_behind"
    assert {"unrecorded", "order_missing_in_redis"} <= set(kinds)
    assert report["partitions"][0]["behind"] is True
    assert report["partitions"][0]["drain_paused"] is True

    code, fixed = stack.inventory("reconcile", "--fix")
    assert code == 0, fixed
    assert fixed["ok"] is True
    assert "redis_behind" in [d["kind"] for d in fixed["found"]]
    assert stack.client.get(K.behind) is None

    async with Engine.from_settings(stack.settings) as engine:
        # exactly the stock minus the sold units: nothing resold
        assert await available(engine) == (6, 0)
        # the order reads and moves on
        assert (await engine.get_order(order.id, BUYER)).status == "pending"
        moved = await engine.transition(order.id, "confirmed", SYSTEM)
        assert moved.status == "confirmed"
        # the buyer's retry under the same key gets the first answer and takes nothing
        again = await engine.reserve([LineRequest("drop", 4)], KEYED)
        assert (again.id, again.replayed) == (first.id, True)
        assert await available(engine) == (6, 0)
        # a new buyer gets what is really left, and no more
        await engine.reserve([LineRequest("drop", 6)], SYSTEM)
        assert await available(engine) == (0, 6)

    assert not drain_partition(stack.client, stack.db, stack.settings, 0).behind
    after = check(stack.client, stack.db, stack.settings)
    assert after.ok, after.drift
    code, clean = stack.inventory("reconcile")
    assert (code, clean["ok"]) == (0, True)
    with stack.db.connect() as conn:
        o = schema.orders
        assert conn.scalar(select(o.c.status).where(o.c.id == order.id)) == "confirmed"
        a = schema.audit_log
        actions = list(conn.scalars(select(a.c.action).where(a.c.actor == "reconcile")))
    assert "reconcile_fix" in actions  # what was found, on the record


async def test_units_resold_before_the_first_drain_are_closed_by_the_fix(
    stack: Stack, tmp_path: Path
) -> None:
    """A restored copy decides until the first drain finds it behind: what it sold meanwhile
    may be units the record says are sold. The fix lists them as conflicts (units promised
    twice) and closes what is left available, so none is sold again; it left them on sale."""
    await stock_then_copy(stack, tmp_path / "older")
    async with Engine.from_settings(stack.settings) as engine:
        sold = await engine.reserve([LineRequest("drop", 10)], BUYER)
        await engine.commit(sold.id, BUYER)
    drain_partition(stack.client, stack.db, stack.settings, 0)
    stack.restore_aof(tmp_path / "older")  # 10 units look free again
    async with Engine.from_settings(stack.settings) as engine:
        await engine.reserve([LineRequest("drop", 3)], BUYER)  # before any drain: resold
    assert drain_partition(stack.client, stack.db, stack.settings, 0).behind

    code, fixed = stack.inventory("reconcile", "--fix")

    assert code == 1, fixed
    assert [(c["product"], c["offset_available"]) for c in fixed["conflicts"]] == [("drop", 10)]
    assert stack.client.get(K.behind) is None  # the partition decides again...
    async with Engine.from_settings(stack.settings) as engine:
        assert await available(engine) == (0, 3)  # ...but sells nothing the record sold
        with pytest.raises(errors.InsufficientStock):
            await engine.reserve([LineRequest("drop", 1)], BUYER)


async def test_a_reservation_the_fix_ends_gives_back_what_it_counted(
    stack: Stack, tmp_path: Path
) -> None:
    """The older copy still holds a reservation the record says was released: ending it, the
    fix gives back what it counted against its customer's limits, as its release did (its
    units stayed counted, and the customer was refused for a limit they were within)."""
    async with Engine.from_settings(stack.settings) as engine:
        limits = ProductLimits(max_per_customer=3)
        await engine.setup_product("lim", SYSTEM, price=500, stock={"main": 10}, limits=limits)
        held = await engine.reserve([LineRequest("lim", 2)], BUYER)
    drain_partition(stack.client, stack.db, stack.settings, 0)
    stack.copy_aof(tmp_path / "older")  # the reservation live, its 2 units counted
    async with Engine.from_settings(stack.settings) as engine:
        await engine.release(held.id, BUYER)
    drain_partition(stack.client, stack.db, stack.settings, 0)
    stack.restore_aof(tmp_path / "older")

    code, fixed = stack.inventory("reconcile", "--fix")

    assert code == 0, fixed
    assert "reservation_ended" in [r["kind"] for r in fixed["repairs"]]
    async with Engine.from_settings(stack.settings) as engine:
        assert await engine.redis.hget(K.held, "u|lim|buyer-7") is None
        again = await engine.reserve([LineRequest("lim", 3)], BUYER)  # all 3 of the limit
        assert again.quantity == 3


async def test_a_redis_behind_with_nothing_lost_but_its_stream_id(
    stack: Stack, tmp_path: Path
) -> None:
    """Only the stream fell behind (say a failover right after a drain of events whose
    effects the replica had): the repair moves its id past the checkpoint, so that new
    events sort after it and are drained."""
    async with Engine.from_settings(stack.settings) as engine:
        await engine.setup_product("drop", SYSTEM, price=500, stock={"main": 10})
    drain_partition(stack.client, stack.db, stack.settings, 0)
    checkpoint = drain_partition(stack.client, stack.db, stack.settings, 0).checkpoint
    ahead = f"{int(checkpoint.split('-')[0]) + 3_600_000}-0"  # the database saw a later event
    with stack.db.begin() as conn:
        conn.execute(schema.outbox_checkpoints.update().values(last_event_id=ahead))

    report = check(stack.client, stack.db, stack.settings)
    assert [d.kind for d in report.drift] == ["redis_behind"]
    code, fixed = stack.inventory("reconcile", "--fix")
    assert code == 0, fixed
    assert [r["kind"] for r in fixed["repairs"]] == ["stream_id_moved"]

    async with Engine.from_settings(stack.settings) as engine:
        await engine.reserve([LineRequest("drop", 1)], BUYER)
    drained = drain_partition(stack.client, stack.db, stack.settings, 0)
    assert (drained.behind, drained.applied) == (False, 1)
    assert check(stack.client, stack.db, stack.settings).ok


async def test_the_sweep_refuses_out_loud_while_redis_is_behind(stack: Stack) -> None:
    """While the flag is up the sweep releases nothing: `inventory sweep` says so (exit 1, the
    partition under `redis_behind`, a line on stderr) and counts what is due all the same."""
    async with Engine.from_settings(stack.settings) as engine:
        await engine.setup_product("drop", SYSTEM, price=500, stock={"main": 10})
        for _ in range(3):
            await engine.reserve([LineRequest("drop", 1)], BUYER, ttl_ms=50)
    drain_partition(stack.client, stack.db, stack.settings, 0)
    checkpoint = drain_partition(stack.client, stack.db, stack.settings, 0).checkpoint
    ahead = f"{int(checkpoint.split('-')[0]) + 3_600_000}-0"  # the database saw a later event
    with stack.db.begin() as conn:
        conn.execute(schema.outbox_checkpoints.update().values(last_event_id=ahead))
    assert drain_partition(stack.client, stack.db, stack.settings, 0).behind
    await asyncio.sleep(0.1)  # the three are due

    proc = run_cli("sweep", "--json", env=stack.env)

    assert proc.returncode == 1, proc.stderr
    assert last_json(proc) == {
        "expired": 0,
        "still_due": 3,
        "carts": 0,
        "timed_out": 0,
        "waitlist_left": 0,
        "redis_behind": [0],
    }
    assert "Redis is behind the database" in proc.stderr
    assert "reconcile --fix" in proc.stderr
    async with Engine.from_settings(stack.settings) as engine:
        assert await available(engine) == (7, 3)  # nothing released

    code, fixed = stack.inventory("reconcile", "--fix")
    assert code == 0, fixed
    proc = run_cli("sweep", "--json", env=stack.env)
    assert proc.returncode == 0, proc.stderr
    assert (last_json(proc)["expired"], last_json(proc)["redis_behind"]) == (3, [])


async def test_a_drain_that_committed_but_never_trimmed_is_not_behind(stack: Stack) -> None:
    """The marker moves with the trim; a crash between the commit and the trim leaves the
    checkpoint's event in the stream, which tells the two cases apart."""
    async with Engine.from_settings(stack.settings) as engine:
        await engine.setup_product("drop", SYSTEM, price=500, stock={"main": 10})
        drain_partition(stack.client, stack.db, stack.settings, 0)
        held = await engine.reserve([LineRequest("drop", 1)], BUYER)
    assert held.event_id is not None
    # as if a drain committed this event and died before its trim
    with stack.db.begin() as conn:
        conn.execute(
            schema.outbox_checkpoints.update().values(last_event_id=held.event_id.split("-", 1)[1])
        )
    assert not check(stack.client, stack.db, stack.settings).partitions[0].behind
    assert not drain_partition(stack.client, stack.db, stack.settings, 0).behind


@pytest.mark.parametrize(
    ("checkpoint", "last_id", "applied", "present", "behind"),
    [
        ("0-0", None, None, False, False),  # nothing applied yet
        ("5-0", "9-0", "5-0", False, False),  # trimmed up to the checkpoint
        ("5-0", "9-0", "3-0", True, False),  # committed, not trimmed yet
        ("5-0", "9-0", "3-0", False, True),  # never had it: an older copy, written since
        ("5-0", "4-0", None, False, True),  # the stream stops before the checkpoint
        ("5-0", None, None, False, True),  # no stream at all
        ("5-0", "9-0", None, False, False),  # no marker (a Redis from before markers)
    ],
)
def test_is_behind(
    checkpoint: str, last_id: str | None, applied: str | None, present: bool, behind: bool
) -> None:
    assert is_behind(checkpoint, last_id, applied, present) is behind


async def a_reservation_is_refused_behind(
    app: Starlette, client: httpx.AsyncClient
) -> dict[str, str]:
    """A staff reservation over HTTP: 503 redis_behind, to come back in 5 s. The staff's
    headers."""
    staff = bearer(app, "1", staff=True)
    refused = await client.post(
        "/api/reservations/", json={"product": 7, "quantity": 1}, headers=staff
    )
    assert refused.status_code == 503, refused.text
    assert err(refused)["code"] == "redis_behind"
    assert refused.headers["retry-after"] == "5"
    return staff


async def test_readyz_and_the_dashboard_say_the_drain_is_paused(
    stack: Stack, tmp_path: Path
) -> None:
    await stock_then_copy(stack, tmp_path / "older")
    async with Engine.from_settings(stack.settings) as engine:
        await engine.reserve([LineRequest("drop", 4)], BUYER)
    drain_partition(stack.client, stack.db, stack.settings, 0)
    stack.restore_aof(tmp_path / "older")
    assert drain_partition(stack.client, stack.db, stack.settings, 0).behind

    app = create_app(dataclasses.replace(stack.settings, jwt_keys="test:" + "k" * 40))
    async with running(app) as client:
        staff = await a_reservation_is_refused_behind(app, client)
        anonymous = await until_not_ready(client)
        assert err(anonymous)["details"] == {"failing": ["drain"]}
        details = err(await client.get("/readyz", headers=staff))["details"]
        assert "inventory reconcile --fix" in details["problems"]["drain"]
        board = (await client.get("/api/ops/dashboard/", headers=staff)).json()["data"]
        paused = board["partitions"][0]["redis_behind"]
        assert paused["checkpoint"] == json.loads(str(stack.client.get(K.behind)))["checkpoint"]

        code, _ = stack.inventory("reconcile", "--fix")
        assert code == 0
        await until_ready(client)
        board = (await client.get("/api/ops/dashboard/", headers=staff)).json()["data"]
        assert board["partitions"][0]["redis_behind"] is None


@pytest.mark.parametrize("seed", range(int(os.environ.get("RECONCILE_SEEDS", "3"))))
async def test_a_random_sale_restored_after_an_older_copy_is_exactly_the_record(
    stack: Stack, tmp_path: Path, seed: int
) -> None:
    """A random workload, an older copy of Redis taken part way, more of the sale drained,
    then the older copy restored: --fix leaves exactly what the database recorded — the
    counters, the live reservations, the orders in their status — and what was never drained
    is lost with the newer copy, as the failure model says."""
    rng = random.Random(seed)
    async with Engine.from_settings(stack.settings) as engine:
        m = await set_up(engine, rng)
        await run_ops(engine, m, rng, 15)
        drain_partition(stack.client, stack.db, stack.settings, 0)
    stack.copy_aof(tmp_path / "older")
    async with Engine.from_settings(stack.settings) as engine:
        await run_ops(engine, m, rng, 25)
        drain_partition(stack.client, stack.db, stack.settings, 0)
        recorded = copy.deepcopy(m)
        await run_ops(engine, m, rng, 5)  # never drained: lost with this copy
    stack.restore_aof(tmp_path / "older")

    code, fixed = stack.inventory("reconcile", "--fix")

    assert code == 0, fixed
    assert fixed["conflicts"] == []
    async with Engine.from_settings(stack.settings) as engine:
        model = {pw: (a, r) for pw, (a, r) in recorded.counters.items()}
        assert await redis_counters(engine) == model
        k = partition_keys(0)
        assert set(await engine.redis.hkeys(k.live)) == set(recorded.live)
        for oid, (status, _) in recorded.orders.items():
            assert await engine.redis.hget(k.order(oid), "status") == status, oid
    drain_partition(stack.client, stack.db, stack.settings, 0)
    after = check(stack.client, stack.db, stack.settings)
    assert after.ok, after.drift


# -- a Redis that has started is checked before its first write --------------------------------
#
# Restarted from its own files, restored from an older copy, a replica promoted: it is checked
# against the database's record before its first write to each partition (lua/lib.lua
# `verified`, lua/verify.lua, engine/scripts.py). A copy that lost what the database holds
# refuses at once, before any drain has run, so nothing the record sold is sold again; one
# that lost nothing sells on as if it had never stopped; and while the record can't be read,
# nothing is decided there.


def checked(stack: Stack) -> Engine:
    """An engine as the API's: it checks a Redis that has started against the database."""
    return Engine.from_settings(stack.settings, checkpoints=behind.checkpoints(stack.db))


def buyer(i: int) -> CallContext:
    return CallContext(actor=f"buyer-{i}", request_id=f"req-{i}")


def without_flag(keys: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in keys.items() if key != K.behind}


async def sold_out_then_restored(stack: Stack, tmp_path: Path) -> str:
    """All 10 units of "drop" sold and drained, then Redis restored from a copy taken before
    the sale (the 10 units look free again). Returns the database's checkpoint."""
    await stock_then_copy(stack, tmp_path / "older")
    async with checked(stack) as engine:
        sold = await engine.reserve([LineRequest("drop", 10)], BUYER)
        await engine.commit(sold.id, BUYER)
    checkpoint = drain_partition(stack.client, stack.db, stack.settings, 0).checkpoint
    stack.restore_aof(tmp_path / "older")
    return checkpoint


async def test_a_restored_copy_refuses_its_first_write_before_any_drain(
    stack: Stack, tmp_path: Path
) -> None:
    checkpoint = await sold_out_then_restored(stack, tmp_path)

    async with checked(stack) as engine:  # no drain has run since the restore
        before = await snapshot(engine.redis)
        with pytest.raises(errors.RedisBehind):
            await engine.reserve([LineRequest("drop", 3)], BUYER)
        # concurrent buyers (coalesced into batches) are refused alike
        tried = await asyncio.gather(
            *(engine.reserve([LineRequest("drop", 1)], buyer(i)) for i in range(30)),
            return_exceptions=True,
        )
        assert all(isinstance(r, errors.RedisBehind) for r in tried), tried
        with pytest.raises(errors.RedisBehind):
            await engine.adjust_stock("drop", {"main": 1}, "received", SYSTEM)
        swept = await engine.expire()
        assert (swept.expired, swept.redis_behind) == (0, [0])
        assert await available(engine) == (10, 0)  # what the copy says, and nothing sold
        after = await snapshot(engine.redis)

    assert without_flag(after) == before  # nothing changed but the flag raised
    flag = json.loads(str(stack.client.get(K.behind)))
    assert (flag["partition"], flag["checkpoint"]) == (0, checkpoint)

    # the drain agrees, and the fix restores the record: the 10 units stay sold
    assert drain_partition(stack.client, stack.db, stack.settings, 0).behind
    code, fixed = stack.inventory("reconcile", "--fix")
    assert code == 0, fixed
    async with checked(stack) as engine:
        assert await available(engine) == (0, 0)
        with pytest.raises(errors.InsufficientStock):
            await engine.reserve([LineRequest("drop", 1)], BUYER)


async def test_the_api_refuses_a_restored_copy_at_once(stack: Stack, tmp_path: Path) -> None:
    await sold_out_then_restored(stack, tmp_path)
    app = create_app(dataclasses.replace(stack.settings, jwt_keys="test:" + "k" * 40))
    async with running(app) as client:
        await a_reservation_is_refused_behind(app, client)
    assert stack.client.exists(K.behind)


async def test_a_redis_restarted_from_its_own_files_sells_on(stack: Stack) -> None:
    async with checked(stack) as engine:
        await engine.setup_product("drop", SYSTEM, price=500, stock={"main": 10})
        await engine.reserve([LineRequest("drop", 4)], BUYER)
    drain_partition(stack.client, stack.db, stack.settings, 0)
    stack.server.stop()
    stack.server.start()  # the same files: nothing lost

    reads: list[int] = []
    read = behind.checkpoints(stack.db)

    async def counted(partition: int) -> str | None:
        reads.append(partition)
        return await read(partition)

    async with Engine.from_settings(stack.settings, checkpoints=counted) as engine:
        made = await asyncio.gather(
            *(engine.reserve([LineRequest("drop", 1)], buyer(i)) for i in range(6))
        )
        assert len({r.id for r in made}) == 6
        assert await available(engine) == (0, 10)
    assert reads == [0]  # one check, shared by the concurrent first writers
    assert not stack.client.exists(K.behind)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_while_the_record_cannot_be_read_a_started_redis_decides_nothing(
    stack: Stack,
) -> None:
    async with checked(stack) as engine:
        await engine.setup_product("drop", SYSTEM, price=500, stock={"main": 10})
    drain_partition(stack.client, stack.db, stack.settings, 0)
    stack.server.stop()
    stack.server.start()

    away = dataclasses.replace(
        stack.settings,
        database_url=f"postgresql+psycopg://nobody@127.0.0.1:{_closed_port()}/none",
    )
    db = database_engine(away, connect_args={"connect_timeout": 2})
    try:
        cut_off = Engine.from_settings(stack.settings, checkpoints=behind.checkpoints(db))
        async with cut_off as engine:
            before = await snapshot(engine.redis)
            with pytest.raises(errors.RedisUnverified):
                await engine.reserve([LineRequest("drop", 1)], BUYER)
            assert await snapshot(engine.redis) == before
    finally:
        db.dispose()

    async with checked(stack) as engine:  # the record back: checked, and it sells
        await engine.reserve([LineRequest("drop", 1)], BUYER)
        assert await available(engine) == (9, 1)


async def test_a_redis_that_lost_everything_refuses_and_the_fix_restores_it(
    stack: Stack,
) -> None:
    async with checked(stack) as engine:
        await engine.setup_product("drop", SYSTEM, price=500, stock={"main": 10})
        first = await engine.reserve([LineRequest("drop", 4)], KEYED)
    drain_partition(stack.client, stack.db, stack.settings, 0)
    stack.server.stop()
    shutil.rmtree(stack.server.data_dir / "appendonlydir")  # its data lost
    stack.server.start()

    async with checked(stack) as engine:
        with pytest.raises(errors.RedisBehind):  # at once: no product to sell from nothing
            await engine.reserve([LineRequest("drop", 1)], BUYER)

    code, fixed = stack.inventory("reconcile", "--fix")  # what every message says to run
    assert code == 0, fixed
    assert [r["kind"] for r in fixed["repairs"]][:1] == ["redis_rebuilt"]
    async with checked(stack) as engine:
        assert await available(engine) == (6, 4)
        again = await engine.reserve([LineRequest("drop", 4)], KEYED)
        assert (again.id, again.replayed) == (first.id, True)


async def test_a_process_on_a_database_not_set_up_passes_no_copy(
    stack: Stack, tmp_path: Path
) -> None:
    """A process pointed at a database without the schema (a wrong DATABASE_URL) has no
    record to check a started Redis against: its writes there are refused, and it does not
    pass a restored copy for the processes that have the record."""
    await sold_out_then_restored(stack, tmp_path)
    empty = dataclasses.replace(stack.settings, database_url=f"sqlite:///{tmp_path / 'x.db'}")
    db = database_engine(empty)
    try:
        astray = Engine.from_settings(stack.settings, checkpoints=behind.checkpoints(db))
        async with astray as engine:
            with pytest.raises(errors.RedisUnverified):
                await engine.reserve([LineRequest("drop", 3)], BUYER)
    finally:
        db.dispose()
    async with checked(stack) as engine:
        with pytest.raises(errors.RedisBehind):
            await engine.reserve([LineRequest("drop", 3)], BUYER)


@pytest.mark.parametrize(
    ("checkpoint", "last_id", "applied", "present", "is_behind"),
    [
        ("0-0", None, None, False, False),  # the database has applied nothing yet
        ("5-0", "9-0", "5-0", False, False),  # trimmed up to the checkpoint
        ("5-0", "9-0", "3-0", True, False),  # committed, not trimmed yet
        ("5-0", "9-0", "3-0", False, True),  # never had it: an older copy, written since
        ("5-0", "4-0", None, False, True),  # the stream stops before the checkpoint
        ("5-0", None, None, False, True),  # no stream at all
        ("5-0", "9-0", None, False, False),  # no marker (a Redis from before markers)
    ],
)
def test_the_check_is_the_drains(
    sync_redis: redis.Redis,
    checkpoint: str,
    last_id: str | None,
    applied: str | None,
    present: bool,
    is_behind: bool,
) -> None:
    """lua/verify.lua decides as persistence/behind.py's is_behind (the drain's test)."""
    assert behind.is_behind(checkpoint, last_id, applied, present) is is_behind
    k = partition_keys(3)
    sync_redis.delete(k.outbox, k.applied, k.behind)
    if present:
        sync_redis.xadd(k.outbox, {"type": "x"}, id=checkpoint)
    if last_id is not None:
        sync_redis.xadd(k.outbox, {"type": "x"}, id=last_id)
        if not present:
            sync_redis.xtrim(k.outbox, maxlen=0)  # the stream's entries gone, its last id kept
    if applied is not None:
        sync_redis.set(k.applied, applied)
    load_sync(sync_redis)
    refused = Call(library().function(specs.RESERVE.name), [], [])  # (this version's)
    call, partition = verify_call(k.behind, checkpoint, refused)
    reply = parse(call_sync(sync_redis, call))
    assert (partition, reply["behind"]) == (3, is_behind)
    assert bool(sync_redis.exists(k.behind)) is is_behind
