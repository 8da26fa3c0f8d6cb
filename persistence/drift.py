"""Comparing the two sides' readings of a partition (see persistence.snapshot): what each
product x warehouse and each live record should be, the drift, and which side is right.

The snapshot's events after the database checkpoint are what the database has yet to apply,
so the comparison is exact with a backlog: a product x warehouse with pending movements
should stand in the database at the 'before' of its first one, any other at Redis's counters.
Redis is the system of record for counters and live records; the ledger is history.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from engine.keys import partition_of
from engine.outbox import OutboxEvent
from engine.states import TERMINAL
from persistence.records import sid
from persistence.snapshot import PW, Database, Pair, Snapshot


@dataclass
class StockRow:
    partition: int
    product: str
    warehouse: str
    redis: Pair  # the counters
    live_reserved: int  # the sum of the live reservations' lines
    database: Pair | None  # the projection (None: no row)
    expected: Pair  # what the projection should hold at the database checkpoint
    ledger: Pair  # the ledger's sums
    pending: int  # movements the database has yet to apply
    # How far the counters stand from the recorded history (ledger + pending events); only
    # measured while projection and ledger agree and no dead letter is unresolved.
    unrecorded: Pair
    drift: list[str] = field(default_factory=list)


@dataclass
class Drift:
    kind: str
    partition: int
    redis: Any
    database: Any
    right: str  # the side that is right: 'redis' or 'unknown'
    repair: str  # what --fix changes: 'redis', 'database' or 'none'
    product: str | None = None
    warehouse: str | None = None
    record: str | None = None  # reservation or order id


@dataclass
class PartitionState:
    partition: int
    checkpoint: str
    backlog: int  # outbox events the database has yet to apply
    oldest_pending_age_ms: int | None
    live_reservations: int
    dead_letters_redis: int  # entries in the dead-letter stream
    dead_letters_unresolved: int  # rows of dead_letters not resolved


def _pair(x: Pair) -> dict[str, int]:
    return {"available": x[0], "reserved": x[1]}


@dataclass
class _Pending:
    """What the snapshot's events after the database checkpoint say the database lacks."""

    first: dict[PW, Pair] = field(default_factory=dict)  # 'before' of the first movement
    delta: dict[PW, Pair] = field(default_factory=dict)  # sum of the movements
    count: dict[PW, int] = field(default_factory=lambda: defaultdict(int))
    reservations: dict[str, str] = field(default_factory=dict)  # id -> 'active' | 'absent' before
    orders: dict[str, str | None] = field(default_factory=dict)  # id -> status before

    def add(self, e: OutboxEvent) -> None:
        for m in e.movements:
            pw = (m.product, m.warehouse)
            self.first.setdefault(pw, (m.available_before, m.reserved_before))
            a, r = self.delta.get(pw, (0, 0))
            self.delta[pw] = (a + m.available_after - m.available_before, r + m.reserved_delta)
            self.count[pw] += 1
        rid = e.data.get("reservation")
        if rid and e.type != "expiry_reconciled":
            prior = "absent" if e.type == "reservation_created" else "active"
            self.reservations.setdefault(str(rid), prior)
        if e.type in ("order_created", "order_status_changed"):
            self.orders.setdefault(str(e.data["order"]), e.data.get("from"))


def _classify(r: StockRow, in_redis: bool) -> Iterator[tuple[str, Any, Any, str, str]]:
    """One product x warehouse's drift: kind, Redis value, database value, the side that is
    right, the side --fix changes."""
    c, dv = r.redis, r.database or (0, 0)
    if not in_redis and (dv, r.ledger) != ((0, 0), (0, 0)):
        # counters the scripts never delete are gone: a loss, not a change (see rebuild)
        yield "stock_missing_in_redis", None, _pair(dv), "unknown", "none"
        return
    if c[1] != r.live_reserved or min(c) < 0:
        yield "counter", {**_pair(c), "live_reserved": r.live_reserved}, None, "redis", "redis"
    if r.unrecorded != (0, 0):
        recorded = (c[0] - r.unrecorded[0], c[1] - r.unrecorded[1])
        yield "unrecorded", _pair(c), _pair(recorded), "redis", "redis"
        return  # recording it brings projection and ledger along
    if dv != r.expected:
        yield "projection", _pair(r.expected), r.database and _pair(r.database), "redis", "database"
    if r.ledger != r.expected:
        yield "ledger", _pair(r.expected), _pair(r.ledger), "redis", "none"


