"""Orders: place them, read one, move them along the state machine, and the filters of the
list (which reads the database)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from engine.errors import InvalidTransition, OrderNotFound
from engine.models import CallContext, Order
from engine.states import OrderStatus
from persistence import queries_orders as queries
from persistence.queries_orders import Amount, OrderFilters
from web.auth import Principal
from web.consistency import read_page, wait_for
from web.errors import ApiError

# The currencies whose minor unit is not a hundredth (money.exponent's table).
from web.money import EXPONENTS as IRREGULAR_EXPONENTS
from web.schemas.orders import OrderIn, OrderQuery
from web.services.container import Services
from web.services.records import Listed, kept, owner_filter, redis_first

CUSTOMER_MAY = (OrderStatus.PENDING, OrderStatus.CANCELLED)


def _amount(value: Decimal | None, rounding: str) -> Amount | None:
    """A decimal bound as minor units per currency, rounded inward (ceil for a minimum)."""
    if value is None:
        return None

    def minor(places: int) -> int:
        return int(value.scaleb(places).to_integral_value(rounding=rounding))

    return Amount(minor(2), {c: minor(p) for c, p in IRREGULAR_EXPONENTS.items()})


def _day_start(day: date | None, *, after: bool = False) -> datetime | None:
    if day is None or (after and day == date.max):
        return None
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start + timedelta(days=1) if after else start


def filters(who: Principal, q: OrderQuery) -> OrderFilters:
    """What the list shows: the query's filters, on the caller's own orders unless staff."""
    return OrderFilters(
        user=owner_filter(who, q.user),
        status=q.status,
        created_from=_day_start(q.start_date),
        created_before=_day_start(q.end_date, after=True),
        min_total=_amount(q.min_total, ROUND_CEILING),
        max_total=_amount(q.max_total, ROUND_FLOOR),
        highest_value=q.sort == "highest_value",
    )


async def list_orders(svc: Services, who: Principal, q: OrderQuery) -> Listed:
    """Orders from the database, filtered, one keyset page at a time; after the drain has
    passed `q.consistent_with` (or waited long enough)."""
    found = filters(who, q)
    state = await wait_for(svc, q.consistent_with)
    page = await read_page(svc, queries.list_orders(found), q.cursor, q.limit)
    return Listed(page, state)


async def get_order(svc: Services, order_id: str, ctx: CallContext) -> Order:
    """The order from Redis, or from the database once Redis has let it go."""
    return await redis_first(
        svc,
        lambda: svc.engine.get_order(order_id, ctx),
        queries.get_order,
        order_id,
        ctx,
        OrderNotFound,
    )


async def place_order(svc: Services, body: OrderIn, ctx: CallContext) -> Order:
    """Commit a reservation, or place a direct order."""
    if body.reservation is not None:
        return await svc.engine.commit(body.reservation, ctx)
    return await svc.engine.place_order(body.line_requests(), ctx, allow_split=body.allow_split)


async def transition(
    svc: Services, who: Principal, order_id: str, status: OrderStatus, ctx: CallContext
) -> Order:
    """Move the order to `status`: staff along the state machine, a customer only to cancel
    their own pending order."""
    expected: OrderStatus | None = None
    if not who.staff:
        if status != OrderStatus.CANCELLED:
            raise ApiError(
                403, "forbidden", "a customer may only cancel an order; other moves are staff's"
            )
        current = await get_order(svc, order_id, ctx)  # 404 unless it is theirs
        if current.status not in CUSTOMER_MAY:
            raise ApiError(
                403,
                "forbidden",
                f"an order can be cancelled by its buyer only while pending; "
                f"this one is {current.status}",
                {"order": order_id, "status": current.status.value},
            )
        # the cancel holds only if the order is still as its buyer saw it (staff may have
        # confirmed it since): the script checks and moves in one step
        expected = current.status
    try:
        return await svc.engine.transition(order_id, status, ctx, expected=expected)
    except OrderNotFound:
        # Only final orders leave Redis: if the database has it, no move is left.
        found = await kept(svc, queries.get_order, order_id, ctx)
        if found is None:
            raise
        raise InvalidTransition(order_id, found.status, status, []) from None
