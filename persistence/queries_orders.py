"""Reading reservations and orders back from the durable record: the list queries (filters
and sort keys; the caller cuts the page), one record when Redis no longer holds it, and a
partition's drain checkpoint.

Rows come back as the engine's own models, so a record read here and one read from Redis
look the same to the caller. These reads may trail Redis by the drain lag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Select, and_, case, literal, or_, select

from engine.models import Order, OrderLine, Reservation, ReservationStatus, ReservedLine
from engine.states import OrderStatus
from persistence import schema

RES, RES_LINES = schema.reservations, schema.reservation_lines
ORD, ORD_LINES = schema.orders, schema.order_lines


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ms(value: datetime) -> int:
    return round(_utc(value).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Listing:
    """A list query, ready to be cut into keyset pages: the filtered select, its sort keys
    as (column, descending) ending with the unique id, a row's key values, and how a page of
    rows becomes models."""

    query: Select[Any]
    sort: list[tuple[ColumnElement[Any], bool]]
    boundary: Callable[[Any], tuple[Any, ...]]
    load: Callable[[Connection, Sequence[Any]], list[Any]]


# -- reservations -------------------------------------------------------------------------------


def _reservation_status(status: str, expires_at: datetime, now: datetime) -> ReservationStatus:
    # As Redis reports it: an active reservation past expires_at is expired, swept or not.
    if status == ReservationStatus.ACTIVE and _utc(expires_at) <= now:
        return ReservationStatus.EXPIRED
    return ReservationStatus(status)


def _reservations(conn: Connection, rows: Sequence[Any], now: datetime) -> list[Reservation]:
    ids = [row.id for row in rows]
    lines: dict[str, list[ReservedLine]] = {i: [] for i in ids}
    # a cart across partitions is its home's row; its lines are every part's
    owner_of = {i: i for i in ids}
    carts = [row.id for row in rows if row.cart_id == row.id]
    if carts:
        parts = select(RES.c.id, RES.c.cart_id).where(
            RES.c.cart_id.in_(carts), RES.c.id != RES.c.cart_id
        )
        owner_of.update({str(part): str(cart) for part, cart in conn.execute(parts)})
    if ids:
        query = (
            select(RES_LINES)
            .where(RES_LINES.c.reservation_id.in_(list(owner_of)))
            .order_by(RES_LINES.c.reservation_id, RES_LINES.c.line)
        )
        for li in conn.execute(query):
            line = ReservedLine(li.product, li.warehouse, li.quantity)
            lines[owner_of[li.reservation_id]].append(line)
    return [
        Reservation(
            id=row.id,
            owner=row.user_id,
            status=_reservation_status(row.status, row.expires_at, now),
            created_at_ms=_ms(row.created_at),
            expires_at_ms=_ms(row.expires_at),
            lines=tuple(lines[row.id]),
            order_id=row.order_id,
            source=row.source or "request",
        )
        for row in rows
    ]


def _status_filter(status: ReservationStatus, now: datetime) -> ColumnElement[bool]:
    live = and_(RES.c.status == ReservationStatus.ACTIVE.value, RES.c.expires_at > now)
    if status == ReservationStatus.ACTIVE:
        return live
    if status == ReservationStatus.EXPIRED:
        due = and_(RES.c.status == ReservationStatus.ACTIVE.value, RES.c.expires_at <= now)
        return or_(RES.c.status == status.value, due)
    return RES.c.status == status.value


def list_reservations(user: str | None, status: ReservationStatus | None) -> Listing:
    """Newest first; `user` None = everyone's (staff)."""
    now = datetime.now(UTC)
    # the other parts of a cart across partitions are listed as their cart (its home's row)
    query = select(RES).where(or_(RES.c.cart_id.is_(None), RES.c.cart_id == RES.c.id))
    if user is not None:
        query = query.where(RES.c.user_id == user)
    if status is not None:
        query = query.where(_status_filter(status, now))
    return Listing(
        query,
        [(RES.c.created_at, True), (RES.c.id, True)],
        lambda row: (row.created_at, row.id),
        lambda conn, rows: _reservations(conn, rows, now),
    )


