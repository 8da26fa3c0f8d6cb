"""Writing a batch of outbox events into the database, exactly once.

A batch is applied inside the caller's transaction: events already applied (their id is in
the audit log) are skipped, the rest are translated to rows and written in bulk, table by
table, in an order that gives the same end state as applying them one by one. If the bulk
write fails, the batch is applied again event by event, each in a savepoint, and an event
that fails alone is returned as dead — it does not block the events behind it. Only a failure
the event would meet again is its own (persistence.failures); a transient one (a lock or
statement timeout, a deadlock, a lost connection) is raised, so that the caller's transaction
rolls back whole and the batch is tried again later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import psycopg
from sqlalchemy import JSON, Connection, Table, bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError

from engine.outbox import OutboxEvent
from engine.validation import compact_json
from persistence import schema
from persistence.db import insert
from persistence.failures import is_transient
from persistence.translate import BadEvent, Rows, translate, translate_into

# COPY goes through psycopg directly, so its errors arrive unwrapped.
DATABASE_ERRORS = (SQLAlchemyError, psycopg.Error)


@dataclass
class BatchResult:
    applied: int = 0
    skipped: int = 0  # already in the database: a replay
    dead: list[tuple[OutboxEvent, str]] = field(default_factory=list)


def upsert(conn: Connection, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    """Insert or overwrite rows by primary key; the last row for a key wins. On PostgreSQL, a
    table without JSON columns takes them in one statement (`_recordset_upsert`): the drain
    upserts an idempotency record per keyed event, and a statement each (executemany) cost
    both processes a bind and an execute per row."""
    if not rows:
        return
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        latest[tuple(row[k] for k in keys)] = row
    if conn.dialect.name == "postgresql" and not any(
        isinstance(c.type, JSON) for c in table.columns
    ):
        _recordset_upsert(conn, table, list(latest.values()), keys)
        return
    stmt = insert(conn, table)
    changing = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    conn.execute(
        stmt.on_conflict_do_update(index_elements=list(keys), set_=changing), list(latest.values())
    )


def _recordset_upsert(
    conn: Connection, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]
) -> None:
    """INSERT … SELECT FROM json_populate_recordset(the rows as one JSON array) ON CONFLICT DO
    UPDATE, for rows with distinct keys (a statement may not change one row twice). The
    table's own row type gives each value its type; orjson writes the rows' datetimes as
    RFC 3339, to the microsecond."""
    names = ", ".join(f'"{c}"' for c in rows[0])
    changing = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in rows[0] if c not in keys)
    conflict = ", ".join(f'"{k}"' for k in keys)
    sql = (
        f'INSERT INTO "{table.name}" ({names}) SELECT {names} '
        f'FROM json_populate_recordset(NULL::"{table.name}", %s::json) '
        f"ON CONFLICT ({conflict}) " + (f"DO UPDATE SET {changing}" if changing else "DO NOTHING")
    )
    conn.exec_driver_sql(sql, (orjson.dumps(rows).decode(),))  # (its errors: SQLAlchemy's)


def add_stock(conn: Connection, changes: list[dict[str, Any]]) -> None:
    """Add the movements' changes to `stock_levels`, a row per product x warehouse (made at its
    first movement). The projection is so the ledger's sums, whatever Redis's counters held
    around the movements: a counter changed in Redis with no event (a hand edit, a bug) is
    never copied into the durable record, where `reconcile` would then take it for recorded;
    it stays the counters' unrecorded offset, which `reconcile --fix` rolls back."""
    if not changes:
        return
    summed: dict[tuple[str, str], dict[str, Any]] = {}
    for c in changes:
        row = summed.get((c["product"], c["warehouse"]))
        if row is None:
            summed[(c["product"], c["warehouse"])] = dict(c)
        else:
            row["available"] += c["available"]
            row["reserved"] += c["reserved"]
            row["last_event_id"], row["updated_at"] = c["last_event_id"], c["updated_at"]
    sl = schema.stock_levels
    stmt = insert(conn, sl)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["product", "warehouse"],
            set_={
                "available": sl.c.available + stmt.excluded.available,
                "reserved": sl.c.reserved + stmt.excluded.reserved,
                "last_event_id": stmt.excluded.last_event_id,
                "updated_at": stmt.excluded.updated_at,
            },
        ),
        list(summed.values()),
    )