def _stock(
    p: int, snap: Snapshot, db: Database, todo: _Pending, dead: int, drift: list[Drift]
) -> list[StockRow]:
    held: dict[PW, int] = defaultdict(int)
    for entry in snap.live.values():
        for product, warehouse, quantity in entry["lines"]:
            held[(product, warehouse)] += int(quantity)
    ours = {pw for pw in {*db.projection, *db.ledger} if partition_of(pw[0], db.partitions) == p}
    rows: list[StockRow] = []
    for pw in sorted({*snap.counters, *held, *ours, *todo.first}):
        c, d, s = snap.counters.get(pw, (0, 0)), db.projection.get(pw), db.ledger.get(pw, (0, 0))
        dv, delta, expected = d or (0, 0), todo.delta.get(pw, (0, 0)), todo.first.get(pw, c)
        u = (c[0] - s[0] - delta[0], c[1] - s[1] - delta[1]) if dv == s and not dead else (0, 0)
        row = StockRow(p, *pw, c, held[pw], d, expected, s, todo.count[pw], u)
        rows.append(row)
        for kind, redis_value, db_value, right, repair in _classify(row, pw in snap.counters):
            row.drift.append(kind)
            drift.append(Drift(kind, p, redis_value, db_value, right, repair, *pw))
    return rows


def _records(p: int, snap: Snapshot, db: Database, todo: _Pending, drift: list[Drift]) -> None:
    def report(kind: str, redis_value: Any, db_value: Any, repair: str, record: str) -> None:
        # Redis is the system of record; only an order gone from it leaves the question open
        right = "unknown" if kind == "order_missing_in_redis" else "redis"
        drift.append(Drift(kind, p, redis_value, db_value, right, repair, record=record))

    live = set(snap.live)
    want_active = {r for r in live if r not in todo.reservations}
    want_active |= {r for r, prior in todo.reservations.items() if prior == "active"}
    active = {r for r, part in db.active.items() if part == p}
    for r in sorted(want_active - active):
        report("reservation_missing_in_database", "active", db.reservations.get(r), "database", r)
    for r in sorted(active - want_active - set(todo.reservations)):
        report("reservation_missing_in_redis", None, "active", "database", r)
    for r in sorted(set(snap.expiry) - live):
        report("expiry_without_live", snap.expiry[r], None, "redis", r)
    for r in sorted(live - set(snap.expiry)):
        report("live_without_expiry", None, None, "redis", r)
    for o, status in sorted(snap.orders.items()):
        in_db = db.orders.get(o)
        want = todo.orders.get(o, status)
        if o not in todo.orders and status is None:
            if in_db is not None and in_db not in TERMINAL:
                report("order_missing_in_redis", None, in_db, "none", o)
        elif want is not None and in_db != want:
            kind = "order_status" if in_db else "order_missing_in_database"
            report(kind, want, in_db, "database", o)


def compare(
    p: int, snap: Snapshot, db: Database
) -> tuple[PartitionState, list[StockRow], list[Drift]]:
    """Partition `p`'s state, its product x warehouse rows and its drift."""
    checkpoint = db.checkpoints.get(p, "0-0")
    pending = [e for e in snap.events if sid(e.id) > sid(checkpoint)]
    todo = _Pending()
    for e in pending:
        with suppress(KeyError, TypeError, ValueError):  # malformed: the drain dead-letters it
            todo.add(e)
    dead = db.dead.get(p, 0)
    ages = [snap.now_ms - e.ts_ms for e in pending[:1] if "ts" in e.data]
    state = PartitionState(
        p, checkpoint, len(pending), ages[0] if ages else None, len(snap.live), snap.dead, dead
    )
    drift: list[Drift] = []
    rows = _stock(p, snap, db, todo, dead, drift)
    active = sum(1 for part in db.active.values() if part == p)
    if not (snap.counters or snap.products or snap.live or snap.last_id) and (rows or active):
        # Redis lost the partition: nothing to repair from, everything to restore
        known = {"stock_levels": len(rows), "active_reservations": active}
        lost = Drift("redis_lost_data", p, None, known, "database", "none")
        return state, [dataclasses.replace(r, drift=[]) for r in rows], [lost]
    _records(p, snap, db, todo, drift)
    return state, rows, drift
