"""`reconcile`: exact with a backlog, each kind of drift found, and --fix repairing the side
that is wrong, with an audit row per repair, until a second check (and a drain) is clean."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import event, func, select, text

from engine import errors
from engine.connection import connect_sync
from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import SYSTEM, LineRequest, ProductLimits
from engine.settings import Settings
from persistence import schema
from persistence.drain import drain_partition
from persistence.reconcile import Report, check, reconcile
from scripts.redis_server import RedisServer
from tests.durable import BUYER, projection, redis_counters, workload
from tests.support import last_json, run_cli

K = partition_keys(0)


def kinds(report: Report) -> list[str]:
    return sorted(d.kind for d in report.drift)


def fixes(db: DatabaseEngine) -> list[dict[str, Any]]:
    a = schema.audit_log
    query = select(a).where(a.c.action == "reconcile_fix").order_by(a.c.id)
    with db.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def ledger_sums(db: DatabaseEngine) -> dict[tuple[str, str], tuple[int, int]]:
    lg = schema.stock_ledger
    query = select(
        lg.c.product, lg.c.warehouse, func.sum(lg.c.delta_available), func.sum(lg.c.delta_reserved)
    ).group_by(lg.c.product, lg.c.warehouse)
    with db.connect() as conn:
        return {(p, w): (int(a), int(r)) for p, w, a, r in conn.execute(query)}


async def drained_with_live(engine: Engine, sync_redis: redis.Redis, db: DatabaseEngine) -> str:
    """The workload (which leaves two live reservations of 2 units of sku-1) plus a live
    reservation of 3 units of sku-1 in main, drained; returns the latter's id."""
    await workload(engine, rounds=8)
    live = await engine.reserve([LineRequest("sku-1", 3, "main")], BUYER)
    drain_partition(sync_redis, db, engine.settings, 0)
    return live.id


def assert_clean_after_drain(sync_redis: redis.Redis, db: DatabaseEngine, s: Settings) -> None:
    drain_partition(sync_redis, db, s, 0)
    after = check(sync_redis, db, s)
    assert after.ok, after.drift
    assert after.partitions[0].backlog == 0