def bulk_insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Append rows. On Postgres through COPY: the drain writes thousands of ledger and audit
    rows per transaction, and COPY takes them in one stream instead of a statement each — in
    binary, each value as its column's type takes it: an integer's or a time's binary form
    costs less to make than its text (~10% of the drain's CPU per event)."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(table.insert(), rows)
        return
    columns = list(rows[0])
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    raw = cast(psycopg.Connection[Any], conn.connection.dbapi_connection)
    names = ", ".join(f'"{c}"' for c in columns)
    types = [_copy_type(conn, table, c) for c in columns]
    binary = "jsonb" not in types  # (jsonb's binary form is not its text: text COPY then)
    sql = f'COPY "{table.name}" ({names}) FROM STDIN' + (" (FORMAT BINARY)" if binary else "")
    with raw.cursor() as cursor, cursor.copy(sql) as copy:
        if binary:
            copy.set_types(types)
        for row in rows:
            copy.write_row(
                [
                    compact_json(row[c]) if c in json_columns and row[c] is not None else row[c]
                    for c in columns
                ]
            )


def _copy_type(conn: Connection, table: Table, column: str) -> str:
    """The PostgreSQL type psycopg writes a column's values as in a binary COPY: the column's
    own (VARCHAR(64) as varchar), a JSON column's as text — json's binary form is its text."""
    name = table.c[column].type.compile(dialect=conn.dialect).split("(")[0].strip().lower()
    return "text" if name == "json" else name


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


def _fold_into_new(
    new: list[dict[str, Any]], updates: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Apply, in stream order, the updates of records this same batch inserts to the rows about
    to be inserted (a reservation made and released within one drain is inserted released,
    not inserted then updated); the updates of older records are returned."""
    if not updates or not new:
        return updates
    fresh = {row["id"]: row for row in new}
    rest = []
    for u in updates:
        row = fresh.get(u["id"])
        if row is not None and u.keys() <= row.keys():
            row.update(u)
        else:
            rest.append(u)
    return rest


def write_rows(conn: Connection, rows: Rows) -> None:
    reservation_updates = _fold_into_new(rows.reservations_new, rows.reservation_updates)
    order_updates = _fold_into_new(rows.orders_new, rows.order_updates)
    bulk_insert(conn, schema.reservations, rows.reservations_new)
    bulk_insert(conn, schema.reservation_lines, rows.reservation_lines)
    bulk_insert(conn, schema.orders, rows.orders_new)
    bulk_insert(conn, schema.order_lines, rows.order_lines)
    if reservation_updates:
        _update_by_id(conn, schema.reservations, reservation_updates)
    if order_updates:
        _update_by_id(conn, schema.orders, order_updates)
    upsert(conn, schema.product_settings, rows.product_settings, ["product"])
    add_stock(conn, rows.stock)
    bulk_insert(conn, schema.order_status_history, rows.history)
    bulk_insert(conn, schema.stock_ledger, rows.ledger)
    bulk_insert(conn, schema.audit_log, rows.audit)
    upsert(conn, schema.idempotency_records, rows.idempotency, ["partition", "key_hash"])


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
    """Apply events (in stream order) inside the caller's transaction.

    The checkpoint is the first guard against applying an event twice; the unique event id
    of the audit log and the ledger is the second. The fast path writes the whole batch in
    bulk; if that fails (a replayed event, or one the database refuses), the slow path skips
    what is already there and applies the rest one event at a time.
    """
    result = BatchResult()
    good: list[OutboxEvent] = []
    batch = Rows()
    for event in events:
        try:
            translate_into(event, batch)
            good.append(event)
        except BadEvent as exc:
            result.dead.append((event, str(exc)))
    try:
        with conn.begin_nested():
            write_rows(conn, batch)
        result.applied = len(good)
        return result
    except DATABASE_ERRORS as exc:
        if is_transient(exc):
            raise  # the slow path would meet it too, and dead-letter what it touched
    done = already_applied(conn, events)
    result.dead = [(e, error) for e, error in result.dead if e.event_id not in done]
    for event in good:  # (translated again, alone: a pure function of the event)
        if event.event_id in done:
            result.skipped += 1
            continue
        try:
            with conn.begin_nested():
                write_rows(conn, translate(event))
            result.applied += 1
        except DATABASE_ERRORS as exc:
            if is_transient(exc):
                raise
            result.dead.append((event, f"{type(exc).__name__}: {exc}"[:2000]))
    return result
