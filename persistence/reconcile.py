"""Proving Redis and the database agree, and repairing drift (`inventory reconcile`).

The check takes one atomic Redis snapshot per partition (MULTI: counters, live reservations,
expiry index, the outbox after the database checkpoint, candidate orders' status), then reads
the database in one transaction (checkpoint, stock_levels, ledger sums, active reservations,
orders). The snapshot's events after the database checkpoint are what the database has yet to
apply, so the comparison is exact with a backlog: a product x warehouse with pending movements
should stand in the database at the 'before' of its first one, any other at Redis's counters.
Should the drain move the checkpoint past the snapshot between the two reads, the snapshot is
taken again (the last attempt holds the drain locks).

The repairs run under the partition's drain lock, so the checkpoint stands still. Redis is the
system of record for counters and live records. In Redis, through lua/repair_stock.lua and its
events (so the ledger and the audit log get their rows): a counter that disagrees with the live
reservations, a change of the counters no event recorded, the expiry index. Then in the
database, each with an audit row: a projection off its expected value, a reservation or order
the database lacks or holds in another status. The ledger is history: reported, never rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import redis
from redis.lock import Lock
from sqlalchemy import Connection, Engine, func, select

from engine.keys import partition_keys, partition_of
from engine.outbox import OutboxEvent, decode
from engine.scripts import source
from engine.settings import Settings
from engine.states import TERMINAL
from persistence import schema
from persistence.apply import upsert
from persistence.rebuild import (
    audit,
    consistent_read,
    from_ms,
    order_rows,
    reservation_rows,
    sid,
)

ACTOR = "reconcile"
ATTEMPTS = 4
TERMINAL_STATUSES = sorted(s.value for s in TERMINAL)
Pair = tuple[int, int]  # (available, reserved)
PW = tuple[str, str]  # (product, warehouse)


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


@dataclass
class Report:
    partitions: list[PartitionState]
    rows: list[StockRow]
    drift: list[Drift]
    found: list[Drift] | None = None  # after --fix: the drift the first check found
    repairs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No drift, and no event the database lacks (an unresolved dead letter)."""
        return not self.drift and not any(p.dead_letters_unresolved for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


# -- reading both sides ---------------------------------------------------------------------


@dataclass
class _Snapshot:
    now_ms: int
    counters: dict[PW, Pair]
    live: dict[str, Any]  # id -> {"owner", "lines"}
    expiry: dict[str, int]
    events: list[OutboxEvent]
    last_id: str | None  # the outbox's last generated id (None: no stream)
    dead: int
    products: int
    orders: dict[str, str | None]  # order -> its status in Redis (None: no record)


def _snapshot(client: redis.Redis, p: int, after: str, orders: Sequence[str]) -> _Snapshot:
    k = partition_keys(p)
    with client.pipeline(transaction=True) as pipe:
        pipe.time()
        pipe.hgetall(k.stock)
        pipe.hgetall(k.live)
        pipe.zrange(k.expiry, 0, -1, withscores=True)
        pipe.xrange(k.outbox, f"({after}", "+")
        pipe.xinfo_stream(k.outbox)  # fails when there is no stream: allowed below
        pipe.xlen(k.dead_letters)
        pipe.hlen(k.products)
        for o in orders:
            pipe.hget(k.order(o), "status")
        res: list[Any] = pipe.execute(raise_on_error=False)
    for i, r in enumerate(res):
        if isinstance(r, Exception) and i != 5:
            raise r
    (seconds, micros), stock, live, expiry, entries, info, dead, products, *statuses = res
    counters: dict[PW, list[int]] = defaultdict(lambda: [0, 0])
    for name, value in stock.items():
        kind, product, warehouse = name.split("|", 2)
        counters[(product, warehouse)][kind == "r"] = int(value)
    return _Snapshot(
        now_ms=int(seconds) * 1000 + int(micros) // 1000,
        counters={pw: (a, r) for pw, (a, r) in counters.items()},
        live={rid: json.loads(raw) for rid, raw in live.items()},
        expiry={rid: int(score) for rid, score in expiry},
        events=[decode(p, i, f) for i, f in entries],
        last_id=None if isinstance(info, Exception) else info["last-generated-id"],
        dead=int(dead),
        products=int(products),
        orders=dict(zip(orders, statuses, strict=True)),
    )


@dataclass
class _Database:
    checkpoints: dict[int, str]
    projection: dict[PW, Pair]
    ledger: dict[PW, Pair]
    active: dict[str, int]  # active reservation -> partition
    reservations: dict[str, str]  # status of the other reservations asked about
    orders: dict[str, str]  # status of every live order and of those asked about
    dead: dict[int, int]  # unresolved dead letters per partition
    partitions: int


def _dict(conn: Connection, query: Any) -> dict[Any, Any]:
    return {k: v for k, v in conn.execute(query)}  # noqa: C416 (rows are Row objects)


def _counters(conn: Connection, query: Any) -> dict[PW, Pair]:
    return {(p, w): (int(a), int(r)) for p, w, a, r in conn.execute(query)}


def _statuses(conn: Connection, table: Any, ids: set[str]) -> dict[str, str]:
    wanted, found = sorted(ids), {}
    for start in range(0, len(wanted), 500):
        chunk = table.c.id.in_(wanted[start : start + 500])
        found.update(_dict(conn, select(table.c.id, table.c.status).where(chunk)))
    return found


def _read_database(conn: Connection, snaps: dict[int, _Snapshot], partitions: int) -> _Database:
    t = schema
    sl, lg, rs, o, dl = t.stock_levels, t.stock_ledger, t.reservations, t.orders, t.dead_letters
    sums = select(lg.c.product, lg.c.warehouse, func.sum(lg.c.delta_available))
    sums = sums.add_columns(func.sum(lg.c.delta_reserved)).group_by(lg.c.product, lg.c.warehouse)
    active = _dict(conn, select(rs.c.id, rs.c.partition).where(rs.c.status == "active"))
    asked = {r for s in snaps.values() for r in s.live}
    asked |= {
        str(e.data["reservation"])
        for s in snaps.values()
        for e in s.events
        if e.data.get("reservation")
    }
    orders = _dict(conn, select(o.c.id, o.c.status).where(o.c.status.not_in(TERMINAL_STATUSES)))
    orders |= _statuses(conn, o, {i for s in snaps.values() for i in s.orders} - set(orders))
    dead = select(dl.c.partition, func.count()).where(dl.c.resolved_at.is_(None))
    cp = t.outbox_checkpoints
    return _Database(
        checkpoints=_dict(conn, select(cp.c.partition, cp.c.last_event_id)),
        projection=_counters(
            conn, select(sl.c.product, sl.c.warehouse, sl.c.available, sl.c.reserved)
        ),
        ledger=_counters(conn, sums),
        active={r: int(p) for r, p in active.items()},
        reservations=_statuses(conn, rs, asked - set(active)),
        orders=orders,
        dead=_dict(conn, dead.group_by(dl.c.partition)),
        partitions=partitions,
    )


# -- comparing ------------------------------------------------------------------------------


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
    p: int, snap: _Snapshot, db: _Database, todo: _Pending, dead: int, drift: list[Drift]
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


def _records(p: int, snap: _Snapshot, db: _Database, todo: _Pending, drift: list[Drift]) -> None:
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


def _compare(
    p: int, snap: _Snapshot, db: _Database
) -> tuple[PartitionState, list[StockRow], list[Drift]]:
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


# -- the check ------------------------------------------------------------------------------


def _pre_read(db: Engine) -> tuple[dict[int, str], dict[str, int]]:
    cp, o = schema.outbox_checkpoints, schema.orders
    with db.connect() as conn:
        checkpoints = _dict(conn, select(cp.c.partition, cp.c.last_event_id))
        live = _dict(
            conn, select(o.c.id, o.c.partition).where(o.c.status.not_in(TERMINAL_STATUSES))
        )
    return checkpoints, {i: int(p) for i, p in live.items()}


def _redis_orders(client: redis.Redis, p: int) -> set[str]:
    pattern = partition_keys(p).order("*")
    return {str(key).rsplit(":", 1)[1] for key in client.scan_iter(match=pattern, count=1000)}


@contextmanager
def drain_locks(client: redis.Redis, settings: Settings, parts: Sequence[int]) -> Iterator[None]:
    """Hold the drain lock of these partitions: no drain moves their checkpoints meanwhile."""
    lease = settings.drain_lease_ms / 1000
    with ExitStack() as stack:
        for p in parts:
            lock = client.lock(partition_keys(p).drain_lock, timeout=lease, blocking_timeout=lease)
            if not lock.acquire():
                raise RuntimeError(f"partition {p}: a drainer held its lock for {lease:g} s")
            stack.callback(_release, lock)
        yield


def _release(lock: Lock) -> None:
    if lock.owned():
        lock.release()


def check(
    client: redis.Redis,
    db: Engine,
    settings: Settings,
    parts: Sequence[int] | None = None,
    *,
    locked: bool = False,
) -> Report:
    """Compare Redis and the database, partition by partition (every one by default).
    `locked`: the caller holds the partitions' drain locks."""
    parts = list(range(settings.partitions)) if parts is None else list(parts)
    for attempt in range(ATTEMPTS):
        with ExitStack() as stack:
            if attempt == ATTEMPTS - 1 and not locked:
                stack.enter_context(drain_locks(client, settings, parts))
            checkpoints, live_orders = _pre_read(db)
            snaps = {}
            for p in parts:
                orders = {o for o, part in live_orders.items() if part == p}
                orders |= _redis_orders(client, p)
                snaps[p] = _snapshot(client, p, checkpoints.get(p, "0-0"), sorted(orders))
            with consistent_read(db) as conn:
                data = _read_database(conn, snaps, settings.partitions)
        moved = [
            p
            for p in parts
            if (now := data.checkpoints.get(p, "0-0")) != checkpoints.get(p, "0-0")
            and (snaps[p].last_id is None or sid(now) > sid(snaps[p].last_id or "0-0"))
        ]
        if not moved:
            break
    else:
        raise RuntimeError("the database checkpoint kept moving past the Redis snapshot")
    report = Report([], [], [])
    for p in parts:
        state, rows, drift = _compare(p, snaps[p], data)
        report.partitions.append(state)
        report.rows += rows
        report.drift += drift
    return report


# -- the repairs ----------------------------------------------------------------------------


def _repair_redis(client: redis.Redis, p: int, report: Report, run: str) -> list[dict[str, Any]]:
    counters = [
        [r.product, r.warehouse, *r.unrecorded]
        for r in report.rows
        if {"counter", "unrecorded"} & set(r.drift)
    ]
    expiry = ("expiry_without_live", "live_without_expiry")
    ids = sorted({str(d.record) for d in report.drift if d.kind in expiry})
    if not counters and not ids:
        return []
    k = partition_keys(p)
    script = client.register_script(source("repair_stock"))
    keys = [k.stock, k.live, k.expiry, k.outbox, *(k.reservation(i) for i in ids)]
    raw = script(keys=keys, args=[json.dumps(counters), json.dumps(ids), ACTOR, run])
    reply = json.loads(cast(str, raw))
    done = [{"kind": "stock_reconciled", **m} for m in reply["movements"] or []]
    done += [{"kind": "expiry_reconciled", **x} for x in reply["reindexed"] or []]
    return [{"side": "redis", "partition": p, **d} for d in done]


def _fix(conn: Connection, client: redis.Redis, p: int, d: Drift, event_id: str) -> Any:
    """One database-side repair: returns the audited (object type, id), old and new value,
    or None when Redis no longer holds what to repair from."""
    k, rid, now = partition_keys(p), str(d.record), datetime.now(UTC)
    rs, o = schema.reservations, schema.orders
    if d.kind == "projection":
        row = {"product": d.product, "warehouse": d.warehouse, **d.redis}
        row |= {"last_event_id": event_id, "updated_at": now}
        upsert(conn, schema.stock_levels, [row], ["product", "warehouse"])
        w = {"warehouse": d.warehouse}
        return ("product", str(d.product)), d.database and {**w, **d.database}, {**w, **d.redis}
    if d.kind == "reservation_missing_in_database":
        raw = cast(str | None, client.hget(k.live, rid))
        rec = cast(dict[str, str], client.hgetall(k.reservation(rid)))
        rows = reservation_rows(rid, rec, json.loads(raw) if raw else {}, p, now)
        if rows is None:
            return None
        upsert(conn, rs, [rows[0]], ["id"])
        rl = schema.reservation_lines
        conn.execute(rl.delete().where(rl.c.reservation_id == rid))
        conn.execute(rl.insert(), rows[1])
        return ("reservation", rid), d.database and {"status": d.database}, {"status": "active"}
    if d.kind == "reservation_missing_in_redis":
        # ended in Redis: as its record says, else expired (what Redis answers a commit)
        rec = cast(dict[str, str], client.hgetall(k.reservation(rid)))
        status = rec["status"] if rec.get("status", "active") != "active" else "expired"
        ended = from_ms(rec.get("ended_at"), now)
        values = {"status": status, "ended_at": ended, "order_id": rec.get("order_id") or None}
        conn.execute(rs.update().where(rs.c.id == rid).values(values))
        return ("reservation", rid), {"status": "active"}, {"status": status}
    if d.kind == "order_status":
        conn.execute(o.update().where(o.c.id == rid).values(status=d.redis, updated_at=now))
        return ("order", rid), {"status": d.database}, {"status": d.redis}
    rec = cast(dict[str, str], client.hgetall(k.order(rid)))  # order_missing_in_database
    if not rec:
        return None
    row, lines = order_rows(rid, rec, str(d.redis), p, now)
    conn.execute(o.insert(), row)
    conn.execute(schema.order_lines.insert(), lines)
    return ("order", rid), None, {"status": d.redis, "total": row["total"]}


def _repair_database(
    client: redis.Redis, db: Engine, p: int, report: Report, run: str
) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    todo = [d for d in report.drift if d.repair == "database"]
    if not todo:
        return done
    with db.begin() as conn:
        cp = schema.outbox_checkpoints
        at = conn.scalar(select(cp.c.last_event_id).where(cp.c.partition == p)) or "0-0"
        if at != report.partitions[0].checkpoint:
            raise RuntimeError(f"partition {p}: the checkpoint moved under the drain lock")
        for d in todo:
            event_id = f"{ACTOR}-{uuid.uuid4().hex}"
            fixed = _fix(conn, client, p, d, event_id)
            if fixed is not None:
                obj, old, new = fixed
                audit(conn, ACTOR, "reconcile_fix", obj, old, new, run, event_id)
                done.append(
                    {
                        "side": "database",
                        "partition": p,
                        "kind": d.kind,
                        "object": obj[1],
                        "old": old,
                        "new": new,
                    }
                )
    return done


def reconcile(client: redis.Redis, db: Engine, settings: Settings, *, fix: bool = False) -> Report:
    """Check; with `fix`, repair each partition from the side that is right (Redis first, so
    that the database repairs count its repair events as pending), then check again."""
    if not fix:
        return check(client, db, settings)
    run = f"{ACTOR}-{uuid.uuid4().hex[:16]}"
    found: list[Drift] = []
    repairs: list[dict[str, Any]] = []
    for p in range(settings.partitions):
        with drain_locks(client, settings, [p]):
            report = check(client, db, settings, [p], locked=True)
            found += report.drift
            done = _repair_redis(client, p, report, run)
            if done:
                report = check(client, db, settings, [p], locked=True)
            repairs += done + _repair_database(client, db, p, report, run)
    after = check(client, db, settings)
    after.found, after.repairs = found, repairs
    return after
