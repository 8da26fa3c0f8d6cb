"""The catalog in the database: products and warehouses, written directly (they change rarely),
and the one question about orders the catalog asks: is a product in an open order?

A product is never removed: deleting sets `deleted_at`, and every read here leaves such rows
out. Its engine id (Redis, ledger, orders) is `str(id)`. Synchronous, like all database
access, except the API's two catalog reads (`read_product`, `read_products`): on PostgreSQL
they run on the async path (persistence/db_async.py), on SQLite in a thread. Both paths run the
same statements (`product_query`, `scan_query`) and read rows with `product_row`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.states import TERMINAL
from persistence import schema
from persistence.db import insert
from persistence.db_async import fetch_all

P = schema.products
W = schema.warehouses


@dataclass(frozen=True, slots=True)
class CatalogProduct:
    id: int
    sku: str
    name: str
    description: str
    price: int  # minor units
    currency: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @property
    def engine_id(self) -> str:
        return str(self.id)


@dataclass(frozen=True, slots=True)
class Warehouse:
    id: str
    name: str
    priority: int
    created_at: datetime


class SkuTaken(Exception):
    """Another product (live or deleted) already has this sku."""

    def __init__(self, sku: str, product_id: int) -> None:
        super().__init__(f"sku {sku!r} is taken by product {product_id}")
        self.sku = sku
        self.product_id = product_id


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes, which are UTC by construction.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def product_row(row: Row[Any]) -> CatalogProduct:
    m = row._mapping
    return CatalogProduct(
        id=int(m["id"]),
        sku=m["sku"],
        name=m["name"],
        description=m["description"],
        price=int(m["price"]),
        currency=m["currency"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        deleted_at=m["deleted_at"],
    )


def _warehouse(row: Row[Any]) -> Warehouse:
    m = row._mapping
    return Warehouse(m["id"], m["name"], int(m["priority"]), m["created_at"])


# -- products --------------------------------------------------------------------------------


def insert_product(
    db: Engine, *, sku: str, name: str, description: str, price: int, currency: str
) -> tuple[CatalogProduct, bool]:
    """Insert a product. If the sku is taken, nothing is written and the row holding it
    (perhaps deleted) comes back instead: `(product, inserted)`."""
    now = _now()
    values = {
        "sku": sku,
        "name": name,
        "description": description,
        "price": price,
        "currency": currency,
        "created_at": now,
        "updated_at": now,
        "deleted_at": None,
    }
    with db.begin() as conn:
        stmt = insert(conn, P).values(**values).on_conflict_do_nothing(index_elements=["sku"])
        row = conn.execute(stmt.returning(*P.c)).first()
        if row is not None:
            return product_row(row), True
        return product_row(conn.execute(select(P).where(P.c.sku == sku)).one()), False


def claim_unfinished(db: Engine, row: CatalogProduct) -> CatalogProduct | None:
    """Take over `row`, a create not finished in the engine, to finish it: its updated_at moves
    on, so that its inserter's remove_unfinished leaves it alone from now on. Only the row as
    read is claimed: None if it was removed, deleted or claimed meanwhile (read it again)."""
    # Strictly later than the row's stamp, whatever the clocks of the processes involved say.
    stamp = max(_now(), _utc(row.updated_at) + timedelta(microseconds=1))
    with db.begin() as conn:
        claimed = conn.execute(
            P.update()
            .where(
                P.c.id == row.id,
                P.c.sku == row.sku,
                P.c.updated_at == row.updated_at,
                P.c.deleted_at.is_(None),
            )
            .values(updated_at=stamp)
            .returning(*P.c)
        ).first()
    return product_row(claimed) if claimed is not None else None


def remove_unfinished(db: Engine, row: CatalogProduct) -> bool:
    """Remove `row`, just inserted, whose create the engine refused, unless another create has
    claimed it meanwhile (claim_unfinished): then it is that create's to finish."""
    with db.begin() as conn:
        removed = conn.execute(
            P.delete().where(P.c.id == row.id, P.c.updated_at == row.updated_at)
        ).rowcount
    return removed == 1


def product_query(product_id: int) -> Select[Any]:
    return select(P).where(P.c.id == product_id, P.c.deleted_at.is_(None))


def get_product(db: Engine, product_id: int) -> CatalogProduct | None:
    """A product that is not deleted, or None."""
    with db.connect() as conn:
        row = conn.execute(product_query(product_id)).first()
    return product_row(row) if row is not None else None


async def read_product(
    db: Engine, adb: AsyncEngine | None, product_id: int
) -> CatalogProduct | None:
    """get_product for the API: on the async path when there is one (`adb`), else in a thread."""
    if adb is None:
        return await asyncio.to_thread(get_product, db, product_id)
    rows = await fetch_all(adb, product_query(product_id))
    return product_row(rows[0]) if rows else None


