"""Every route of the API, gathered from one module per area."""

from __future__ import annotations

from starlette.routing import BaseRoute

from web.routes import audit, auth, dashboard, docs, metrics, ops, orders, products, reservations

ROUTES: list[BaseRoute] = [
    *ops.routes,
    *metrics.routes,
    *auth.routes,
    *products.routes,
    *audit.routes,
    *reservations.routes,
    *orders.routes,
    *docs.routes,
    *dashboard.routes,
]
