"""Every route of the API, gathered from one module per area."""

from __future__ import annotations

from starlette.routing import BaseRoute

from web.routes import auth, ops

ROUTES: list[BaseRoute] = [
    *ops.routes,
    *auth.routes,
]
