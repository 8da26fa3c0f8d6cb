"""The benchmark's second baseline: a reservation the way a user choosing PostgreSQL would
write it today — one statement, autocommit, no lock held across a round trip.

- One line: a CTE. A conditional `UPDATE … WHERE available >= q RETURNING` feeds the INSERTs
  of the reservation, its line, the ledger row and the audit row; the whole is one statement
  and one implicit transaction. A refusal matches no row: it takes no lock and writes nothing
  (the UPDATE skips a row whose committed `available` is short without locking it).
- A cart: a PL/pgSQL function `statement_reserve_cart`, one statement too. It first reads the
  counters without a lock and refuses a short cart at once (no lock, no write); otherwise it
  moves each line's counters in product order (so two carts never deadlock) and writes the
  rows; a line that a concurrent cart emptied meanwhile raises, and the statement rolls back.

The same rows per reservation as the row-lock baseline (`scripts/bench/rowlock.py`), in tables
of its own (`statement_*`, created by `create_tables`) so that the two baselines never share a
counter.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import psycopg
from psycopg import AsyncConnection, Connection
from psycopg.rows import TupleRow

from scripts.bench import rowlock
from scripts.bench.rowlock import WAREHOUSE, Held, Short

PREFIX = "statement_"

FUNCTION = """
CREATE OR REPLACE FUNCTION statement_reserve_cart(
    products text[], quantities integer[], reservation uuid, who text, request text,
    ttl_s integer
) RETURNS TABLE (product text, requested integer, available integer)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    -- a cart that is short now is refused without a lock and without a write
    RETURN QUERY
        SELECT w.p, w.q, coalesce(s.available, 0)
        FROM unnest(products, quantities) AS w(p, q)
        LEFT JOIN statement_stock s ON s.product = w.p AND s.warehouse = 'main'
        WHERE coalesce(s.available, 0) < w.q
        ORDER BY w.p;
    IF FOUND THEN
        RETURN;
    END IF;
    FOR i IN SELECT o FROM generate_subscripts(products, 1) AS o ORDER BY products[o] LOOP
        UPDATE statement_stock SET available = statement_stock.available - quantities[i],
               reserved = statement_stock.reserved + quantities[i]
        WHERE statement_stock.product = products[i] AND statement_stock.warehouse = 'main'
          AND statement_stock.available >= quantities[i];
        IF NOT FOUND THEN  -- taken by a concurrent cart since the read: undo it all
            RAISE EXCEPTION 'short: %', products[i] USING ERRCODE = 'P0002';
        END IF;
    END LOOP;
    INSERT INTO statement_reservations (id, user_id, status, created_at, expires_at)
        VALUES (reservation, who, 'active', now(), now() + make_interval(secs => ttl_s));
    INSERT INTO statement_reservation_lines (reservation_id, product, warehouse, quantity)
        SELECT reservation, w.p, 'main', w.q FROM unnest(products, quantities) AS w(p, q);
    INSERT INTO statement_ledger (product, warehouse, delta_available, delta_reserved, reason,
                                  reservation_id, created_at)
        SELECT w.p, 'main', -w.q, w.q, 'reserved', reservation, now()
        FROM unnest(products, quantities) AS w(p, q);
    INSERT INTO statement_audit (action, object_id, actor, request_id, payload, created_at)
        VALUES ('reservation_created', reservation, who, request,
                jsonb_build_object('lines', (
                    SELECT jsonb_agg(jsonb_build_array(w.p, 'main', w.q) ORDER BY w.p)
                    FROM unnest(products, quantities) AS w(p, q))),
                now());
