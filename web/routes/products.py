"""Products: the catalog (database) joined with live stock (Redis); staff create, change and
delete them (web/services/products.py: the two-phase create and its compensation). Stock
adjustments and warehouses are in web/routes/stock.py.
"""

from __future__ import annotations

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from web import live_stock
from web.auth import authenticate, require_staff
from web.bodies import parse_body, parse_query
from web.consistency import REPLAY_HEADER
from web.errors import ApiError
from web.live_stock import TooManyListeners, TooManyStreams
from web.products_view import etag, product_id, product_json, read_answer
from web.responses import iso, ok
from web.routes import stock
from web.schemas.catalog import ProductCreate, ProductPatch, ProductPut, ProductQuery, StreamQuery
from web.services import catalog, products
from web.services.container import services


async def list_products(request: Request) -> Response:
    """The catalog with live stock; `search`, `in_stock`, cursor pagination. Open to all.
    ETag / If-None-Match (304)."""
    query = parse_query(request, ProductQuery)
    page = await catalog.page_products(services(request), query)
    tag = etag(page.items, page.next, page.previous)
    items = [product_json(row, live) for row, live in page.items]
    return read_answer(request, tag, items, next=page.next, previous=page.previous)


async def get_product(request: Request) -> Response:
    """One product with live stock. Open to all. ETag / If-None-Match (304)."""
    pid = product_id(request.path_params["id"])
    row, live = await catalog.live_product(services(request), pid)
    return read_answer(request, etag([(row, live)]), product_json(row, live))


async def stream_product(request: Request) -> Response:
    """One product's live stock as Server-Sent Events. Open to all."""
    pid = product_id(request.path_params["id"])
    return await _stream(request, [pid])


async def stream_products(request: Request) -> Response:
    """Several products' live stock as Server-Sent Events (`ids=1,2,3`). Open to all."""
    query = parse_query(request, StreamQuery)
    return await _stream(request, query.product_ids())


def _stream_client(request: Request) -> str:
    """Whose stream: the user of a valid access token, else the connection's address (the
    rate limiter's client, web/ratelimit.py; behind a proxy, uvicorn's --proxy-headers). A
    token that does not verify counts for the address, as for the rate limit."""
    try:
        principal = authenticate(request)
    except ApiError:
        principal = None
    if principal is not None:
        return f"user:{principal.user_id}"
    client = request.client
    return f"ip:{client.host if client else 'unknown'}"


async def _stream(request: Request, pids: list[int]) -> Response:
    svc = services(request)
    for pid in pids:  # each in the catalog, not deleted (404 before the stream starts)
        await catalog.live_product(svc, pid)
    feed = svc.feed
    if feed is None:  # (an app without its lifespan)
        raise ApiError(503, "service_unavailable", "live stock is not running")
    try:
        listener = await feed.subscribe((str(pid) for pid in pids), _stream_client(request))
    except TooManyStreams:
        raise ApiError(
            429,
            "too_many_streams",
            "this client has as many live streams open as it may; close one, or follow "
            "several products in one stream (ids=1,2,3)",
            {"limit": feed.max_per_client},
            {"Retry-After": "5"},
        ) from None
    except TooManyListeners:
        raise ApiError(
            503,
            "too_many_listeners",
            "this server follows as many live streams as it may; try again shortly",
            {"limit": feed.max_listeners},
            {"Retry-After": "5"},
        ) from None
    try:  # the state now, read after subscribing: no change falls in between
        first = await feed.stocks(str(pid) for pid in pids)
    except BaseException:
        feed.unsubscribe(listener)
        raise
    last = request.headers.get("last-event-id")
    return EventSourceResponse(
        live_stock.stream(feed, listener, first, last),
        ping=svc.settings.stream_heartbeat_ms / 1000,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        send_timeout=30,
    )


async def create_product(request: Request) -> Response:
    """Staff: a catalog row plus the product in the engine, with its opening stock."""
    principal = require_staff(request)
    body = await parse_body(request, ProductCreate)
    made = await products.create_product(services(request), body, principal.context(request))
    response = ok(request, product_json(made.row, made.live), 201)
    if made.replayed:  # the first create's answer, with the product as it is now
        response.headers[REPLAY_HEADER] = "true"
    return response


async def _update(request: Request, model: type[ProductPut] | type[ProductPatch]) -> Response:
    principal = require_staff(request)
    pid = product_id(request.path_params["id"])
    body = await parse_body(request, model)
    changed = await products.update_product(
        services(request), pid, body, principal.context(request)
    )
    return ok(request, product_json(changed.row, changed.live))


async def put_product(request: Request) -> Response:
    """Staff: replace name, sku, price and description. A new price reaches the engine."""
    return await _update(request, ProductPut)


async def patch_product(request: Request) -> Response:
    """Staff: change any of name, sku, price and description."""
    return await _update(request, ProductPatch)


async def delete_product(request: Request) -> Response:
    """Staff: soft-delete, refused while units are reserved or an order is open."""
    staff = require_staff(request)
    pid = product_id(request.path_params["id"])
    deleted, at = await products.delete_product(services(request), pid, staff.context(request))
    return ok(request, {"id": deleted, "deleted_at": iso(at)})


routes: list[BaseRoute] = [
    Route("/api/products/", list_products, methods=["GET"]),
    Route("/api/stock/stream/", stream_products, methods=["GET"]),
    Route("/api/products/{id}/stream/", stream_product, methods=["GET"]),
    Route("/api/products/", create_product, methods=["POST"]),
    Route("/api/products/{id}/", get_product, methods=["GET"]),
    Route("/api/products/{id}/", put_product, methods=["PUT"]),
    Route("/api/products/{id}/", patch_product, methods=["PATCH"]),
    Route("/api/products/{id}/", delete_product, methods=["DELETE"]),
    *stock.routes,
]
