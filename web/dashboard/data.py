"""The numbers of the operations page (`GET /api/ops/dashboard/`), read from where they live.

The page polls every two seconds, so every read is bounded:
- Redis (three round trips): the metrics snapshot (outbox backlog and age, live and due
  reservations, the last drain, the sweep's count: web.metrics), then each partition's stock
  hash and dead-letter stream length, and the last reconcile result, which is fetched and
  parsed again only when the reconcile_check job has written a new one.
- The database (one connection, in a thread): two counts over the index on reservations
  (status, expires_at), the newest unresolved dead letters, the drain checkpoints, and the
  names of at most a few hundred candidate products.
- RQ (web.dashboard.queues, in a thread): workers, queue and registry sizes, the periodic
  jobs' next runs, the newest failures.

Redis down is the app's usual 503. The database or RQ down leaves their panels null and says
why in `problems`: the outbox backlog is worth seeing most when the database is down.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.exceptions
from sqlalchemy import Connection, func, select
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette

from engine import keys
from engine.reads import EngineReads
from persistence import schema
from web.dashboard.queues import queues_panel
from web.metrics import snapshot
from web.responses import iso
from web.schemas.dashboard import (
    DashboardOut,
    DeadLetterOut,
    DeadLettersOut,
    LastDrain,
    LowStockOut,
    PartitionOut,
    Problems,
    QueuesOut,
    ReconcileOut,
    RedisBehind,
    ReservationsOut,
    TrendPoint,
    TrendsOut,
)

log = logging.getLogger("inventory.dashboard")

LOW_STOCK = 10
CANDIDATES = 200  # the fewest-available products whose catalog rows are looked up
LATEST = 10
WINDOW = timedelta(seconds=60)
RECONCILE_TTL_MS = keys.LAST_RECONCILE_TTL_S * 1000  # what jobs.reconcile_check gives the key


@dataclass
class ReconcileCache:
    """The last reconcile result, parsed once: it lists every product x warehouse."""

    written_at_ms: int = -1
    length: int = -1
    value: ReconcileOut | None = None


@dataclass
class DatabaseReadings:
    expired: int | None = None
    committed: int | None = None
    dead_letters: DeadLettersOut | None = None
    applied: dict[int, int] = field(default_factory=dict)
    low_stock: list[LowStockOut] = field(default_factory=list)
    handed_off: dict[int, int] = field(default_factory=dict)  # product -> in the last minute
    problem: str | None = None


def _problem(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def fewest_available(
    partitions: list[dict[tuple[str, str], tuple[int, int]]],
) -> list[tuple[int, int, int]]:
    """(catalog product id, available, reserved) of the products with the fewest available
    units over their warehouses, sold out first; ids that are not the catalog's are left out.
    `partitions`: each partition's counters, (product, warehouse) -> (available, reserved)."""
    totals: dict[int, list[int]] = {}
    for counters in partitions:
        for (product, _warehouse), (available, reserved) in counters.items():
            if not product.isdigit() or product[0] == "0":
                continue  # a product the engine knows outside the catalog
            pair = totals.setdefault(int(product), [0, 0])
            pair[0] += available
            pair[1] += reserved
    found = heapq.nsmallest(CANDIDATES, totals.items(), key=lambda t: (t[1][0], -t[1][1], t[0]))
    return [(product, a, r) for product, (a, r) in found]


def _reconcile(report: dict[str, Any], written_at_ms: int | None) -> ReconcileOut:
    kinds: dict[str, int] = {}
    for drift in report.get("drift", []):
        kinds[str(drift.get("kind"))] = kinds.get(str(drift.get("kind")), 0) + 1
    return ReconcileOut(
        ok=bool(report.get("ok")),
        checked_at=None
        if written_at_ms is None
        else iso(datetime.fromtimestamp(written_at_ms / 1000, UTC)),
        drift=len(report.get("drift", [])),
        kinds=kinds,
        stock_rows=len(report.get("rows", [])),
        backlog=sum(int(p.get("backlog", 0)) for p in report.get("partitions", [])),
    )