END
$$;
"""

ONE_LINE = """
WITH moved AS (
    UPDATE statement_stock SET available = available - %(q)s::int,
                               reserved = reserved + %(q)s::int
    WHERE product = %(p)s::text AND warehouse = 'main' AND available >= %(q)s::int
    RETURNING product
), held AS (
    INSERT INTO statement_reservations (id, user_id, status, created_at, expires_at)
    SELECT %(id)s::uuid, %(who)s::text, 'active', now(),
           now() + make_interval(secs => %(ttl)s::int) FROM moved
    RETURNING id
), line AS (
    INSERT INTO statement_reservation_lines (reservation_id, product, warehouse, quantity)
    SELECT id, %(p)s::text, 'main', %(q)s::int FROM held
), ledger AS (
    INSERT INTO statement_ledger (product, warehouse, delta_available, delta_reserved, reason,
                                  reservation_id, created_at)
    SELECT product, 'main', -%(q)s::int, %(q)s::int, 'reserved', %(id)s::uuid, now() FROM moved
), audit AS (
    INSERT INTO statement_audit (action, object_id, actor, request_id, payload, created_at)
    SELECT 'reservation_created', %(id)s::text, %(who)s::text, %(rid)s::text, %(payload)s::jsonb,
           now() FROM moved
)
SELECT (SELECT count(*) FROM moved),
       (SELECT available FROM statement_stock WHERE product = %(p)s::text AND warehouse = 'main')
"""


def create_tables(conn: Connection[TupleRow]) -> None:
    conn.execute(rowlock.DDL.replace(rowlock.PREFIX, PREFIX))
    conn.execute(FUNCTION)


def stock(conn: Connection[TupleRow], products: dict[str, int]) -> None:
    rowlock.stock(conn, products, prefix=PREFIX)


def counters(conn: Connection[TupleRow], products: Sequence[str]) -> dict[str, tuple[int, int]]:
    return rowlock.counters(conn, products, prefix=PREFIX)


async def reserve(
    conn: AsyncConnection[TupleRow],
    lines: Sequence[tuple[str, int]],
    user: str,
    request_id: str | None,
    ttl_s: int = 600,
) -> Held | Short:
    """Reserve every line or none in one statement, on a connection in autocommit mode."""
    wanted: dict[str, int] = {}
    for product, quantity in lines:
        wanted[product] = wanted.get(product, 0) + quantity
    products = sorted(wanted)
    reservation = str(uuid.uuid4())
    if len(products) == 1:
        p, q = products[0], wanted[products[0]]
        payload = json.dumps({"lines": [[p, WAREHOUSE, q]]})
        args = {"p": p, "q": q, "id": reservation, "who": user, "rid": request_id}
        cur = await conn.execute(ONE_LINE, {**args, "ttl": ttl_s, "payload": payload})
        row = await cur.fetchone()
        assert row is not None
        moved, available = row
        if not moved:
            if (available or 0) >= q:  # the statement's snapshot predates the buyer who won
                cur = await conn.execute(
                    "SELECT available FROM statement_stock WHERE product = %s AND warehouse = %s",
                    (p, WAREHOUSE),
                )
                now = await cur.fetchone()
                available = now[0] if now else 0
            return Short([(p, q, available or 0)])
        return Held(reservation, [(p, WAREHOUSE, q)])
    try:
        cur = await conn.execute(
            "SELECT * FROM statement_reserve_cart(%s, %s, %s, %s, %s, %s)",
            (products, [wanted[p] for p in products], reservation, user, request_id, ttl_s),
        )
        short = await cur.fetchall()
    except psycopg.errors.NoDataFound as exc:  # P0002: a concurrent cart took a line first
        await conn.rollback()  # a no-op in autocommit; keeps any other caller's session usable
        p = str(exc.diag.message_primary or "").removeprefix("short: ")
        cur = await conn.execute(
            "SELECT available FROM statement_stock WHERE product = %s AND warehouse = %s",
            (p, WAREHOUSE),
        )
        row = await cur.fetchone()
        short = [(p, wanted.get(p, 0), row[0] if row else 0)]
    if short:
        return Short([(p, r, a) for p, r, a in short])
    return Held(reservation, [(p, WAREHOUSE, wanted[p]) for p in products])
