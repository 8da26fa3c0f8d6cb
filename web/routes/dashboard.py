"""The operations page: `GET /dashboard` (a page and its two files, open: they hold no data)
and `GET /api/ops/dashboard/` (staff), the JSON the page polls every two seconds.

The page is plain HTML, CSS and JavaScript from web/static, served by this app: no CDN, no
font or script from another host, no inline script (a strict Content-Security-Policy holds).
A staff user signs in on it with username and password (`POST /api/token/`); the token stays
in the tab's sessionStorage. web/dashboard/data.py says where each number comes from.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from web.auth import require_staff
from web.dashboard import data as dashboard_data
from web.responses import ok
from web.services.container import services

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE = "/dashboard"
FILES = "/dashboard/static/"
# Everything from this app; nothing inline, no frames, no forms posted elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str, media_type: str) -> Response:
    return FileResponse(STATIC / name, media_type=media_type, headers=PAGE_HEADERS)


async def page(request: Request) -> Response:
    """The page: a sign-in form, then the panels."""
    return _file("dashboard.html", "text/html; charset=utf-8")


async def script(request: Request) -> Response:
    return _file("dashboard.js", "text/javascript; charset=utf-8")


async def stylesheet(request: Request) -> Response:
    return _file("dashboard.css", "text/css; charset=utf-8")


async def ops_dashboard(request: Request) -> Response:
    """Staff: every number of the page, read now."""
    require_staff(request)
    svc = services(request)
    data = await dashboard_data.dashboard(
        request.app, svc.engine, svc.db, svc.settings.queue_url, svc.settings.partitions
    )
    response = ok(request, data)
    response.headers["Cache-Control"] = "no-store"
    return response


routes: list[BaseRoute] = [
    Route(PAGE, page, methods=["GET"]),
    Route(FILES + "dashboard.js", script, methods=["GET"]),
    Route(FILES + "dashboard.css", stylesheet, methods=["GET"]),
    Route("/api/ops/dashboard/", ops_dashboard, methods=["GET"]),
]