async def test_no_drift_after_a_workload_and_a_drain(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await drained_with_live(engine, sync_redis, db)

    report = check(sync_redis, db, settings)

    assert report.ok, report.drift
    assert {(r.product, r.warehouse) for r in report.rows} == {("sku-1", "main"), ("sku-1", "east")}
    main = next(r for r in report.rows if r.warehouse == "main")
    assert main.redis == main.database == main.expected == main.ledger
    assert main.live_reserved == main.redis[1] == 3 + 2 * 2  # the workload leaves two
    assert report.partitions[0].backlog == 0
    assert report.partitions[0].live_reservations == 3


async def test_exact_with_a_backlog_the_database_has_yet_to_apply(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=6)
    everything_pending = check(sync_redis, db, settings)  # nothing drained at all
    assert everything_pending.ok, everything_pending.drift
    assert everything_pending.rows[0].expected == (0, 0)

    drain_partition(sync_redis, db, dataclasses.replace(settings, drain_batch=5), 0, max_batches=2)
    for _ in range(3):
        await engine.reserve([LineRequest("sku-1", 2, "main")], BUYER)

    report = check(sync_redis, db, settings)

    assert report.ok, report.drift
    assert report.partitions[0].backlog > 3
    main = next(r for r in report.rows if r.warehouse == "main")
    assert main.pending > 0
    assert main.expected != main.redis  # the database stands where the first pending began
    assert main.database == main.expected == main.ledger
    assert_clean_after_drain(sync_redis, db, settings)


async def test_no_false_drift_while_writes_and_drains_run_alongside(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=2)
    stop = threading.Event()

    def drain_forever() -> None:
        client = connect_sync(settings)
        while not stop.is_set():
            drain_partition(client, db, dataclasses.replace(settings, drain_batch=3), 0)
        client.close()

    async def write_forever() -> None:
        while not stop.is_set():
            r = await engine.reserve([LineRequest("sku-1", 1)], BUYER)
            await engine.release(r.id, BUYER)

    drainer = threading.Thread(target=drain_forever)
    drainer.start()
    writer = asyncio.create_task(write_forever())
    try:
        reports = [await asyncio.to_thread(check, sync_redis, db, settings) for _ in range(15)]
    finally:
        stop.set()
        await writer
        drainer.join()
    assert [r.drift for r in reports if not r.ok] == []
    assert any(r.partitions[0].backlog for r in reports)
    assert_clean_after_drain(sync_redis, db, settings)


async def test_a_drain_between_the_two_reads_makes_the_check_look_again(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=2)
    drain_partition(sync_redis, db, settings, 0)
    loop = asyncio.get_running_loop()
    drains: list[bool] = []

    def write_and_drain(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # just before the database read begins: a new event, and a drain that applies it
        if statement.startswith("SELECT reservations.id, reservations.partition"):
            reserve = engine.reserve([LineRequest("sku-1", 1)], BUYER)
            asyncio.run_coroutine_threadsafe(reserve, loop).result()
            drains.append(drain_partition(sync_redis, db, settings, 0).locked_out)

    event.listen(db, "before_cursor_execute", write_and_drain)
    try:
        report = await asyncio.to_thread(check, sync_redis, db, settings)
    finally:
        event.remove(db, "before_cursor_execute", write_and_drain)

    assert report.ok, report.drift
    # three attempts saw the checkpoint move past their snapshot; the last held the lock
    assert drains == [False, False, False, True]
    assert_clean_after_drain(sync_redis, db, settings)


async def test_a_damaged_projection_is_overwritten_from_redis(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await drained_with_live(engine, sync_redis, db)
    with db.begin() as conn:
        conn.execute(text("UPDATE stock_levels SET available = available + 5, reserved = 0"))

    found = check(sync_redis, db, settings)
    assert kinds(found) == ["projection", "projection"]
    assert {(d.right, d.repair) for d in found.drift} == {("redis", "database")}
    counters = await redis_counters(engine)
    main = next(d for d in found.drift if d.warehouse == "main")
    available, reserved = counters[("sku-1", "main")]
    assert main.redis == {"available": available, "reserved": reserved}
    assert main.database == {"available": available + 5, "reserved": 0}

    fixed = reconcile(sync_redis, db, settings, fix=True)

    assert fixed.ok, fixed.drift
    assert fixed.found is not None
    assert kinds(fixed) == []
    assert len(fixed.found) == 2
    assert projection(db) == counters
    audit = fixes(db)
    assert [(a["actor"], a["object_type"], a["object_id"]) for a in audit] == [
        ("reconcile", "product", "sku-1"),
        ("reconcile", "product", "sku-1"),
    ]
    by_warehouse = {a["new_value"]["warehouse"]: a for a in audit}
    assert by_warehouse["main"]["old_value"]["reserved"] == 0
    assert by_warehouse["main"]["new_value"]["reserved"] == reserved
    assert_clean_after_drain(sync_redis, db, settings)


async def test_a_reserved_counter_moved_without_an_event_is_rolled_back(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await drained_with_live(engine, sync_redis, db)
    before = (await redis_counters(engine))[("sku-1", "main")]
    await engine.redis.hincrby(K.stock, "r|sku-1|main", 2)  # a stray HINCRBY: no event

    found = check(sync_redis, db, settings)
    assert kinds(found) == ["counter", "unrecorded"]
    counter = next(d for d in found.drift if d.kind == "counter")
    assert counter.redis == {
        "available": before[0],
        "reserved": before[1] + 2,
        "live_reserved": before[1],
    }
    unrecorded = next(d for d in found.drift if d.kind == "unrecorded")
    assert (unrecorded.right, unrecorded.repair) == ("database", "redis")
    assert unrecorded.database == {"available": before[0], "reserved": before[1]}

    fixed = reconcile(sync_redis, db, settings, fix=True)

    assert fixed.ok, fixed.drift
    # back to the ledger: the 2 units nobody reserved are gone again, none made available
    assert (await redis_counters(engine))[("sku-1", "main")] == before
    assert [f["kind"] for f in fixed.repairs] == ["stock_reconciled"]
    # what the counter was and is (its event's movement is the ledger's: none)
    moved = fixed.repairs[0]
    assert (moved["reserved_before"], moved["reserved_after"]) == (before[1] + 2, before[1])
    assert (moved["available_before"], moved["available_after"]) == (before[0], before[0])
    assert fixed.partitions[0].backlog == 1  # its event, waiting for the drain
    assert_clean_after_drain(sync_redis, db, settings)
    assert ledger_sums(db) == await redis_counters(engine) == projection(db)
    [audit] = fixes(db)
    assert audit["event_id"].startswith("p0-")  # written by the drain, from the event
    assert audit["old_value"] == {
        "warehouse": "main",
        "available": before[0],
        "reserved": before[1] + 2,
        "live_reserved": before[1],
    }
    assert audit["new_value"] == {
        "warehouse": "main",
        "available": before[0],
        "reserved": before[1],
    }


async def test_an_available_counter_moved_without_an_event_is_rolled_back_not_recorded(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await drained_with_live(engine, sync_redis, db)
    counters = await redis_counters(engine)
    await engine.redis.hincrby(K.stock, "a|sku-1|east", 3)  # 3 units nobody received

    found = check(sync_redis, db, settings)
    assert kinds(found) == ["unrecorded"]
    assert found.drift[0].database["available"] == found.drift[0].redis["available"] - 3

    fixed = reconcile(sync_redis, db, settings, fix=True)

    assert fixed.ok, fixed.drift
    assert await redis_counters(engine) == counters  # the record was right: rolled back
    assert_clean_after_drain(sync_redis, db, settings)
    assert ledger_sums(db) == counters == projection(db)


async def test_a_hand_edit_a_drained_event_followed_is_still_rolled_back(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    # The drain adds each movement's change to stock_levels: a counter changed in Redis with
    # no event is never copied into the database by the next event's drain (which then held
    # the edit as recorded, and reconcile took the ledger for the damaged side).
    await drained_with_live(engine, sync_redis, db)
    counters = await redis_counters(engine)
    await engine.redis.hincrby(K.stock, "a|sku-1|east", 5)  # 5 units nobody received
    await engine.reserve([LineRequest("sku-1", 1, "east")], BUYER)  # its event, drained
    drain_partition(sync_redis, db, settings, 0)
    a, r = counters[("sku-1", "east")]
    recorded = {**counters, ("sku-1", "east"): (a - 1, r + 1)}
    assert ledger_sums(db) == recorded == projection(db)

    found = check(sync_redis, db, settings)
    assert kinds(found) == ["unrecorded"]
    assert (found.drift[0].right, found.drift[0].repair) == ("database", "redis")
    assert found.drift[0].redis == {"available": a - 1 + 5, "reserved": r + 1}
    assert found.drift[0].database == {"available": a - 1, "reserved": r + 1}

    fixed = reconcile(sync_redis, db, settings, fix=True)

    assert fixed.ok, fixed.drift
    assert await redis_counters(engine) == recorded  # the 5 are gone again, never sold
    assert_clean_after_drain(sync_redis, db, settings)
    assert ledger_sums(db) == recorded == projection(db)


async def test_a_hand_edit_sold_before_the_check_is_a_conflict_drained_or_not(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    # 2 units in the record, 5 more put in Redis by hand, 6 reserved: rolling the 5 back would
    # leave -4 available: units promised twice. Listed, after the drain as before; and rolled
    # back as far as it goes: the 1 unit left closes (it stayed on sale: sold again, and again)
    await engine.setup_product("drop", SYSTEM, price=100, stock={"main": 2})
    drain_partition(sync_redis, db, settings, 0)
    await engine.redis.hincrby(K.stock, "a|drop|main", 5)
    await engine.reserve([LineRequest("drop", 6, "main")], BUYER)
    for drained in (False, True):
        if drained:
            drain_partition(sync_redis, db, settings, 0)
            assert ledger_sums(db)[("drop", "main")] == projection(db)[("drop", "main")] == (-4, 6)

        fixed = reconcile(sync_redis, db, settings, fix=True)

        assert not fixed.ok
        offset = 5 if not drained else 4  # (the first fix took 1 back already)
        assert [(c["product"], c["offset_available"]) for c in fixed.conflicts] == [
            ("drop", offset)
        ]
        assert (await redis_counters(engine))[("drop", "main")] == (0, 6)  # closed
        with pytest.raises(errors.InsufficientStock):
            await engine.reserve([LineRequest("drop", 1, "main")], BUYER)


async def test_a_product_s_purchase_limits_are_part_of_its_record(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    # The database's settings were read without their limits: every product with a limit was
    # reported as product_settings drift (the periodic check logged it every minute), and
    # --fix wrote the settings back to Redis without the limit: a fair drop was unlimited.
    await engine.setup_product(
        "fair", SYSTEM, price=100, stock={"main": 5}, limits=ProductLimits(max_per_customer=1)
    )
    drain_partition(sync_redis, db, settings, 0)
    assert check(sync_redis, db, settings).ok

    meta = json.loads(str(sync_redis.hget(K.products, "fair")))
    sync_redis.hset(K.products, "fair", json.dumps({**meta, "limits": {"max_per_customer": 9}}))
    found = check(sync_redis, db, settings)
    assert kinds(found) == ["product_settings"]
    assert found.drift[0].database["limits"] == {"max_per_customer": 1}

    fixed = reconcile(sync_redis, db, settings, fix=True)

    assert fixed.ok, fixed.drift
    assert json.loads(str(sync_redis.hget(K.products, "fair")))["limits"] == {"max_per_customer": 1}
    await engine.reserve([LineRequest("fair", 1)], BUYER)
    with pytest.raises(errors.EngineError) as refused:
        await engine.reserve([LineRequest("fair", 1)], BUYER)
    assert refused.value.code == "limit_exceeded"


async def test_a_deleted_live_entry_is_put_back_from_the_record(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    rid = await drained_with_live(engine, sync_redis, db)
    counters = await redis_counters(engine)
    entry = await engine.redis.hget(K.live, rid)
    await engine.redis.hdel(K.live, rid)

    found = check(sync_redis, db, settings)
    assert kinds(found) == ["counter", "expiry_without_live", "reservation_missing_in_redis"]

    fixed = reconcile(sync_redis, db, settings, fix=True)

    assert fixed.ok, fixed.drift
    # the 3 units stay reserved for their buyer: the reservation is live again, as recorded
    assert await redis_counters(engine) == counters
    assert json.loads(str(await engine.redis.hget(K.live, rid))) == json.loads(str(entry))
    assert await engine.redis.zscore(K.expiry, rid) is not None
    assert [(f["side"], f["kind"]) for f in fixed.repairs] == [("redis", "reservation_restored")]
    order = await engine.commit(rid, BUYER)  # and it works on
    assert order.lines[0].quantity == 3
    assert_clean_after_drain(sync_redis, db, settings)
    [audit] = fixes(db)
    assert (audit["object_type"], audit["object_id"]) == ("reservation", rid)
    assert audit["new_value"]["live"] is True


async def test_a_deleted_live_entry_that_counted_nothing_is_put_back_as_it_was(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    # with no cap on live reservations, one of a product without limits counts nothing: its
    # record's counts are an empty object, and the entry put back is the one deleted (it once
    # came back with ',}' appended: not JSON)
    uncapped = dataclasses.replace(settings, max_live_reservations_per_customer=0)
    async with Engine.from_settings(uncapped) as free:
        rid = await drained_with_live(free, sync_redis, db)
        entry = await free.redis.hget(K.live, rid)
        await free.redis.hdel(K.live, rid)

        fixed = reconcile(sync_redis, db, uncapped, fix=True)

        assert fixed.ok, fixed.drift
        assert json.loads(str(await free.redis.hget(K.live, rid))) == json.loads(str(entry))
        order = await free.commit(rid, BUYER)
        assert order.lines[0].quantity == 3
        assert_clean_after_drain(sync_redis, db, uncapped)


async def test_orphan_records_on_either_side(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await drained_with_live(engine, sync_redis, db)
    ghost, stray = "a" * 32, "b" * 32
    now = "2026-01-01 00:00:00"
    with db.begin() as conn:  # a reservation only the database has (due long ago)
        conn.execute(
            text(
                "INSERT INTO reservations (id, user_id, status, created_at, expires_at,"
                " request_id, partition) VALUES (:id, 'u', 'active', :now, :now, '', 0)"
            ),
            {"id": ghost, "now": now},
        )
    # and a live one only Redis has, without its record, its index entry or its counters
    await engine.redis.hset(K.live, stray, '{"owner":"u","lines":[["sku-1","east",2]]}')
    counters = await redis_counters(engine)

    found = check(sync_redis, db, settings)
    assert kinds(found) == [
        "counter",
        "live_without_expiry",
        "reservation_missing_in_redis",
        "reservation_unrecorded",
    ]

    fixed = reconcile(sync_redis, db, settings, fix=True)

    assert fixed.ok, fixed.drift
    # no unit moved: the stray held none the record knows of; the ghost held none at all
    assert await redis_counters(engine) == counters
    assert not await engine.redis.hexists(K.live, stray)
    assert not await engine.redis.hexists(K.live, ghost)  # put back, due: expired at once
    kinds_done = sorted(f["kind"] for f in fixed.repairs)
    assert kinds_done == ["due_expired", "reservation_ended", "reservation_restored"]
    assert_clean_after_drain(sync_redis, db, settings)
    with db.connect() as conn:
        rs = schema.reservations
        statuses = dict(
            conn.execute(select(rs.c.id, rs.c.status).where(rs.c.id.in_([ghost, stray]))).all()
        )
    assert statuses == {ghost: "expired"}  # through the normal path, with its event


async def test_order_status_drift_and_an_order_gone_from_redis(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=4)  # leaves a confirmed order and a pending one
    drain_partition(sync_redis, db, settings, 0)
    o = schema.orders
    with db.connect() as conn:
        live = dict(conn.execute(select(o.c.status, o.c.id).where(o.c.status != "cancelled")).all())
    with db.begin() as conn:
        conn.execute(o.update().where(o.c.id == live["pending"]).values(status="shipped"))
    confirmed = await engine.redis.hgetall(K.order(live["confirmed"]))
    await engine.redis.delete(K.order(live["confirmed"]))

    found = check(sync_redis, db, settings)
    by_kind = {d.kind: d for d in found.drift}
    assert sorted(by_kind) == ["order_missing_in_redis", "order_status"]
    # the history says pending, as Redis does: the row is off
    assert (by_kind["order_status"].redis, by_kind["order_status"].database) == (
        "pending",
        "shipped",
    )
    missing = by_kind["order_missing_in_redis"]
    assert (missing.right, missing.repair) == ("database", "redis")

    fixed = reconcile(sync_redis, db, settings, fix=True)

    assert fixed.ok, fixed.drift
    with db.connect() as conn:
        assert conn.scalar(select(o.c.status).where(o.c.id == live["pending"])) == "pending"
    assert await engine.redis.hgetall(K.order(live["confirmed"])) == confirmed
    order = await engine.transition(live["confirmed"], "processing", SYSTEM)  # moves on
    assert order.status == "processing"
    assert_clean_after_drain(sync_redis, db, settings)
    audit = {a["object_id"]: a for a in fixes(db)}
    assert (audit[live["pending"]]["old_value"], audit[live["pending"]]["new_value"]) == (
        {"status": "shipped"},
        {"status": "pending"},
    )
    assert audit[live["confirmed"]]["new_value"] == {"status": "confirmed"}


async def test_a_wrong_ledger_is_reported_and_never_rewritten(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await drained_with_live(engine, sync_redis, db)
    with db.begin() as conn:
        conn.execute(text("DELETE FROM stock_ledger WHERE id = (SELECT MAX(id) FROM stock_ledger)"))
    sums = ledger_sums(db)

    fixed = reconcile(sync_redis, db, settings, fix=True)

    assert kinds(fixed) == ["ledger"]
    assert (fixed.drift[0].right, fixed.drift[0].repair) == ("redis", "none")
    assert fixed.repairs == []
    assert ledger_sums(db) == sums
    assert not fixed.ok


async def test_counters_gone_from_redis_are_put_back_from_the_ledger(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await drained_with_live(engine, sync_redis, db)
    before = projection(db)
    await engine.redis.hdel(K.stock, "a|sku-1|east", "r|sku-1|east")

    found = check(sync_redis, db, settings)
    assert [(d.kind, d.right, d.repair, d.warehouse) for d in found.drift] == [
        ("stock_missing_in_redis", "database", "redis", "east")
    ]

    fixed = reconcile(sync_redis, db, settings, fix=True)

    assert fixed.ok, fixed.drift
    assert await redis_counters(engine) == before == projection(db)
    assert_clean_after_drain(sync_redis, db, settings)


async def test_dead_letters_and_backlog_are_reported(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=2)
    await engine.redis.xadd(K.outbox, {"type": "no_such_event", "data": json.dumps({"ts": 1})})
    drain_partition(sync_redis, db, settings, 0)
    await engine.reserve([LineRequest("sku-1", 1)], BUYER)

    report = check(sync_redis, db, settings)

    assert report.drift == []
    state = report.partitions[0]
    assert (state.dead_letters_redis, state.dead_letters_unresolved, state.backlog) == (1, 1, 1)
    assert state.oldest_pending_age_ms is not None
    assert state.oldest_pending_age_ms >= 0
    assert not report.ok  # an event the database lacks


async def test_redis_restarted_from_its_aof_shows_no_drift(
    tmp_path: Path, pg: DatabaseEngine, settings: Settings
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    own = dataclasses.replace(settings, redis_url=server.url)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        async with Engine.from_settings(own) as engine:
            await workload(engine, rounds=6)
            drain_partition(client, pg, dataclasses.replace(own, drain_batch=10), 0, max_batches=1)
            await engine.reserve([LineRequest("sku-1", 4)], BUYER)
            counters = await redis_counters(engine)
        server.stop()
        server.start()
        report = check(client, pg, own)
        assert report.ok, report.drift
        assert report.partitions[0].backlog > 0
        assert report.partitions[0].live_reservations == 2
        assert {(r.product, r.warehouse): r.redis for r in report.rows} == counters
        assert_clean_after_drain(client, pg, own)
    finally:
        client.close()
        server.stop()


def test_the_cli_reports_and_fixes(
    redis_server: RedisServer, clean_redis: None, pg_url: str, pg: DatabaseEngine
) -> None:
    env = {**os.environ, "REDIS_URL": redis_server.url, "DATABASE_URL": pg_url}

    def inventory(*args: str) -> tuple[int, dict[str, Any], str]:
        proc = run_cli(*args, env=env)
        return proc.returncode, last_json(proc), proc.stderr

    async def setup() -> None:
        async with Engine.from_settings(Settings(redis_url=redis_server.url)) as engine:
            await engine.setup_product("p1", SYSTEM, price=100, stock={"main": 5})
            await engine.reserve([LineRequest("p1", 2)], BUYER)

    asyncio.run(setup())
    code, clean, _ = inventory("reconcile", "--json")
    assert (code, clean["ok"], clean["partitions"][0]["backlog"]) == (0, True, 3)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    drain_partition(client, pg, Settings(redis_url=redis_server.url), 0)
    client.close()
    with pg.begin() as conn:
        conn.execute(text("UPDATE stock_levels SET available = 0"))

    code, drift, _ = inventory("reconcile", "--json")
    assert (code, drift["ok"], [d["kind"] for d in drift["drift"]]) == (1, False, ["projection"])
    code, fixed, _ = inventory("reconcile", "--fix", "--json")
    assert (code, fixed["ok"], len(fixed["repairs"])) == (0, True, 1)
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "reconcile"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0
    assert "no drift" in proc.stderr
