"""Pure ASGI middleware: the request id, the access log, the body-size limit; and the matched
route's template, which the access log and the metrics label requests with.

The request id is the client's `X-Request-ID` when it is a sane token, else a new UUID; it is
put in `scope["state"]` (so `request.state.request_id`), echoed in the response header, and
carried into every outbox event the request causes. Anything an endpoint fails to handle
becomes a 500 envelope here, never an HTML page.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.keys import uuid4_str
from web.errors import ApiError
from web.responses import error

log = logging.getLogger("inventory.access")
errors_log = logging.getLogger("inventory.errors")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED = "<unmatched>"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _REQUEST_ID.fullmatch(given) else uuid4_str()
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            errors_log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if response_started:
                raise
            response = error(rid, 500, "internal_error", "something went wrong on our side")
            await response(scope, receive, send_with_id)
        finally:
            if log.isEnabledFor(logging.INFO):  # `serve --no-access-log`: not even built
                _log_access(scope, rid, status, started)


def _log_access(scope: Scope, rid: str, status: int, started: float) -> None:
    state = scope.get("state", {})
    log.info(
        json.dumps(
            {
                "request_id": rid,
                "method": scope["method"],
                "path": scope["path"],
                "route": route_template(scope),
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 2),
                "user": state.get("user_id", ""),
            },
            separators=(",", ":"),
        )
    )


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            state = scope_state(scope)
            state["error_code"] = "payload_too_large"
            response = error(state.get("request_id", ""), 413, "payload_too_large", self._message())
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise ApiError(413, "payload_too_large", self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"


def scope_state(scope: Scope) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def _match(scope: Scope) -> BaseRoute | None:
    """The route the app's router would pick (a full match first, else a partial one)."""
    routes: list[BaseRoute] = getattr(scope.get("app"), "routes", None) or []
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


def allowed_methods(scope: Scope) -> list[str]:
    """Every method that some route takes at the request's path (HEAD with each GET)."""
    routes: list[BaseRoute] = getattr(scope.get("app"), "routes", None) or []
    methods: set[str] = set()
    for route in routes:
        if route.matches(scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def route_template(scope: Scope) -> str:
    """The path template of the route that took the request (`/api/orders/{order_id}/`), never
    the raw path: label values stay few whatever paths clients send. Call it once the app has
    answered: the router leaves its route in the scope. A request stopped before routing (the
    rate limit, the body limit) is matched here; one that matches nothing is "<unmatched>"."""
    state = scope_state(scope)
    known = state.get("route")
    if isinstance(known, str) and known:
        return known
    route = scope.get("route") or _match(scope)
    template = getattr(route, "path_format", None)
    state["route"] = template if isinstance(template, str) else UNMATCHED
    return str(state["route"])
