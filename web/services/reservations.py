"""Reservations: hold units for a while, give them back, hold them longer, or buy them."""

from __future__ import annotations

from engine.errors import ReservationNotFound
from engine.models import CallContext, Order, Reservation
from engine.settings import Settings
from persistence import queries_orders as queries
from web.auth import Principal
from web.consistency import read_page, wait_for
from web.errors import ApiError
from web.schemas.orders import ReservationQuery, ReserveIn, ttl_bounds
from web.services.container import Services
from web.services.records import Listed, owner_filter, redis_first


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


async def reserve(svc: Services, body: ReserveIn, ctx: CallContext) -> Reservation:
    """Reserve units, all lines or none."""
    return await svc.engine.reserve(
        body.line_requests(),
        ctx,
        ttl_ms=ttl_ms(svc.settings, body.ttl_seconds),
        allow_split=body.allow_split,
    )


async def list_reservations(svc: Services, who: Principal, q: ReservationQuery) -> Listed:
    """The caller's reservations (staff: all, or one user's) from the database, newest first;
    after the drain has passed `q.consistent_with` (or waited long enough)."""
    user = owner_filter(who, q.user)
    state = await wait_for(svc, q.consistent_with)
    page = await read_page(svc, queries.list_reservations(user, q.status), q.cursor, q.limit)
    return Listed(page, state)


async def get_reservation(svc: Services, reservation_id: str, ctx: CallContext) -> Reservation:
    """One reservation, fresh from Redis (from the database once Redis has let it go)."""
    return await redis_first(
        svc,
        lambda: svc.engine.get_reservation(reservation_id, ctx),
        queries.get_reservation,
        reservation_id,
        ctx,
        ReservationNotFound,
    )


async def release(svc: Services, reservation_id: str, ctx: CallContext) -> Reservation:
    """Give the units back."""
    return await svc.engine.release(reservation_id, ctx)


async def extend(
    svc: Services, reservation_id: str, ctx: CallContext, seconds: float | None
) -> Reservation:
    """Hold the units longer: expires_at = now + ttl, capped by the maximum lifetime."""
    return await svc.engine.extend(reservation_id, ctx, ttl_ms=ttl_ms(svc.settings, seconds))


async def commit(svc: Services, reservation_id: str, ctx: CallContext) -> Order:
    """Buy the reserved units: a pending order."""
    return await svc.engine.commit(reservation_id, ctx)
