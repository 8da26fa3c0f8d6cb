"""Reading both sides for `inventory reconcile`, each consistently: one atomic Redis snapshot
per partition (MULTI: counters, live reservations, expiry index, the outbox after the
database checkpoint, candidate orders' status), and the database in one transaction
(checkpoint, stock_levels, ledger sums, active reservations, orders).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import Connection, Engine, func, select

from engine.keys import partition_keys
from engine.outbox import OutboxEvent, decode
from engine.states import TERMINAL
from persistence import schema

Pair = tuple[int, int]  # (available, reserved)
PW = tuple[str, str]  # (product, warehouse)
# An order not yet terminal: one Redis still holds the record of.
LIVE_ORDER = schema.orders.c.status.not_in(sorted(s.value for s in TERMINAL))


@contextmanager
def consistent_read(db: Engine) -> Iterator[Connection]:
    """A read-only transaction whose queries all see one snapshot of the database."""
    with db.connect() as conn:
        if conn.dialect.name == "sqlite":
            # pysqlite opens no transaction for a SELECT: open one by hand (WAL: a snapshot)
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN")
            try:
                yield conn
            finally:
                conn.exec_driver_sql("ROLLBACK")
        else:
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield conn


def checkpoints(conn: Connection) -> dict[int, str]:
    """Each partition's database checkpoint: the last outbox event id applied."""
    cp = schema.outbox_checkpoints
    return {int(p): str(i) for p, i in conn.execute(select(cp.c.partition, cp.c.last_event_id))}


# -- Redis ----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    now_ms: int
    counters: dict[PW, Pair]
    live: dict[str, Any]  # id -> {"owner", "lines"}
    expiry: dict[str, int]
    events: list[OutboxEvent]
    last_id: str | None  # the outbox's last generated id (None: no stream)
    dead: int
    products: int
    orders: dict[str, str | None]  # order -> its status in Redis (None: no record)


def redis_snapshot(client: redis.Redis, p: int, after: str, orders: Sequence[str]) -> Snapshot:
    """Partition `p` in one MULTI, with the outbox after `after` and these orders' status."""
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
    return Snapshot(
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


def redis_orders(client: redis.Redis, p: int) -> set[str]:
    """The orders partition `p` holds a record of."""
    pattern = partition_keys(p).order("*")
    return {str(key).rsplit(":", 1)[1] for key in client.scan_iter(match=pattern, count=1000)}


# -- the database ---------------------------------------------------------------------------


@dataclass
class Database:
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


def pre_read(db: Engine) -> tuple[dict[int, str], dict[str, int]]:
    """What to take the Redis snapshots after: the checkpoints, and each live order's
    partition."""
    o = schema.orders
    with db.connect() as conn:
        at = checkpoints(conn)
        live = _dict(conn, select(o.c.id, o.c.partition).where(LIVE_ORDER))
    return at, {i: int(p) for i, p in live.items()}


def read_database(conn: Connection, snaps: dict[int, Snapshot], partitions: int) -> Database:
    """The database side, with the status of every record the snapshots mention."""
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
    orders = _dict(conn, select(o.c.id, o.c.status).where(LIVE_ORDER))
    orders |= _statuses(conn, o, {i for s in snaps.values() for i in s.orders} - set(orders))
    dead = select(dl.c.partition, func.count()).where(dl.c.resolved_at.is_(None))
    return Database(
        checkpoints=checkpoints(conn),
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
