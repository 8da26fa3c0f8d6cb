"""The operations table, part one: operations, tokens, the API page, products, stock,
warehouses and the audit log (web/openapi/document.py builds the document from it).

These routes build their answers as dicts, so their response schemas are written here by
hand; tests/test_schemathesis.py holds them to what the app really sends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, get_args

from engine.settings import Settings
from web.money import EXPONENTS, exponent, price_pattern
from web.openapi.conventions import REDIS_WRITE_UNAVAILABLE, REF, Schema, closed, ref
from web.openapi.document import Operation
from web.pagination import cursor_pattern
from web.schemas.auth import LoginBody, RefreshBody
from web.schemas.catalog import (
    LIMITS,
    REASON_SIGN,
    AuditQuery,
    ProductCreate,
    ProductPatch,
    ProductPut,
    ProductQuery,
    Reason,
    StockAdjust,
    StreamQuery,
    WarehouseCreate,
)

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
COUNT: Schema = {"type": "integer", "minimum": 0}
TIME: Schema = {"type": "string", "format": "date-time", "description": "ISO 8601, UTC"}
MONEY: Schema = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "examples": ["19.99"]}
PRODUCT_ID: Schema = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
LIMIT: Schema = {
    "type": ["integer", "null"],
    "minimum": 1,
    "description": "units; null: no limit (see create_product)",
}

SCHEMAS: dict[str, Schema] = {
    "Health": closed({"status": {"const": "ok"}}),
    "Ready": closed(
        {"status": {"const": "ready"}, "outbox_backlog": COUNT}, optional=["outbox_backlog"]
    ),
    "Tokens": closed(
        {
            "access": STRING,
            "refresh": STRING,
            "token_type": {"const": "Bearer"},
            "expires_in": {**COUNT, "description": "seconds the access token is valid"},
        }
    ),
    "StockLevel": closed(
        {
            "warehouse": STRING,
            "priority": INTEGER,
            "available": COUNT,
            "reserved": COUNT,
            "total": COUNT,
        }
    ),
    "Product": closed(
        {
            "id": INTEGER,
            "sku": STRING,
            "name": STRING,
            "description": STRING,
            "price": MONEY,
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "total_stock": COUNT,
            "available_stock": COUNT,
            "reserved_stock": COUNT,
            "warehouses": {"type": "array", "items": ref("StockLevel")},
            **dict.fromkeys(LIMITS, LIMIT),
            "created_at": TIME,
            "updated_at": TIME,
        }
    ),
    "DeletedProduct": closed({"id": INTEGER, "deleted_at": TIME}),
    "StockAdjustment": closed(
        {
            "adjustment": closed(
                {
                    "warehouse": STRING,
                    "quantity": INTEGER,
                    "reason": {"enum": list(get_args(Reason))},
                    "available_before": COUNT,
                    "available_after": COUNT,
                }
            ),
            "product": ref("Product"),
        }
    ),
    "Warehouse": closed({"id": STRING, "name": STRING, "priority": INTEGER, "created_at": TIME}),
    "AuditEntry": closed(
        {
            "id": INTEGER,
            "event_id": STRING,
            "at": TIME,
            "actor": STRING,
            "action": STRING,
            "object_type": STRING,
            "object_id": STRING,
            "old_value": {"description": "the object before the change (any JSON), or null"},
            "new_value": {"description": "the object after the change (any JSON), or null"},
            "request_id": STRING,
        }
    ),
}


def configured(settings: Settings) -> dict[str, Schema]:
    """The schemas that depend on the server's settings, as it is configured."""
    currency = settings.default_currency
    return {"DefaultPrice": {**_price(exponent(currency)), "description": f"in {currency}"}}


def _price(places: int) -> Schema:
    return {"type": "string", "maxLength": 20, "pattern": price_pattern(places)}


