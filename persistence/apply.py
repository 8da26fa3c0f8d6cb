"""Writing a batch of outbox events into the database, exactly once.

A batch is applied inside the caller's transaction: events already applied (their id is in
the audit log) are skipped, the rest are translated to rows and written in bulk, table by
table, in an order that gives the same end state as applying them one by one. If the bulk
write fails, the batch is applied again event by event, each in a savepoint, and an event
that fails alone is returned as dead — it does not block the events behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from engine.outbox import OutboxEvent
from persistence import schema
from persistence.translate import BadEvent, Rows, translate


@dataclass
class BatchResult:
    applied: int = 0
    skipped: int = 0  # already in the database: a replay
    dead: list[tuple[OutboxEvent, str]] = field(default_factory=list)


def upsert(conn: Connection, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    """Insert or overwrite rows by primary key; the last row for a key wins."""
    if not rows:
        return
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        latest[tuple(row[k] for k in keys)] = row
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table)
    changing = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    conn.execute(
        stmt.on_conflict_do_update(index_elements=list(keys), set_=changing), list(latest.values())
    )


def _collapse(updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge updates of the same record in stream order: later fields win."""
    merged: dict[str, dict[str, Any]] = {}
    for u in updates:
        merged.setdefault(u["id"], {}).update(u)
    return list(merged.values())


def _update_by_id(conn: Connection, table: Table, updates: list[dict[str, Any]]) -> None:
    # executemany needs one statement shape; group the updates by the fields they set
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for u in _collapse(updates):
        fields = tuple(sorted(k for k in u if k != "id"))
        shapes.setdefault(fields, []).append({"_id": u["id"], **{k: u[k] for k in fields}})
    for fields, params in shapes.items():
        stmt = (
            update(table)
            .where(table.c.id == bindparam("_id"))
            .values({f: bindparam(f) for f in fields})
        )
        conn.execute(stmt, params)


def write_rows(conn: Connection, rows: Rows) -> None:
    if rows.reservations_new:
        conn.execute(schema.reservations.insert(), rows.reservations_new)
        conn.execute(schema.reservation_lines.insert(), rows.reservation_lines)
    if rows.orders_new:
        conn.execute(schema.orders.insert(), rows.orders_new)
        conn.execute(schema.order_lines.insert(), rows.order_lines)
    if rows.reservation_updates:
        _update_by_id(conn, schema.reservations, rows.reservation_updates)
    if rows.order_updates:
        _update_by_id(conn, schema.orders, rows.order_updates)
    upsert(conn, schema.product_settings, rows.product_settings, ["product"])
    upsert(conn, schema.stock_levels, rows.stock, ["product", "warehouse"])
    if rows.history:
        conn.execute(schema.order_status_history.insert(), rows.history)
    if rows.ledger:
        conn.execute(schema.stock_ledger.insert(), rows.ledger)
    if rows.audit:
        conn.execute(schema.audit_log.insert(), rows.audit)


def already_applied(conn: Connection, events: Sequence[OutboxEvent]) -> set[str]:
    """Ids of these events that the database already holds, applied or dead-lettered."""
    ids = [e.event_id for e in events]
    found: set[str] = set()
    for table in (schema.audit_log, schema.dead_letters):
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            found.update(conn.scalars(select(table.c.event_id).where(table.c.event_id.in_(chunk))))
    return found


def apply_batch(conn: Connection, events: Sequence[OutboxEvent]) -> BatchResult:
    """Apply events (in stream order) inside the caller's transaction."""
    result = BatchResult()
    done = already_applied(conn, events)
    fresh = [e for e in events if e.event_id not in done]
    result.skipped = len(events) - len(fresh)
    good: list[tuple[OutboxEvent, Rows]] = []
    for event in fresh:
        try:
            good.append((event, translate(event)))
        except BadEvent as exc:
            result.dead.append((event, str(exc)))
    batch = Rows()
    for _, rows in good:
        batch.extend(rows)
    try:
        with conn.begin_nested():
            write_rows(conn, batch)
        result.applied = len(good)
        return result
    except SQLAlchemyError:
        pass
    # Slow path: one savepoint per event, so one bad event can't stop the rest.
    for event, rows in good:
        try:
            with conn.begin_nested():
                write_rows(conn, rows)
            result.applied += 1
        except SQLAlchemyError as exc:
            result.dead.append((event, f"{type(exc).__name__}: {exc}"[:2000]))
    return result
