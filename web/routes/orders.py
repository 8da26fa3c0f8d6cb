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

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from web.auth import require_user
from web.bodies import parse_body, parse_query
from web.consistency import mark, written
from web.responses import ok
from web.schemas.orders import OrderIn, OrderQuery, TransitionIn, order_out
from web.services import orders
from web.services.container import services


async def create(request: Request) -> Response:
    """Commit a reservation, or place a direct order."""
    svc = services(request)
    ctx = require_user(request).context(request)
    body = await parse_body(request, OrderIn)
    order = await orders.place_order(svc, body, ctx)
    return await written(request, order_out(order), 201, order)


async def listing(request: Request) -> Response:
    """Orders from the database, filtered, one keyset page at a time."""
    who = require_user(request)
    q = parse_query(request, OrderQuery)
    listed = await orders.list_orders(services(request), who, q)
    page = listed.page
    response = ok(
        request, [order_out(o) for o in page.rows], next=page.next, previous=page.previous
    )
    return mark(response, listed.state)


async def detail(request: Request) -> Response:
    ctx = require_user(request).context(request)
    order_id = request.path_params["order_id"]
    return ok(request, order_out(await orders.get_order(services(request), order_id, ctx)))


async def update(request: Request) -> Response:
    """Move the order to `status`."""
    svc = services(request)
    who = require_user(request)
    body = await parse_body(request, TransitionIn)
    ctx = who.context(request)
    order = await orders.transition(svc, who, request.path_params["order_id"], body.status, ctx)
    return await written(request, order_out(order), 200, order)


routes = [
    Route("/api/orders/", create, methods=["POST"]),
    Route("/api/orders/", listing, methods=["GET"]),
    Route("/api/orders/{order_id}/", detail, methods=["GET"]),
    Route("/api/orders/{order_id}/", update, methods=["PATCH"]),
]
