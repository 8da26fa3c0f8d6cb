"""Every route of the API, gathered from one module per area."""

from __future__ import annotations

from starlette.routing import BaseRoute

from web.routes import (
    audit,
    auth,
    dashboard,
    docs,
    metrics,
    ops,
    orders,
    products,
    reservations,
    waitlist,
)

# The router tries routes in order: the hot path (reservations) first. No two areas' paths
# overlap, so the order changes nothing else.
ROUTES: list[BaseRoute] = [
    *reservations.routes,
    *ops.routes,
    *metrics.routes,
    *auth.routes,
    *products.routes,
    *waitlist.routes,
    *audit.routes,
    *orders.routes,
    *docs.routes,
    *dashboard.routes,
]
