"""The benchmark's baseline: a reservation the way the original design made it — one
PostgreSQL transaction that locks the product's stock row (`SELECT … FOR UPDATE`), checks,
moves the counters and writes the reservation, its lines, a ledger row per movement and an
audit row. The same work per reservation as the engine's script plus its write-through, but
every buyer of a product queues on that product's row lock.

Its tables are its own (`rowlock_*`), created by `create_tables`; nothing else reads them.
Used by the bench endpoint (`scripts/bench/app.py`, behind the same HTTP stack as the API) and
by the `engine` scenario of `inventory bench` (without HTTP).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import AsyncConnection, Connection
from psycopg.rows import TupleRow

DDL = """
CREATE TABLE IF NOT EXISTS rowlock_stock (
    product text NOT NULL,
    warehouse text NOT NULL,
    available integer NOT NULL CHECK (available >= 0),
    reserved integer NOT NULL CHECK (reserved >= 0),
    PRIMARY KEY (product, warehouse)
);
CREATE TABLE IF NOT EXISTS rowlock_reservations (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS rowlock_reservation_lines (
    reservation_id uuid NOT NULL REFERENCES rowlock_reservations (id),
    product text NOT NULL,
    warehouse text NOT NULL,
    quantity integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, product, warehouse)
);
CREATE TABLE IF NOT EXISTS rowlock_ledger (
    id bigserial PRIMARY KEY,
    product text NOT NULL,
    warehouse text NOT NULL,
    delta_available integer NOT NULL,
    delta_reserved integer NOT NULL,
    reason text NOT NULL,
    reservation_id uuid NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS rowlock_audit (
    id bigserial PRIMARY KEY,
    action text NOT NULL,
    object_id text NOT NULL,
    actor text NOT NULL,
    request_id text,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
"""

WAREHOUSE = "main"
PREFIX = "rowlock_"  # of every table name above (the single-statement baseline swaps it)


@dataclass(frozen=True)
class Held:
    id: str
    lines: list[tuple[str, str, int]]  # product, warehouse, quantity


@dataclass(frozen=True)
class Short:
    lines: list[tuple[str, int, int]]  # product, requested, available


def create_tables(conn: Connection[TupleRow]) -> None:
    conn.execute(DDL)


def stock(conn: Connection[TupleRow], products: dict[str, int], prefix: str = PREFIX) -> None:
    """Set each product's available units (reserved 0) in the default warehouse."""
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {prefix}stock (product, warehouse, available, reserved) "
            "VALUES (%s, %s, %s, 0) ON CONFLICT (product, warehouse) "
            "DO UPDATE SET available = EXCLUDED.available, reserved = 0",
            [(p, WAREHOUSE, n) for p, n in products.items()],
        )


def counters(
    conn: Connection[TupleRow], products: Sequence[str], prefix: str = PREFIX
) -> dict[str, tuple[int, int]]:
    rows = conn.execute(
        f"SELECT product, available, reserved FROM {prefix}stock "
        "WHERE product = ANY(%s) AND warehouse = %s",
        (list(products), WAREHOUSE),
    ).fetchall()
    return {p: (a, r) for p, a, r in rows}


async def reserve(
    conn: AsyncConnection[TupleRow],
    lines: Sequence[tuple[str, int]],
    user: str,
    request_id: str | None,
    ttl_s: int = 600,
) -> Held | Short:
    """Reserve every line or none, in one transaction. Rows are locked in a fixed order (by
    product) so that two carts never deadlock."""
    wanted: dict[str, int] = {}
    for product, quantity in lines:
        wanted[product] = wanted.get(product, 0) + quantity
    products = sorted(wanted)
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT product, available FROM rowlock_stock "
            "WHERE product = ANY(%s) AND warehouse = %s ORDER BY product FOR UPDATE",
            (products, WAREHOUSE),
        )
        available: dict[str, int] = dict(await cur.fetchall())
        short = [
            (p, wanted[p], available.get(p, 0)) for p in products if available.get(p, 0) < wanted[p]
        ]
        if short:
            return Short(short)
        reservation = str(uuid.uuid4())
        async with conn.cursor() as c:
            await c.executemany(
                "UPDATE rowlock_stock SET available = available - %s, reserved = reserved + %s "
                "WHERE product = %s AND warehouse = %s",
                [(wanted[p], wanted[p], p, WAREHOUSE) for p in products],
            )
            await c.execute(
                "INSERT INTO rowlock_reservations (id, user_id, status, created_at, expires_at) "
                "VALUES (%s, %s, 'active', now(), now() + make_interval(secs => %s))",
                (reservation, user, ttl_s),
            )
            await c.executemany(
                "INSERT INTO rowlock_reservation_lines "
                "(reservation_id, product, warehouse, quantity) VALUES (%s, %s, %s, %s)",
                [(reservation, p, WAREHOUSE, wanted[p]) for p in products],
            )
            await c.executemany(
                "INSERT INTO rowlock_ledger (product, warehouse, delta_available, "
                "delta_reserved, reason, reservation_id, created_at) "
                "VALUES (%s, %s, %s, %s, 'reserved', %s, now())",
                [(p, WAREHOUSE, -wanted[p], wanted[p], reservation) for p in products],
            )
            payload = {"lines": [[p, WAREHOUSE, wanted[p]] for p in products]}
            await c.execute(
                "INSERT INTO rowlock_audit (action, object_id, actor, request_id, payload, "
                "created_at) VALUES ('reservation_created', %s, %s, %s, %s, now())",
                (reservation, user, request_id, json.dumps(payload)),
            )
    return Held(reservation, [(p, WAREHOUSE, wanted[p]) for p in products])