def _behind(found: dict[str, Any] | None) -> RedisBehind | None:
    """The flag the drain leaves on a partition whose Redis is behind (persistence/behind.py)."""
    if not found:
        return None
    return RedisBehind(
        since=iso(datetime.fromtimestamp(found["at_ms"] / 1000, UTC)),
        checkpoint=found["checkpoint"],
        last_id=found["last_id"],
        applied=found["applied"],
    )


async def _last_reconcile(
    engine: EngineReads, cache: ReconcileCache, now_ms: int
) -> ReconcileOut | None:
    pttl, length = await engine.last_reconcile_written()
    if pttl == -2:
        return None
    # The job sets the key with a day's TTL: what is left of it tells when it was written.
    written = now_ms - (RECONCILE_TTL_MS - pttl) if pttl >= 0 else None
    same = written is not None and abs(written - cache.written_at_ms) < 1000
    if same and length == cache.length:
        return cache.value
    raw = await engine.last_reconcile()
    if raw is None:
        return None
    report = await asyncio.to_thread(json.loads, raw)  # megabytes with a large catalog
    cache.written_at_ms, cache.length = written or -1, length
    cache.value = _reconcile(report, written)
    return cache.value


def _dead_letters(conn: Connection) -> DeadLettersOut:
    dl = schema.dead_letters
    unresolved = dl.c.resolved_at.is_(None)
    count = conn.scalar(select(func.count()).select_from(dl).where(unresolved)) or 0
    latest = conn.execute(select(dl).where(unresolved).order_by(dl.c.id.desc()).limit(LATEST))
    return DeadLettersOut(
        unresolved=int(count),
        latest=[
            DeadLetterOut(
                event_id=r.event_id,
                partition=r.partition,
                type=r.type,
                error=r.error[:2000],
                at=iso(r.at),
            )
            for r in latest
        ],
    )


def _low_stock(conn: Connection, candidates: list[tuple[int, int, int]]) -> list[LowStockOut]:
    """The candidates that are catalog products (not deleted), in order, at most LOW_STOCK."""
    pr = schema.products
    ids = [product for product, _, _ in candidates]
    query = select(pr.c.id, pr.c.name, pr.c.sku).where(pr.c.id.in_(ids), pr.c.deleted_at.is_(None))
    catalog = {int(r.id): r for r in conn.execute(query)}
    found = [
        LowStockOut(
            product=product,
            name=catalog[product].name,
            sku=catalog[product].sku,
            available=available,
            reserved=reserved,
            total=available + reserved,
            waiting=0,
            handed_off_last_minute=None,
            limits_refused_last_minute=0,
        )
        for product, available, reserved in candidates
        if product in catalog
    ]
    return found[:LOW_STOCK]


def _handed_off(conn: Connection, products: list[int], since: datetime) -> dict[int, int]:
    """Reservations the products' waitlists handed over since `since` (lua/wait.lua)."""
    if not products:
        return {}
    rs, lines = schema.reservations, schema.reservation_lines
    query = (
        select(lines.c.product, func.count(func.distinct(rs.c.id)))
        .join(rs, rs.c.id == lines.c.reservation_id)
        .where(
            rs.c.source == "waitlist",
            rs.c.created_at >= since,
            lines.c.product.in_([str(p) for p in products]),
        )
        .group_by(lines.c.product)
    )
    return {int(product): int(n) for product, n in conn.execute(query)}


