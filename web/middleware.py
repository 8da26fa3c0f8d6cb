"""The API's pure ASGI middleware, one layer: the request id, the access log, the request's
timing and count, the rate limit, the body-size limit and the account check (ApiMiddleware);
and the matched route's template, which the access log and the metrics label requests with.

The request id is the client's `X-Request-ID` when it is a sane token, else a new UUID; it is
put in `scope["state"]` (so `request.state.request_id`), echoed in the response header, and
carried into every outbox event the request causes. Anything an endpoint fails to handle
becomes a 500 envelope here, never an HTML page.

The routes with a fixed path (`POST /api/reservations/`, the hot path) are called from here
straight away (`direct_routes`): the route the router would pick, the same endpoint, its
errors answered by the app's own exception handlers, as Starlette's exception middleware and
router would, without their layers and without trying the routes one by one.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.keys import uuid4_str
from web.errors import ApiError
from web.responses import error

log = logging.getLogger("inventory.access")
errors_log = logging.getLogger("inventory.errors")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED = "<unmatched>"


class Observe(Protocol):
    """Counts a finished request (web/metrics.py's `Metrics.observe`)."""

    def __call__(self, scope: Scope, status: int, seconds: float, *, replayed: bool) -> None: ...


# The checks made before the endpoint, given the request's bearer token (None: no token or
# another scheme): they raise ApiError to refuse (the rate limit) or leave what they found in
# the request's state (the account check).
Check = Callable[[Scope, str | None], Awaitable[None]]

# An exception handler of the app (web/app.py): the error's response.
Handler = Callable[[Request, Exception], Awaitable[Response]]


class ApiMiddleware:
    """The API's one middleware layer, pure ASGI, one pass over the headers and one wrapper of
    `send` per request. In order: the request id (echoed in `X-Request-ID`) and the access
    log; the timing and counting of the request (`observe`); the rate limit (`limit`, not for
    the EXEMPT paths); the body-size limit (413, by header or while streaming); the account
    check (`look_up`). A refusal before the endpoint is answered here, in the envelope. A
    route of `direct_routes` is called from here, its errors answered by `handlers` (the
    app's exception handlers); every other request goes on to the app's router."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        observe: Observe,
        look_up: Check,
        max_bytes: int,
        limit: Check | None = None,
        exempt: frozenset[str] = frozenset(),
        handlers: Mapping[Any, Handler] | None = None,
    ) -> None:
        self.app = app
        self.observe = observe
        self.look_up = look_up
        self.max_bytes = max_bytes
        self.limit = limit
        self.exempt = exempt
        self.handlers = dict(handlers or {})
        # (method, path) -> route, from the app's routes as the first request finds them
        self._direct: dict[tuple[str, str], Route] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = declared = authorization = twice = None
        keyed = False
        for key, value in scope["headers"]:  # the first of each, as Starlette reads them
            if key == b"x-request-id" and given is None:
                given = value.decode("latin-1")
            elif key == b"content-length" and declared is None:
                declared = value
            elif key == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
                else:
                    twice = "Authorization"
            elif key == b"idempotency-key":
                if keyed:
                    twice = "Idempotency-Key"
                keyed = True
        path = scope["path"]
        if path.startswith("/api/") and not path.endswith("/") and not path.startswith(DOCS):
            # Every API path ends with '/': one without it is the same path. (Starlette's
            # router would answer a bare 307 to a URL built from the client's Host header.)
            # The API page's files (DOCS) are files.
            scope["path"] = path + "/"
            if scope.get("raw_path"):
                scope["raw_path"] = scope["raw_path"] + b"/"
        rid = given if given and _REQUEST_ID.fullmatch(given) else uuid4_str()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())
        started = time.perf_counter()
        status = 500
        replayed = False
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, replayed, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = message.get("headers", [])
                replayed = any(
                    k.lower() == b"idempotent-replayed" and v == b"true" for k, v in headers
                )
                message = {**message, "headers": [*headers, rid_header]}
            await send(message)

        try:
            token = _bearer(authorization)
            refusal = None
            try:
                if self.limit is not None and scope["path"] not in self.exempt:
                    await self.limit(scope, token)
                if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                    raise ApiError(413, "payload_too_large", self._too_large())
                if twice is not None:  # which one counts would be a guess: none does
                    raise ApiError(
                        400,
                        "invalid_input",
                        f"the {twice} header may be given once",
                        {"field": twice},
                    )
            except ApiError as exc:
                refusal = exc
            if refusal is not None:
                state["error_code"] = refusal.code
                e = refusal
                response = error(rid, e.status, e.code, e.message, e.details, e.headers)
                await response(scope, receive, send_with_id)
                return
            if token is not None:
                await self.look_up(scope, token)
            # A declared length is the body's length (the server frames the body by it), and
            # it is within the limit by now: only a body without one is counted as it comes.
            framed = declared is not None and declared.isdigit()
            body = receive if framed else self._limited(receive)
            route = self._route(scope)
            if route is None:
                await self.app(scope, body, send_with_id)
            else:
                await self._call(route, scope, body, send_with_id)
        except Exception:
            state.setdefault("error_code", "internal_error")
            status = 500
            errors_log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if response_started:
                raise
            response = error(rid, 500, "internal_error", "something went wrong on our side")
            await response(scope, receive, send_with_id)
        finally:
            self.observe(scope, status, time.perf_counter() - started, replayed=replayed)
            if log.isEnabledFor(logging.INFO):  # `serve --no-access-log`: not even built
                _log_access(scope, rid, status, started)

    async def _call(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        """Call a route of `direct_routes` as the router and Starlette's exception middleware
        would: the same scope, endpoint and request; an error the app handles answered by its
        handler (anything else goes on up, to be the 500)."""
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = dict(scope.get("path_params", {}))
        scope.setdefault("router", scope["app"].router)
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            handler = _handler(self.handlers, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
            exc.__traceback__ = None
        await response(scope, receive, send)

    def _route(self, scope: Scope) -> Route | None:
        """The route to call from here, if the request's path and method have one."""
        if self._direct is None:
            app = scope.get("app")
            self._direct = direct_routes(getattr(app, "routes", None) or [])
        if scope.get("root_path") or not self._direct:
            return None
        return self._direct.get((scope["method"], scope["path"]))

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise ApiError(413, "payload_too_large", self._too_large())
            return message

        return limited

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"


def _handler(handlers: Mapping[Any, Handler], exc: Exception) -> Handler | None:
    """The handler of `exc`'s class or its nearest base, as Starlette looks it up."""
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


def direct_routes(routes: Sequence[BaseRoute]) -> dict[tuple[str, str], Route]:
    """The routes ApiMiddleware calls itself, by (method, path): an async function endpoint
    (no middleware of its own) at a path without parameters, for each method that the router,
    trying `routes` in order, would give to it."""
    found: dict[tuple[str, str], Route] = {}
    for route in routes:
        if not (
            isinstance(route, Route)
            # Starlette's wrapper of a function endpoint, nothing around it
            and getattr(route.app, "__qualname__", "").startswith("request_response.")
            and inspect.iscoroutinefunction(route.endpoint)
            and not route.param_convertors
            and route.methods
        ):
            continue
        for method in sorted(route.methods):
            probe: Scope = {"type": "http", "method": method, "path": route.path}
            probe.update(root_path="", headers=[])
            first = next((r for r in routes if r.matches(probe)[0] is Match.FULL), None)
            if first is route:
                found[method, route.path] = route
    return found


def _bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (None for none, another scheme)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


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


def header(request: Request, name: bytes) -> str | None:
    """The first value of the request's header `name` (lower case), as `request.headers.get`
    gives it, read off the scope's list without building Starlette's Headers (the hot path
    reads three)."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


DOCS = "/api/docs/"  # the API page and its files (web/routes/docs.py)


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