def _product_create() -> Schema:
    """ProductCreate shape by shape: a price has at most as many decimal places as its
    currency (the default one when `currency` is left out or null) and is at most 10^12 minor
    units of it; `total_stock` and `stock` are not both given."""
    full = ProductCreate.model_json_schema(ref_template=REF)
    groups: dict[int, list[str]] = {}
    for code, places in sorted(EXPONENTS.items()):
        groups.setdefault(places, []).append(code)
    other: Schema = {"type": "string", "pattern": "^[A-Z]{3}$", "not": {"enum": sorted(EXPONENTS)}}
    currencies: list[tuple[str, Schema, Schema, list[str]]] = [
        ("in the default currency", {"type": "null"}, ref("DefaultPrice"), []),
        *((f"in {', '.join(codes)}", {"enum": codes}, _price(p), ["currency"])
          for p, codes in groups.items()),
        ("in another currency", other, _price(2), ["currency"]),
    ]  # fmt: skip
    both = {"total_stock": {"type": "integer"}, "stock": {"type": "array"}}
    shapes = [
        {
            "title": title,
            "type": "object",
            "additionalProperties": False,
            "required": full["required"] + required,
            "properties": {**full["properties"], "currency": currency, "price": price},
            "not": {"required": list(both), "properties": both},
        }
        for title, currency, price, required in currencies
    ]
    return {"title": "ProductCreate", "oneOf": shapes, "$defs": full["$defs"]}


def _stock_adjust() -> Schema:
    """StockAdjust shape by shape: which way each reason moves stock (never by 0)."""
    full = StockAdjust.model_json_schema(ref_template=REF)
    quantity = full["properties"]["quantity"]
    either = [r for r in get_args(Reason) if r not in REASON_SIGN]
    ways: list[tuple[str, list[str], Schema]] = [
        ("add units", [r for r, sign in REASON_SIGN.items() if sign > 0], {"minimum": 1}),
        ("remove units", [r for r, sign in REASON_SIGN.items() if sign < 0], {"maximum": -1}),
        ("either way", either, {"not": {"const": 0}}),
    ]
    shapes = [
        {
            "title": title,
            "type": "object",
            "additionalProperties": False,
            "required": full["required"],
            "properties": {
                **full["properties"],
                "quantity": {**quantity, **bounds},
                "reason": {"enum": reasons},
            },
        }
        for title, reasons, bounds in ways
    ]
    return {"title": "StockAdjust", "oneOf": shapes}


def _cursor(*kinds: type) -> Schema:
    return {
        "type": "string",
        "pattern": cursor_pattern(kinds),
        "description": "the `next` or `previous` of a page",
    }


PRODUCT_PATH = {"id": PRODUCT_ID}
STREAM: Schema = {
    "type": "string",
    "description": "`event: stock`, `id: p<N>-<ms>-<seq>`, `data:` a JSON object: `product`, "
    "`total_stock`, `available_stock`, `reserved_stock`, `warehouses` (as on the product)",
}
STREAM_TEXT = (
    "The stream opens with each product's stock now, then sends an event whenever it "
    "changes (within about 50 ms of the change), and a comment line as a heartbeat every "
    "STREAM_HEARTBEAT seconds. Reconnecting with `Last-Event-ID` gets the current state at "
    "once unless the server knows it has not changed since. One server process serves at "
    "most STREAM_MAX_LISTENERS streams: one more is 503 `too_many_listeners` (`Retry-After`); "
    "and at most STREAM_MAX_PER_CLIENT of one client's (the user of a valid token, else the "
    "address): one more is 429 `too_many_streams` (`Retry-After`)."
)
NO_PRODUCT = {404: ("product_not_found",)}
# A price that fits some currency but not the product's own.
PRICE_CONFLICT = {409: ("sku_exists", "price_currency_mismatch")}
PRICE_CONFLICT_TEXT = (
    "409 `price_currency_mismatch`: the price has more decimal places than the product's "
    "currency, or is over 10^12 of its minor units."
)
EXAMPLE_PRODUCT: dict[str, Any] = {
    "name": "Concert ticket",
    "sku": "TICKET-001",
    "price": "49.00",
    "total_stock": 100,
}

