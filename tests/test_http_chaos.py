"""HTTP chaos: 500 buyers, each with their own token and their own socket, press "buy" on a
product with 100 units at the same moment, against the real server (`inventory serve`, two
uvicorn workers) on Redis and Postgres. Exactly 100 get a reservation, 400 a clean 409, the
invariants hold, and once drained the database has exactly one audit row and one ledger row
per reservation. The metrics of both workers (multiprocess mode) count the same."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from engine.invariants import check_partition
from engine.settings import Settings
from persistence import schema, users
from persistence.db import database_engine
from persistence.drain import drain_partition
from scripts.redis_server import RedisServer, free_port
from web.auth import Keys, Principal

pytestmark = pytest.mark.chaos

BUYERS = 500
UNITS = 100
JWT_KEYS = "chaos:" + "c" * 40


@pytest.fixture
async def server(
    redis_server: RedisServer, clean_redis: None, pg_url: str, tmp_path: Path
) -> AsyncIterator[str]:
    """`inventory serve --workers 2` on a free port; its base URL once it answers."""
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    log = (tmp_path / "serve.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "scripts.cli", "serve", "--port", str(port)],
        *["--workers", "2", "--no-access-log"],
        env={
            **os.environ,
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": pg_url,
            "JWT_KEYS": JWT_KEYS,
            "RATE_LIMIT_PER_SECOND": "0",  # the buyers are many, not abusive
            "METRICS_PUBLIC": "true",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        },
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.returncode is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "serve did not start listening"
                await asyncio.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=20)
        log.close()


def token(keys: Keys, user: int, *, staff: bool = False) -> dict[str, str]:
    issued = keys.issue(Principal(str(user), f"buyer-{user}", staff), "access")
    return {"Authorization": f"Bearer {issued}"}


class Gate:
    """Holds every buyer at the door until all have connected, then opens at once."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.all_here = asyncio.Event()
        self.open = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.expected:
            self.all_here.set()
        await self.open.wait()