def update_product(
    db: Engine,
    product_id: int,
    values: Mapping[str, Any],
    *,
    unchanged_since: datetime | None = None,
) -> CatalogProduct | None:
    """Change catalog fields of a product that is not deleted (and, with `unchanged_since`,
    whose row has not changed since: its updated_at is that); None if there is none.
    Raises SkuTaken (and changes nothing) when the new sku belongs to another product."""
    with db.begin() as conn:
        if "sku" in values:
            holder = conn.scalar(select(P.c.id).where(P.c.sku == values["sku"]))
            if holder is not None and holder != product_id:
                raise SkuTaken(values["sku"], int(holder))
        where = [P.c.id == product_id, P.c.deleted_at.is_(None)]
        if unchanged_since is not None:
            where.append(P.c.updated_at == unchanged_since)
        stmt = P.update().where(*where).values(**values, updated_at=_now()).returning(*P.c)
        try:
            row = conn.execute(stmt).first()
        except IntegrityError:  # the sku was taken between the check and the update
            raise SkuTaken(values["sku"], -1) from None
    return product_row(row) if row is not None else None


def soft_delete(db: Engine, product_id: int) -> CatalogProduct | None:
    now = _now()
    with db.begin() as conn:
        row = conn.execute(
            P.update()
            .where(P.c.id == product_id, P.c.deleted_at.is_(None))
            .values(deleted_at=now, updated_at=now)
            .returning(*P.c)
        ).first()
    return product_row(row) if row is not None else None


def scan_query(
    *, search: str | None, after: int | None, before: int | None, limit: int
) -> Select[Any]:
    query = select(P).where(P.c.deleted_at.is_(None))
    if search:
        term = search.lower()
        query = query.where(
            func.lower(P.c.name).contains(term, autoescape=True)
            | func.lower(P.c.sku).contains(term, autoescape=True)
        )
    if before is not None:
        query = query.where(P.c.id < before).order_by(P.c.id.desc())
    else:
        if after is not None:
            query = query.where(P.c.id > after)
        query = query.order_by(P.c.id.asc())
    return query.limit(limit)


def scan_products(
    db: Engine, *, search: str | None, after: int | None, before: int | None, limit: int
) -> list[CatalogProduct]:
    """Up to `limit` products that are not deleted, by id: ascending from after `after`, or
    descending from before `before`. `search` matches name or sku, case-insensitively."""
    query = scan_query(search=search, after=after, before=before, limit=limit)
    with db.connect() as conn:
        return [product_row(row) for row in conn.execute(query)]


async def read_products(
    db: Engine,
    adb: AsyncEngine | None,
    *,
    search: str | None,
    after: int | None,
    before: int | None,
    limit: int,
) -> list[CatalogProduct]:
    """scan_products for the API: on the async path when there is one (`adb`), else in a
    thread."""
    if adb is None:
        return await asyncio.to_thread(
            scan_products, db, search=search, after=after, before=before, limit=limit
        )
    query = scan_query(search=search, after=after, before=before, limit=limit)
    return [product_row(row) for row in await fetch_all(adb, query)]


def open_orders(db: Engine, product: str) -> int:
    """How many orders not yet delivered or cancelled contain `product` (as the database
    knows them: it trails Redis by the drain lag)."""
    o, lines = schema.orders, schema.order_lines
    query = (
        select(func.count(func.distinct(o.c.id)))
        .select_from(o.join(lines, lines.c.order_id == o.c.id))
        .where(lines.c.product == product, o.c.status.not_in([s.value for s in TERMINAL]))
    )
    with db.connect() as conn:
        return int(conn.scalar(query) or 0)


# -- warehouses ------------------------------------------------------------------------------


def ensure_warehouse(db: Engine, warehouse_id: str, name: str, priority: int = 0) -> None:
    """Create the warehouse row unless it exists (the default warehouse, on demand)."""
    with db.begin() as conn:
        conn.execute(
            insert(conn, W)
            .values(id=warehouse_id, name=name, priority=priority, created_at=_now())
            .on_conflict_do_nothing(index_elements=["id"])
        )


def warehouse_priorities(db: Engine, names: Iterable[str]) -> dict[str, int]:
    """The priority of each named warehouse that exists; missing ones are left out."""
    wanted = list(dict.fromkeys(names))
    with db.connect() as conn:
        rows = conn.execute(select(W.c.id, W.c.priority).where(W.c.id.in_(wanted)))
        return {str(r.id): int(r.priority) for r in rows}


def list_warehouses(db: Engine) -> list[Warehouse]:
    with db.connect() as conn:
        rows = conn.execute(select(W).order_by(W.c.priority, W.c.id))
        return [_warehouse(r) for r in rows]


def create_warehouse(db: Engine, warehouse_id: str, name: str, priority: int) -> Warehouse | None:
    """Insert a warehouse; None if the id is taken (nothing changes)."""
    with db.begin() as conn:
        row = conn.execute(
            insert(conn, W)
            .values(id=warehouse_id, name=name, priority=priority, created_at=_now())
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(*W.c)
        ).first()
    return _warehouse(row) if row is not None else None
