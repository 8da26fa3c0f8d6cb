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

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.errors import ReservationNotFound
from engine.settings import Settings
from engine.validation import RECORD_ID
from persistence import queries_orders as queries
from web.auth import Principal, require_user
from web.bodies import parse_body, parse_query
from web.consistency import mark, read_page, wait_for, written
from web.errors import ApiError
from web.responses import ok
from web.schemas.orders import (
    ExtendIn,
    ReservationQuery,
    ReserveIn,
    order_out,
    reservation_out,
    ttl_bounds,
)
from web.services.container import services


def ttl_ms(settings: Settings, seconds: float | None) -> int | None:
    if seconds is None:
        return None
    # Compared in seconds with the very numbers the document states as minimum and maximum,
    # so that every ttl_seconds it allows is taken and no other.
    low, high = ttl_bounds(settings)
    if not low <= seconds <= high:
        raise ApiError(
            400,
            "invalid_input",
            f"ttl_seconds must be between {low:g} and {high:g}",
            {"field": "ttl_seconds"},
        )
    ms = round(seconds * 1000)
    return min(max(ms, settings.reservation_ttl_min_ms), settings.reservation_ttl_max_ms)


def owner_filter(who: Principal, requested: str | None) -> str | None:
    """Whose records a list shows: staff choose (None = everyone's); a customer sees their
    own and may not ask for anyone else's."""
    if who.staff:
        return requested
    if requested is not None and requested != who.user_id:
        raise ApiError(403, "forbidden", "only staff can list another user's records")
    return who.user_id


async def _body(request: Request) -> ExtendIn:
    # The body is optional here: no body means the default ttl.
    if not await request.body():
        return ExtendIn()
    return await parse_body(request, ExtendIn)


async def create(request: Request) -> Response:
    """Reserve units, all lines or none."""
    svc = services(request)
    who = require_user(request)
    body = await parse_body(request, ReserveIn)
    held = await svc.engine.reserve(
        body.line_requests(),
        who.context(request),
        ttl_ms=ttl_ms(svc.settings, body.ttl_seconds),
        allow_split=body.allow_split,
    )
    return await written(request, reservation_out(held), 201, held)


async def listing(request: Request) -> Response:
    """The caller's reservations (staff: all) from the database, newest first."""
    who = require_user(request)
    q = parse_query(request, ReservationQuery)
    user = owner_filter(who, q.user)
    state = await wait_for(request, q.consistent_with)
    page = await read_page(request, queries.list_reservations(user, q.status), q.cursor, q.limit)
    response = ok(
        request,
        [reservation_out(r) for r in page.rows],
        next=page.next,
        previous=page.previous,
    )
    return mark(response, state)


async def detail(request: Request) -> Response:
    """One reservation, fresh from Redis (from the database once Redis has let it go)."""
    svc = services(request)
    ctx = require_user(request).context(request)
    reservation_id = request.path_params["reservation_id"]
    try:
        found = await svc.engine.get_reservation(reservation_id, ctx)
    except ReservationNotFound:
        if not RECORD_ID.fullmatch(reservation_id):  # no record has such an id: don't ask
            raise
        kept = await asyncio.to_thread(queries.get_reservation, svc.db, reservation_id, ctx.scope)
        if kept is None:
            raise
        found = kept
    return ok(request, reservation_out(found))


async def release(request: Request) -> Response:
    """Give the units back."""
    svc = services(request)
    ctx = require_user(request).context(request)
    ended = await svc.engine.release(request.path_params["reservation_id"], ctx)
    return await written(request, reservation_out(ended), 200, ended)


async def extend(request: Request) -> Response:
    """Hold the units longer: expires_at = now + ttl, capped by the maximum lifetime."""
    svc = services(request)
    ctx = require_user(request).context(request)
    body = await _body(request)
    held = await svc.engine.extend(
        request.path_params["reservation_id"], ctx, ttl_ms=ttl_ms(svc.settings, body.ttl_seconds)
    )
    return await written(request, reservation_out(held), 200, held)


async def commit(request: Request) -> Response:
    """Buy the reserved units: a pending order."""
    svc = services(request)
    ctx = require_user(request).context(request)
    order = await svc.engine.commit(request.path_params["reservation_id"], ctx)
    return await written(request, order_out(order), 201, order)


routes = [
    Route("/api/reservations/", create, methods=["POST"]),
    Route("/api/reservations/", listing, methods=["GET"]),
    Route("/api/reservations/{reservation_id}/", detail, methods=["GET"]),
    Route("/api/reservations/{reservation_id}/", release, methods=["DELETE"]),
    Route("/api/reservations/{reservation_id}/extend/", extend, methods=["POST"]),
    Route("/api/reservations/{reservation_id}/commit/", commit, methods=["POST"]),
]
