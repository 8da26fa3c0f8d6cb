"""Operations: liveness and readiness."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from web.auth import authenticate
from web.errors import ApiError
from web.readiness import Readiness
from web.responses import ok
from web.services import ops
from web.services.container import services


async def healthz(request: Request) -> Response:
    """The process is up."""
    return ok(request, {"status": "ok"})


def _staff(request: Request) -> bool:
    """Whether a valid staff token came along. Any other token counts as none: a probe's
    answer is about the service, not about the caller's token."""
    try:
        principal = authenticate(request)
    except ApiError:
        return False
    return principal is not None and principal.staff


async def readyz(request: Request) -> Response:
    """Ready, or 503 naming the failing components (web/readiness.py); staff also get each
    problem's text and the figures (the outbox backlog)."""
    readiness: Readiness = request.app.state.readiness
    report = await ops.readiness_report(services(request), readiness)
    staff = _staff(request)
    if not report.failing:
        return ok(request, {"status": "ready", **(report.facts if staff else {})})
    failing = report.failing
    details: dict[str, Any] = {"failing": failing}
    if staff:
        details.update(problems=report.problems, **report.facts)
    raise ApiError(
        503, "not_ready", f"not ready: {', '.join(failing)}", details, {"Retry-After": "5"}
    )


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
