"""Reservations: hold units for a while, give them back, hold them longer, or buy them.

- `POST /api/reservations/` takes `{"product": 1, "quantity": 3}` or the cart
  `{"lines": [{"product", "quantity", "warehouse"?}], "ttl_seconds"?, "allow_split"?}`
  → 201 with the warehouse each unit came from and `expires_at`; 409 `insufficient_stock`
  lists the shortfall per line.
- `GET /api/reservations/{id}/` reads Redis: fresh, with `expired` as soon as `expires_at`
  passes. Once Redis has forgotten an ended reservation it comes from the database.
- `DELETE /api/reservations/{id}/` releases (200, the reservation); `POST .../extend/`
  `{"ttl_seconds"?}` holds it longer; `POST .../commit/` → 201, the order.
- `GET /api/reservations/` lists the caller's own (staff: everyone's, or `?user=`), newest
  first, `?status=`, keyset pages (`cursor`, `limit`). Staff only may name another `user`:
  a customer who does gets 403 (their own id is allowed).

Ownership: another customer's reservation is 404, never 403, so ids don't leak.

Writes accept `Idempotency-Key`: a retry with the same body gets the first answer again
(status and data, with `Idempotent-Replayed: true`); the same key with another body is 422.

Consistency: the list reads the database, which trails Redis by the drain lag (usually
milliseconds, longer while the worker is busy or down). Every write answers with an
`X-Consistency-Token` header; pass it as `?consistent_with=<token>` and the list waits (at
most 2 s) until the drain has passed that write. If it has not in time, the list answers
anyway with `X-Consistency: stale` (else `X-Consistency: consistent`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from web.auth import require_user
from web.bodies import parse_body, parse_query, product_quantity
from web.consistency import mark, written
from web.responses import ok
from web.schemas.orders import (
    ExtendIn,
    ReservationQuery,
    ReserveIn,
    order_out,
    reservation_data,
)
from web.services import reservations
from web.services.container import services


async def _body(request: Request) -> ExtendIn:
    # The body is optional here: no body means the default ttl.
    if not await request.body():
        return ExtendIn()
    return await parse_body(request, ExtendIn)


async def create(request: Request) -> Response:
    """Reserve units, all lines or none."""
    svc = services(request)
    who = require_user(request)
    body = await parse_body(request, ReserveIn, shortcut=product_quantity)
    held = await reservations.reserve(svc, body, who.context(request))
    return await written(request, reservation_data(held), 201, held)


async def listing(request: Request) -> Response:
    """The caller's reservations (staff: all) from the database, newest first."""
    who = require_user(request)
    q = parse_query(request, ReservationQuery)
    listed = await reservations.list_reservations(services(request), who, q)
    page = listed.page
    response = ok(
        request,
        [reservation_data(r) for r in page.rows],
        next=page.next,
        previous=page.previous,
    )
    return mark(response, listed.state)


async def detail(request: Request) -> Response:
    """One reservation, fresh from Redis (from the database once Redis has let it go)."""
    ctx = require_user(request).context(request)
    found = await reservations.get_reservation(
        services(request), request.path_params["reservation_id"], ctx
    )
    return ok(request, reservation_data(found))


async def release(request: Request) -> Response:
    """Give the units back."""
    ctx = require_user(request).context(request)
    reservation_id = request.path_params["reservation_id"]
    ended = await reservations.release(services(request), reservation_id, ctx)
    return await written(request, reservation_data(ended), 200, ended)


async def extend(request: Request) -> Response:
    """Hold the units longer: expires_at = now + ttl, capped by the maximum lifetime."""
    ctx = require_user(request).context(request)
    body = await _body(request)
    reservation_id = request.path_params["reservation_id"]
    held = await reservations.extend(services(request), reservation_id, ctx, body.ttl_seconds)
    return await written(request, reservation_data(held), 200, held)


async def commit(request: Request) -> Response:
    """Buy the reserved units: a pending order."""
    ctx = require_user(request).context(request)
    reservation_id = request.path_params["reservation_id"]
    order = await reservations.commit(services(request), reservation_id, ctx)
    return await written(request, order_out(order), 201, order)


routes = [
    Route("/api/reservations/", create, methods=["POST"]),
    Route("/api/reservations/", listing, methods=["GET"]),
    Route("/api/reservations/{reservation_id}/", detail, methods=["GET"]),
    Route("/api/reservations/{reservation_id}/", release, methods=["DELETE"]),
    Route("/api/reservations/{reservation_id}/extend/", extend, methods=["POST"]),
    Route("/api/reservations/{reservation_id}/commit/", commit, methods=["POST"]),
]
