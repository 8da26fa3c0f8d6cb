"""The chaos scenario, then a drain: every success is on the durable record exactly once."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, func, select

from engine import keys
from engine.settings import Settings
from persistence import jobs, schema
from persistence.drain import drain_partition
from scripts.redis_server import RedisServer
from tests.support import last_json, run_cli

pytestmark = pytest.mark.chaos


def inventory(server: RedisServer, database_url: str, *args: str) -> tuple[int, Any]:
    env = {"REDIS_URL": server.url, "DATABASE_URL": database_url}
    proc = run_cli(*args, env=env, timeout=240)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return proc.returncode, last_json(proc)


def test_chaos_then_drain_reconciles_with_one_audit_row_per_success(
    redis_server: RedisServer, clean_redis: None, pg_url: str
) -> None:
    code, chaos = inventory(
        redis_server,
        pg_url,
        "chaos", "--json",
        "--processes", "200",
        "--stock", "30",
        "--products", "3",
        "--warehouses", "2",
        "--max-lines", "3",
        "--settle",
    )  # fmt: skip
    assert code == 0, chaos
    code, drained = inventory(redis_server, pg_url, "drain")
    assert code == 0
    assert drained["drained"][0]["dead"] == 0

    code, report = inventory(redis_server, pg_url, "reconcile", "--json")

    assert code == 0, report
    assert report["ok"] is True
    assert report["drift"] == []
    db = create_engine(pg_url)
    with db.connect() as conn:
        actions: dict[str, int] = dict(
            conn.execute(
                select(schema.audit_log.c.action, func.count()).group_by(schema.audit_log.c.action)
            ).all()
        )
        ledger_units = conn.scalar(
            select(func.sum(schema.stock_ledger.c.delta_total)).where(
                schema.stock_ledger.c.reason == "ordered"
            )
        )
    db.dispose()
    assert actions["reservation_created"] == chaos["succeeded"]
    assert actions["order_created"] == chaos["committed"]
    assert actions["reservation_expired"] == chaos["expired"]
    # the units that left stock for orders are exactly the ones the ledger shows leaving
    assert -int(ledger_units or 0) == 3 * 30 - chaos["total"]


def test_the_periodic_reconcile_keeps_its_last_result(
    redis_server: RedisServer, clean_redis: None, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    for cached in (jobs.settings, jobs.redis_client, jobs.database):
        cached.cache_clear()
    try:
        result = jobs.reconcile_check()
        stored = redis.Redis.from_url(redis_server.url).get(keys.LAST_RECONCILE)
    finally:
        jobs.database().dispose()
        for cached in (jobs.settings, jobs.redis_client, jobs.database):
            cached.cache_clear()
    assert result == {"ok": True, "drift": 0}
    assert stored is not None
    assert json.loads(stored)["ok"] is True


def test_chaos_beside_a_running_drainer_reads_back_all_its_events(
    redis_server: RedisServer, clean_redis: None, pg_url: str
) -> None:
    # A served stack drains all along: chaos holds the drain locks while it runs, so the
    # drainer leaves the run's events in the outbox until chaos has read them back (it trimmed
    # them before, and the run failed with events_ok false), then drains them all.
    settings = Settings(redis_url=redis_server.url, database_url=pg_url)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    db = create_engine(pg_url)
    stop = threading.Event()
    locked_out = 0

    def drainer() -> None:
        nonlocal locked_out
        while not stop.wait(0.01):
            locked_out += drain_partition(client, db, settings, 0).locked_out

    thread = threading.Thread(target=drainer)
    thread.start()
    try:
        code, chaos = inventory(
            redis_server, pg_url, "chaos", "--json", "--processes", "20", "--stock", "5", "--settle"
        )
    finally:
        stop.set()
        thread.join()
    drain_partition(client, db, settings, 0)
    client.close()
    db.dispose()

    assert code == 0, chaos
    assert (chaos["succeeded"], chaos["events_ok"], chaos["oversold"]) == (5, True, False)
    assert locked_out > 0  # the drainer came by while chaos ran, and waited
    code, report = inventory(redis_server, pg_url, "reconcile", "--json")
    assert code == 0, report


def test_chaos_refuses_a_partition_count_other_than_the_data_s(
    redis_server: RedisServer, clean_redis: None, pg_url: str
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.set(keys.LAYOUT, json.dumps({"partitions": 1}))
    before = sorted(client.keys("*"))
    proc = run_cli(
        "chaos", "--processes", "2", "--stock", "1",
        env={"REDIS_URL": redis_server.url, "PARTITIONS": "4"},
        timeout=120,
    )  # fmt: skip

    assert proc.returncode == 2, proc.stderr
    assert "laid out in 1 partitions, but PARTITIONS is 4" in proc.stderr
    assert sorted(client.keys("*")) == before  # nothing written
    client.close()