async def buyer(
    base: str, headers: dict[str, str], product: int, gate: Gate, tls: ssl.SSLContext
) -> httpx.Response:
    """One buyer on a connection of their own, opened before the start."""
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60, verify=tls) as http:
        assert (await http.get("/healthz")).status_code == 200  # the socket is open now
        waiting = asyncio.create_task(gate.wait())
        # uvicorn closes a connection idle for 5 s (its keep-alive timeout); gathering 500 of
        # them can take longer on a busy machine, so each buyer keeps its socket warm.
        while not (await asyncio.wait([waiting], timeout=2))[0]:
            assert (await http.get("/healthz")).status_code == 200
        return await http.post(
            "/api/reservations/", json={"product": product, "quantity": 1}, headers=headers
        )


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_500_buyers_100_units_over_real_sockets(
    server: str, redis_server: RedisServer, pg_url: str, tmp_path: Path
) -> None:
    keys = Keys(Settings(database_url=pg_url, jwt_keys=JWT_KEYS))
    db = database_engine(Settings(database_url=pg_url))
    users.ensure_synthetic(db, {1: "buyer-1"}, staff=True)  # a token counts with its account
    users.ensure_synthetic(db, {1000 + i: f"buyer-{1000 + i}" for i in range(BUYERS)})
    db.dispose()
    async with httpx.AsyncClient(base_url=server) as http:
        created = await http.post(
            "/api/products/",
            json={"name": "Drop", "sku": "DROP-1", "price": "49.00", "total_stock": UNITS},
            headers=token(keys, 1, staff=True),
        )
    assert created.status_code == 201, created.text
    product: int = created.json()["data"]["id"]

    gate = Gate(BUYERS)
    tls = ssl.create_default_context()  # unused over http, but made once, not 500 times
    headers = [{**token(keys, 1000 + i), "X-Request-ID": f"buyer-{i}"} for i in range(BUYERS)]
    connecting = time.monotonic()
    buyers = [asyncio.create_task(buyer(server, h, product, gate, tls)) for h in headers]
    waiting = asyncio.create_task(gate.all_here.wait())
    # returns once all are here; the timeout only keeps a broken run from hanging
    await asyncio.wait([waiting, *buyers], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    assert gate.all_here.is_set(), [t.exception() for t in buyers if t.done()][:3]
    connected_s = time.monotonic() - connecting
    started = time.monotonic()
    gate.open.set()
    responses = await asyncio.gather(*buyers)  # each buyer's client times out at 60 s
    burst_s = time.monotonic() - started

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: UNITS, 409: BUYERS - UNITS}, statuses
    won = [r for r in responses if r.status_code == 201]
    lost = [r for r in responses if r.status_code == 409]
    for r in lost:
        body: dict[str, Any] = r.json()
        assert set(body) == {"request_id", "error"}
        assert body["request_id"] == r.headers["x-request-id"]
        assert body["error"]["code"] == "insufficient_stock"
        assert body["error"]["message"]
        assert body["error"]["details"]["lines"] == [
            {"product": product, "warehouse": None, "requested": 1, "available": 0}
        ]
    reservations = {r.json()["data"]["id"]: r.headers["x-request-id"] for r in won}
    assert len(reservations) == UNITS
    assert all(
        r.json()["data"]["lines"] == [{"product": product, "warehouse": "main", "quantity": 1}]
        for r in won
    )

    # Redis: the invariants hold and every unit is held by exactly one reservation
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        report = await check_partition(client, 0)
    finally:
        await client.aclose()
    assert report.ok, report.problems
    counter = report.counters[(str(product), "main")]
    assert (counter.available, counter.reserved) == (0, UNITS)
    assert report.live_reservations == UNITS

    # Postgres after the drain: one audit row and one ledger row per reservation, no more
    settings = Settings(redis_url=redis_server.url, database_url=pg_url, jwt_keys=JWT_KEYS)
    sync = redis.Redis.from_url(redis_server.url, decode_responses=True)
    db = database_engine(settings)
    try:
        drained = await asyncio.to_thread(drain_partition, sync, db, settings, 0)
        audit, ledger = schema.audit_log, schema.stock_ledger
        with db.connect() as conn:
            rows = conn.execute(
                select(audit.c.object_id, audit.c.request_id, audit.c.actor).where(
                    audit.c.action == "reservation_created"
                )
            ).all()
            moved = conn.execute(
                select(
                    func.count(),
                    func.sum(ledger.c.delta_available),
                    func.sum(ledger.c.delta_reserved),
                    func.sum(ledger.c.delta_total),
                    func.count(func.distinct(ledger.c.reference_id)),
                ).where(ledger.c.product == str(product), ledger.c.reason == "reserved")
            ).one()
    finally:
        db.dispose()
        sync.close()
    assert drained.dead == 0
    assert {row.object_id: row.request_id for row in rows} == reservations
    assert len(rows) == UNITS
    assert {row.actor for row in rows} <= {str(1000 + i) for i in range(BUYERS)}
    assert tuple(moved) == (UNITS, -UNITS, UNITS, 0, UNITS)

    # both workers' counts, summed through the multiprocess directory
    async with httpx.AsyncClient(base_url=server) as http:
        text = (await http.get("/metrics")).text
    outcomes = samples(text, "inventory_reservation_requests_total")
    assert outcomes == {
        (("operation", "reserve"), ("outcome", "created")): UNITS,
        (("operation", "reserve"), ("outcome", "insufficient_stock")): BUYERS - UNITS,
    }
    timed = samples(text, "inventory_http_request_duration_seconds_count")
    post = (("method", "POST"), ("route", "/api/reservations/"))
    assert timed[(*post, ("status", "201"))] == UNITS
    assert timed[(*post, ("status", "409"))] == BUYERS - UNITS
    counted_by = {f.stem.rsplit("_", 1)[1] for f in (tmp_path / "prometheus").glob("counter_*")}
    assert len(counted_by) == 2  # both workers took buyers, and the scrape summed them

    print(
        f"\n{BUYERS} buyers connected in {connected_s * 1000:.0f} ms, "
        f"all answered {burst_s * 1000:.0f} ms after the start"
    )