OPERATIONS: list[Operation] = [
    Operation(
        "GET", "/healthz", "healthz", "The process is up", "operations", "open",
        ref("Health"), backend=False, rate_limited=False,
    ),
    Operation(
        "GET", "/readyz", "readyz", "Redis and the database answer; the outbox is drained",
        "operations", "open", ref("Ready"),
        rate_limited=False, errors={503: ("not_ready",)},
        description="503 `not_ready` names the failing components in `details.failing`: "
        "`redis`, `database`, `outbox` (a backlog over OUTBOX_BACKLOG_LIMIT), `drain` (a "
        "partition's drain paused: its Redis is behind the database). A staff token "
        "also gets `outbox_backlog`, and on 503 `details.problems` (component: text). Each "
        "component is checked at most once a second, whoever asks.",
    ),
    Operation(
        "GET", "/metrics", "metrics", "Prometheus metrics", "operations", "staff",
        {"type": "string"}, raw="text/plain", rate_limited=False,
        description="Request latency by route and status, reservations by outcome, the "
        "outbox backlog and lag, expiries. Open without a token when METRICS_PUBLIC is on "
        "(the default on the embedded stack); else a staff access token or METRICS_TOKEN.",
    ),
    Operation(
        "GET", "/openapi.json", "openapi", "This document", "documentation", "open",
        {"type": "object", "required": ["openapi", "info", "paths"]},
        raw="application/json", backend=False,
    ),
    Operation(
        "GET", "/api/docs/", "api_docs", "The API page (Swagger UI, served by the app)",
        "documentation", "open", {"type": "string"}, raw="text/html", backend=False,
    ),
    Operation(
        "POST", "/api/token/", "token", "Username and password: an access and a refresh token",
        "auth", "open", ref("Tokens"),
        body=LoginBody,
        body_examples={"login": {"username": "alice", "password": "correct horse"}},
        errors={
            401: ("invalid_credentials", "account_disabled"),
            429: ("too_many_attempts",),
        },
        description="Failed logins are limited per username from one client address and per "
        "client address: 429 `too_many_attempts` with `Retry-After`. Failed logins for a "
        "username from any address only slow its answers down (a few seconds at most).",
    ),
    Operation(
        "POST", "/api/token/refresh/", "token_refresh",
        "A refresh token: a new access token and a new refresh token", "auth", "open",
        ref("Tokens"),
        body=RefreshBody,
        errors={401: ("invalid_token", "token_expired", "token_revoked", "token_reused")},
        description="Refresh tokens rotate: the one sent is spent, and a spent one sent again "
        "revokes every token of its sign-in (401 `token_reused`).",
    ),
    Operation(
        "GET", "/api/products/", "list_products", "The catalog with live stock", "products",
        "open", ref("Product"),
        listing=True, query=ProductQuery, query_schemas={"cursor": _cursor(int)},
        errors={400: ("invalid_cursor",)}, conditional=True,
        description="`search` matches name or sku; `in_stock` keeps products with (or "
        "without) available units. A page may come back short with a `next` cursor.",
    ),
    Operation(
        "POST", "/api/products/", "create_product", "Create a product with its opening stock",
        "products", "staff", ref("Product"),
        status=201, body=_product_create(), body_examples={"product": EXAMPLE_PRODUCT},
        idempotent=True,
        errors={404: ("warehouse_not_found",), 409: ("sku_exists",)},
        description="Opening stock is `total_stock` (into the default warehouse) or `stock`: "
        '`[{"warehouse", "quantity"}]`, not both. Purchase limits (each null or left out for '
        "none): `max_per_customer`, the units one customer may hold in live reservations and "
        "orders not cancelled, all together; `max_per_order`, per reservation or order; "
        "`min_quantity` and `quantity_increment`, the units of one reservation or order. "
        "Reserving past a maximum is 409 `limit_exceeded`; against the minimum or the "
        "increment, 422 `invalid_quantity`.",
    ),
    Operation(
        "GET", "/api/products/{id}/stream/", "stream_product",
        "One product's live stock, as Server-Sent Events", "products", "open", STREAM,
        raw="text/event-stream", path_params=PRODUCT_PATH,
        errors={**NO_PRODUCT, 429: ("too_many_streams",), 503: ("too_many_listeners",)},
        description=STREAM_TEXT,
    ),
    Operation(
        "GET", "/api/stock/stream/", "stream_products",
        "Several products' live stock, as Server-Sent Events", "products", "open", STREAM,
        raw="text/event-stream", query=StreamQuery,
        errors={**NO_PRODUCT, 429: ("too_many_streams",), 503: ("too_many_listeners",)},
        description="`ids`: up to 100 product ids, comma-separated; each must exist (else "
        "404). " + STREAM_TEXT,
    ),
    Operation(
        "GET", "/api/products/{id}/", "get_product", "One product with live stock",
        "products", "open", ref("Product"),
        path_params=PRODUCT_PATH, errors=NO_PRODUCT, conditional=True,
    ),
    Operation(
        "PUT", "/api/products/{id}/", "put_product", "Replace the catalog fields",
        "products", "staff", ref("Product"),
        body=ProductPut, path_params=PRODUCT_PATH,
        errors={**NO_PRODUCT, **PRICE_CONFLICT, 503: REDIS_WRITE_UNAVAILABLE},
        description=f"{PRICE_CONFLICT_TEXT} A purchase limit left out is kept; null removes it.",
    ),
    Operation(
        "PATCH", "/api/products/{id}/", "patch_product", "Change some catalog fields",
        "products", "staff", ref("Product"),
        body=ProductPatch, path_params=PRODUCT_PATH,
        body_examples={"price": {"price": "39.00"}, "limit": {"max_per_customer": 2}},
        errors={**NO_PRODUCT, **PRICE_CONFLICT, 503: REDIS_WRITE_UNAVAILABLE},
        description=f"{PRICE_CONFLICT_TEXT} A purchase limit set to null is removed.",
    ),
    Operation(
        "DELETE", "/api/products/{id}/", "delete_product",
        "Delete a product (refused while units are reserved, an order is open or customers "
        "wait for it)",
        "products", "staff", ref("DeletedProduct"),
        path_params=PRODUCT_PATH,
        errors={**NO_PRODUCT, 409: ("product_in_use",), 503: REDIS_WRITE_UNAVAILABLE},
    ),
    Operation(
        "POST", "/api/products/{id}/stock/", "adjust_stock",
        "Receive or remove units, with a reason", "stock", "staff", ref("StockAdjustment"),
        body=_stock_adjust(), path_params=PRODUCT_PATH, idempotent=True,
        body_examples={"received": {"quantity": 5, "reason": "received"}},
        errors={
            404: ("product_not_found", "warehouse_not_found"),
            409: ("insufficient_stock",),
        },
        description="`received` and `returned` add units, `damaged` and `lost` remove them, "
        "`correction` goes either way. Removing more than is available is 409.",
    ),
    Operation(
        "GET", "/api/warehouses/", "list_warehouses", "Every warehouse, by priority", "stock",
        "open", ref("Warehouse"), listing=True,
    ),
    Operation(
        "POST", "/api/warehouses/", "create_warehouse", "Create a warehouse", "stock", "staff",
        ref("Warehouse"),
        status=201, body=WarehouseCreate,
        body_examples={"warehouse": {"id": "east", "name": "East", "priority": 1}},
        errors={409: ("warehouse_exists",)},
        description="A lower `priority` is drawn from first.",
    ),
    Operation(
        "GET", "/api/audit-logs/", "list_audit_logs", "The audit log, newest first", "audit",
        "staff", ref("AuditEntry"),
        listing=True, query=AuditQuery, query_schemas={"cursor": _cursor(datetime, int)},
        errors={400: ("invalid_cursor",)},
        description="One entry per change of stock, reservation or order, once the worker "
        "has recorded it. A time without an offset is UTC.",
    ),
]  # fmt: skip