def read_database(
    db: DatabaseEngine, now: datetime, candidates: list[tuple[int, int, int]]
) -> DatabaseReadings:
    """The database's panels (blocking: a thread); a database that fails leaves them empty."""
    rs, cp = schema.reservations, schema.outbox_checkpoints
    since = now - WINDOW
    try:
        with db.connect() as conn:
            recent = select(func.count()).select_from(rs).where(rs.c.expires_at >= since)
            expired = conn.scalar(recent.where(rs.c.status == "expired")) or 0
            # committed while live, so expires_at >= ended_at >= since: the index bounds it
            committed = conn.scalar(
                recent.where(rs.c.status == "committed", rs.c.ended_at >= since)
            )
            low_stock = _low_stock(conn, candidates)
            return DatabaseReadings(
                expired=int(expired),
                committed=int(committed or 0),
                dead_letters=_dead_letters(conn),
                applied={int(r.partition): int(r.applied) for r in conn.execute(select(cp))},
                low_stock=low_stock,
                handed_off=_handed_off(conn, [s.product for s in low_stock], since),
            )
    except SQLAlchemyError as exc:
        log.warning("dashboard: database unavailable: %s", exc)
        return DatabaseReadings(problem=_problem(exc))


def _cache(app: Starlette) -> ReconcileCache:
    found: ReconcileCache | None = getattr(app.state, "dashboard_reconcile", None)
    if found is None:
        found = app.state.dashboard_reconcile = ReconcileCache()
    return found


async def dashboard(
    app: Starlette, engine: EngineReads, db: DatabaseEngine, queue_url: str, partitions: int
) -> DashboardOut:
    now_ms, overview = await engine.overview()
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    dead = [o.dead_letter_stream for o in overview]
    behind = [o.behind for o in overview]
    state = await snapshot(engine)
    if not state.redis_up:  # Redis went away between the two reads: the app's usual 503
        raise redis.exceptions.ConnectionError("redis stopped answering")
    reconcile = await _last_reconcile(engine, _cache(app), now_ms)
    readings, queues = await asyncio.gather(
        asyncio.to_thread(read_database, db, now, fewest_available([o.counters for o in overview])),
        queues_panel(queue_url, now),
    )
    listed = [str(s.product) for s in readings.low_stock]
    (waiting, refused), trend = await asyncio.gather(
        engine.product_activity(listed, now_ms), engine.trends(now_ms)
    )
    low_stock = [
        s.model_copy(
            update={
                "waiting": waiting.get(str(s.product), 0),
                "limits_refused_last_minute": refused.get(str(s.product), 0),
                "handed_off_last_minute": None
                if readings.problem
                else readings.handed_off.get(s.product, 0),
            }
        )
        for s in readings.low_stock
    ]
    step = keys.SERIES_BUCKET_S
    trends = TrendsOut(
        bucket_seconds=step,
        points=[
            TrendPoint(
                at=iso(datetime.fromtimestamp(start, UTC)),
                events_per_second=round(events / step, 1),
                drain_lag_p99_ms=lag,
            )
            for start, events, lag in trend
        ],
    )
    parts = [
        PartitionOut(
            partition=p.partition,
            backlog=p.backlog,
            oldest_event_age_ms=round(p.oldest_event_age_s * 1000),
            dead_letter_stream=dead[p.partition],
            live_reservations=p.live,
            due_reservations=p.due,
            events_applied=None if readings.problem else readings.applied.get(p.partition, 0),
            last_drain=None
            if p.last_drain is None
            else LastDrain(
                at=iso(datetime.fromtimestamp(p.last_drain["at_ms"] / 1000, UTC)),
                applied=p.last_drain["applied"],
                lag_p50_ms=p.last_drain["lag_p50_ms"],
                lag_p99_ms=p.last_drain["lag_p99_ms"],
                lag_max_ms=p.last_drain["lag_max_ms"],
            ),
            redis_behind=_behind(behind[p.partition]),
        )
        for p in state.partitions
    ]
    return DashboardOut(
        at=iso(now),
        partitions=parts,
        reservations=ReservationsOut(
            live=sum(p.live for p in state.partitions),
            due=sum(p.due for p in state.partitions),
            expired_last_minute=readings.expired,
            committed_last_minute=readings.committed,
            expired_by_sweep_total=state.expired_by_sweep,
        ),
        dead_letters=readings.dead_letters,
        queues=queues if isinstance(queues, QueuesOut) else None,
        low_stock=low_stock,
        trends=trends,
        reconcile=reconcile,
        problems=Problems(
            database=readings.problem, queues=queues if isinstance(queues, str) else None
        ),
    )
