"""Orders: place them, list them, read one, move them along the state machine.

- `POST /api/orders/` with `{"reservation": id}` commits a live reservation; with
  `{"product", "quantity"}` or `{"lines": [...], "allow_split"?}` it reserves and commits in
  one step (a direct order) → 201, the order: `{id, user, status, reservation, lines:
  [{product, warehouse, quantity, unit_price}], total, currency, created_at, updated_at}`,
  money as decimal strings.
- `GET /api/orders/{id}/` is fresh from Redis while the order lives there (read-your-writes);
  a final order that Redis has let go after its retention comes from the database.
- `PATCH /api/orders/{id}/` `{"status"}` (case-insensitive): staff move any order along
  pending → confirmed | cancelled, confirmed → processing | cancelled, processing → shipped →
  delivered; 409 `invalid_transition` lists the allowed moves. A customer may only cancel
  their own pending order: any other move, or cancelling a confirmed one, is 403 `forbidden`.
- `GET /api/orders/` lists from the database, filters `start_date`, `end_date` (YYYY-MM-DD,
  inclusive, UTC days of `created_at`), `status` (case-insensitive), `min_total`,
  `max_total` (decimal strings, inclusive, in each order's own currency), `sort=newest`
  (created_at, id descending; the default) or `highest_value` (total, id descending), and
  `user` for staff. A customer always gets their own orders; naming another `user` is 403.
  Pages are cut by keyset (`cursor`, `limit` ≤ 200): orders arriving while a client pages
  never shift, repeat or skip the ones it has not seen yet.

Ownership: another customer's order is 404, never 403, so ids don't leak.

Writes accept `Idempotency-Key` (same key and body: the first answer again, with
`Idempotent-Replayed: true`; another body: 422 `idempotency_mismatch`).

Consistency: the list reads the database, which trails Redis by the drain lag. Every write
answers with `X-Consistency-Token`; `GET /api/orders/?consistent_with=<token>` waits (at most
2 s) until the drain has passed that write, and answers with `X-Consistency: consistent`, or
`X-Consistency: stale` when it had to answer before the drain got there.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.errors import InvalidTransition, OrderNotFound
from engine.models import CallContext, Order
from engine.states import OrderStatus
from engine.validation import RECORD_ID
from persistence import queries_orders as queries
from persistence.queries_orders import Amount, OrderFilters
from web.auth import require_user
from web.bodies import parse_body, parse_query
from web.consistency import mark, read_page, wait_for, written
from web.errors import ApiError

# The currencies whose minor unit is not a hundredth (money.exponent's table).
from web.money import EXPONENTS as IRREGULAR_EXPONENTS
from web.responses import ok
from web.routes.reservations import owner_filter
from web.schemas.orders import OrderIn, OrderQuery, TransitionIn, order_out
from web.services.container import Services, services

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


async def _current(svc: Services, order_id: str, ctx: CallContext) -> Order:
    """The order from Redis, or from the database once Redis has let it go."""
    try:
        return await svc.engine.get_order(order_id, ctx)
    except OrderNotFound:
        if not RECORD_ID.fullmatch(order_id):  # no record has such an id: don't ask
            raise
        kept = await asyncio.to_thread(queries.get_order, svc.db, order_id, ctx.scope)
        if kept is None:
            raise
        return kept


async def create(request: Request) -> Response:
    """Commit a reservation, or place a direct order."""
    svc = services(request)
    ctx = require_user(request).context(request)
    body = await parse_body(request, OrderIn)
    if body.reservation is not None:
        order = await svc.engine.commit(body.reservation, ctx)
    else:
        order = await svc.engine.place_order(
            body.line_requests(), ctx, allow_split=body.allow_split
        )
    return await written(request, order_out(order), 201, order)


async def listing(request: Request) -> Response:
    """Orders from the database, filtered, one keyset page at a time."""
    who = require_user(request)
    q = parse_query(request, OrderQuery)
    filters = OrderFilters(
        user=owner_filter(who, q.user),
        status=q.status,
        created_from=_day_start(q.start_date),
        created_before=_day_start(q.end_date, after=True),
        min_total=_amount(q.min_total, ROUND_CEILING),
        max_total=_amount(q.max_total, ROUND_FLOOR),
        highest_value=q.sort == "highest_value",
    )
    state = await wait_for(request, q.consistent_with)
    page = await read_page(request, queries.list_orders(filters), q.cursor, q.limit)
    response = ok(
        request, [order_out(o) for o in page.rows], next=page.next, previous=page.previous
    )
    return mark(response, state)


async def detail(request: Request) -> Response:
    svc = services(request)
    ctx = require_user(request).context(request)
    return ok(request, order_out(await _current(svc, request.path_params["order_id"], ctx)))


async def update(request: Request) -> Response:
    """Move the order to `status`."""
    svc = services(request)
    who = require_user(request)
    body = await parse_body(request, TransitionIn)
    ctx = who.context(request)
    order_id = request.path_params["order_id"]
    expected: OrderStatus | None = None
    if not who.staff:
        if body.status != OrderStatus.CANCELLED:
            raise ApiError(
                403, "forbidden", "a customer may only cancel an order; other moves are staff's"
            )
        current = await _current(svc, order_id, ctx)  # 404 unless it is theirs
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
        order = await svc.engine.transition(order_id, body.status, ctx, expected=expected)
    except OrderNotFound:
        if not RECORD_ID.fullmatch(order_id):
            raise
        # Only final orders leave Redis: if the database has it, no move is left.
        kept = await asyncio.to_thread(queries.get_order, svc.db, order_id, ctx.scope)
        if kept is None:
            raise
        raise InvalidTransition(order_id, kept.status, body.status, []) from None
    return await written(request, order_out(order), 200, order)


routes = [
    Route("/api/orders/", create, methods=["POST"]),
    Route("/api/orders/", listing, methods=["GET"]),
    Route("/api/orders/{order_id}/", detail, methods=["GET"]),
    Route("/api/orders/{order_id}/", update, methods=["PATCH"]),
]
