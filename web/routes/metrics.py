"""`GET /metrics`: Prometheus text exposition (web/metrics.py says what is in it).

Open or closed by METRICS_PUBLIC; by default open on the embedded stack (it binds to
localhost) and closed once a real database is configured. What it tells is not secret but
is business data (how much sells, how fast), so a public deployment keeps it closed: then a
staff access token opens it, or METRICS_TOKEN, a static secret for the scraper (Prometheus:
`authorization: {credentials: …}`), since access tokens expire within minutes.
"""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.settings import Settings
from web.auth import require_staff
from web.metrics import Metrics, snapshot
from web.services.container import services


def _scraper(request: Request, settings: Settings) -> bool:
    """Whether the request carries METRICS_TOKEN (compared in constant time)."""
    if not settings.metrics_token:
        return False
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.metrics_token.encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


async def metrics(request: Request) -> Response:
    """The metrics of this process (of every worker, in multiprocess mode) and of Redis."""
    svc = services(request)
    if not svc.settings.metrics_open and not _scraper(request, svc.settings):
        require_staff(request)
    found: Metrics = request.app.state.metrics
    body = found.render(await snapshot(svc.engine))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]
