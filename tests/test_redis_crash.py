"""Redis killed with SIGKILL under load, `appendfsync always`: every reservation it acknowledged
is there after it restarts from its AOF — the record, the live entry, the units held, the
event — and the counters, the invariants, the drain and `reconcile` agree."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path

import redis
from sqlalchemy import Engine as DatabaseEngine

from engine.engine import Engine
from engine.invariants import Counter, check_partition
from engine.keys import partition_keys
from engine.models import SYSTEM, CallContext, LineRequest, ReservationStatus
from engine.settings import Settings
from persistence import schema
from scripts.redis_server import RedisServer
from tests.durable import count, duplicates, events_added
from tests.helpers import events
from tests.support import STAFF, last_json, run_cli

K = partition_keys(0)
BUYERS = 16  # concurrent callers, each with one reservation call in flight at a time
LOAD_S = 1.5  # how long they reserve before Redis is killed
STOCK = 1_000_000  # plenty: every call that reaches Redis succeeds


async def test_every_acknowledged_reservation_survives_a_sigkill(
    tmp_path: Path, settings: Settings, pg_url: str, pg: DatabaseEngine
) -> None:
    server = RedisServer(tmp_path / "redis", appendfsync="always")
    server.start()
    # each buyer holds many reservations: no cap (tests/test_limits.py has it)
    own = dataclasses.replace(settings, redis_url=server.url, max_live_reservations_per_customer=0)
    acknowledged: set[str] = set()
    failed: list[BaseException] = []

    async def buyer(engine: Engine, n: int) -> None:
        ctx = CallContext(actor=f"buyer-{n}", request_id=f"req-{n}")
        while True:
            try:
                held = await engine.reserve([LineRequest("sku-1", 1)], ctx)
            except redis.ConnectionError as exc:  # Redis is gone: this call was in flight
                failed.append(exc)
                return
            acknowledged.add(held.id)

    try:
        async with Engine.from_settings(own) as engine:
            await engine.setup_product("sku-1", SYSTEM, price=100, stock={"main": STOCK})
            buyers = [asyncio.create_task(buyer(engine, n)) for n in range(BUYERS)]
            await asyncio.sleep(LOAD_S)
            assert not [t for t in buyers if t.done()], "a buyer stopped before the kill"
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGKILL)
            at_kill = len(acknowledged)
            await asyncio.wait_for(asyncio.gather(*buyers), timeout=60)
        assert server.process.wait(timeout=10) == -signal.SIGKILL
        # Every buyer's last call failed; only those (at most one each) may have been applied
        # without an answer. (A few answers Redis sent just before the signal may still be read
        # after it: they count as acknowledged, and must survive like the rest.)
        assert len(failed) == BUYERS
        assert len(acknowledged) >= at_kill > 0

        server.start()  # the same folder and port: from the AOF
        async with Engine.from_settings(own) as engine:
            live = set(await engine.redis.hkeys(K.live))
            report = await check_partition(engine.redis, 0)
            outbox = await events(engine.redis)
            records = [await engine.get_reservation(r, STAFF) for r in sorted(acknowledged)]

        assert acknowledged <= live
        assert len(live - acknowledged) <= BUYERS
        assert all(r.status == ReservationStatus.ACTIVE for r in records)
        assert all(
            [(x.product, x.warehouse, x.quantity) for x in r.lines] == [("sku-1", "main", 1)]
            for r in records
        )
        assert report.ok, report.problems
        assert report.counters == {("sku-1", "main"): Counter(STOCK - len(live), len(live))}
        created = [e for e in outbox if e["type"] == "reservation_created"]
        assert sorted(e["reservation"] for e in created) == sorted(live)

        env = {"REDIS_URL": server.url, "DATABASE_URL": pg_url}
        checked = run_cli("check", "--json", env=env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        drained = run_cli("drain", env=env)
        assert drained.returncode == 0, drained.stderr
        reconciled = run_cli("reconcile", "--json", env=env)
        assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
        assert last_json(reconciled)["ok"] is True
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            assert count(pg, schema.audit_log) == len(outbox) == events_added(client)
        finally:
            client.close()
        assert duplicates(pg) == {"audit": 0, "ledger": 0}
    finally:
        server.stop()