def get_reservation(db: Engine, reservation_id: str, scope: str) -> Reservation | None:
    """One reservation, if it exists and `scope` ('' = anyone) owns it."""
    with db.connect() as conn:
        row = conn.execute(select(RES).where(RES.c.id == reservation_id)).first()
        if row is None or (scope and row.user_id != scope):
            return None
        if row.cart_id is not None and row.cart_id != row.id:
            return None  # a cart's other part: found as its cart
        return _reservations(conn, [row], datetime.now(UTC))[0]


# -- orders -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Amount:
    """A bound on order totals in minor units: `default`, or per currency where the
    currency's minor unit differs (JPY has none, KWD three)."""

    default: int
    by_currency: Mapping[str, int] = field(default_factory=dict)

    def sql(self) -> ColumnElement[Any]:
        if not self.by_currency:
            return literal(self.default)
        return case(dict(self.by_currency), value=ORD.c.currency, else_=self.default)


@dataclass(frozen=True, slots=True)
class OrderFilters:
    user: str | None = None  # None = everyone's (staff)
    status: OrderStatus | None = None
    created_from: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    min_total: Amount | None = None
    max_total: Amount | None = None
    highest_value: bool = False  # sort by total, else newest first


def _orders(conn: Connection, rows: Sequence[Any]) -> list[Order]:
    ids = [row.id for row in rows]
    lines: dict[str, list[OrderLine]] = {i: [] for i in ids}
    if ids:
        query = select(ORD_LINES).where(ORD_LINES.c.order_id.in_(ids)).order_by(ORD_LINES.c.line)
        for li in conn.execute(query):
            line = OrderLine(li.product, li.warehouse, li.quantity, li.unit_price)
            lines[li.order_id].append(line)
    return [
        Order(
            id=row.id,
            owner=row.user_id,
            status=OrderStatus(row.status),
            reservation_id=row.reservation_id,
            lines=tuple(lines[row.id]),
            total=row.total,
            currency=row.currency,
            created_at_ms=_ms(row.created_at),
            updated_at_ms=_ms(row.updated_at),
        )
        for row in rows
    ]


def list_orders(f: OrderFilters) -> Listing:
    query = select(ORD)
    if f.user is not None:
        query = query.where(ORD.c.user_id == f.user)
    if f.status is not None:
        query = query.where(ORD.c.status == f.status.value)
    if f.created_from is not None:
        query = query.where(ORD.c.created_at >= f.created_from)
    if f.created_before is not None:
        query = query.where(ORD.c.created_at < f.created_before)
    if f.min_total is not None:
        query = query.where(ORD.c.total >= f.min_total.sql())
    if f.max_total is not None:
        query = query.where(ORD.c.total <= f.max_total.sql())
    if f.highest_value:
        return Listing(
            query,
            [(ORD.c.total, True), (ORD.c.id, True)],
            lambda row: (row.total, row.id),
            _orders,
        )
    return Listing(
        query,
        [(ORD.c.created_at, True), (ORD.c.id, True)],
        lambda row: (row.created_at, row.id),
        _orders,
    )


def get_order(db: Engine, order_id: str, scope: str) -> Order | None:
    """One order, if it exists and `scope` ('' = anyone) owns it."""
    with db.connect() as conn:
        row = conn.execute(select(ORD).where(ORD.c.id == order_id)).first()
        if row is None or (scope and row.user_id != scope):
            return None
        return _orders(conn, [row])[0]


# -- the drain ----------------------------------------------------------------------------------


def checkpoint(db: Engine, partition: int) -> str | None:
    """The stream id of the last event of `partition` the database holds (None: none yet)."""
    t = schema.outbox_checkpoints
    with db.connect() as conn:
        found: str | None = conn.scalar(select(t.c.last_event_id).where(t.c.partition == partition))
    return found
