"""The operations table, part one: operations, tokens, the API page, products, stock,
warehouses and the audit log (web/openapi.py builds the document from it).

These routes build their answers as dicts, so their response schemas are written here by
hand; tests/test_schemathesis.py holds them to what the app really sends.
"""

from __future__ import annotations

from typing import Any, get_args

from web.openapi import Operation
from web.openapi_conventions import Schema, closed, ref
from web.routes.auth import LoginBody, RefreshBody
from web.schemas_catalog import (
    AuditQuery,
    ProductCreate,
    ProductPatch,
    ProductPut,
    ProductQuery,
    Reason,
    StockAdjust,
    WarehouseCreate,
)

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
COUNT: Schema = {"type": "integer", "minimum": 0}
TIME: Schema = {"type": "string", "format": "date-time", "description": "ISO 8601, UTC"}
MONEY: Schema = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "examples": ["19.99"]}
PRODUCT_ID: Schema = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}

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

PRODUCT_PATH = {"id": PRODUCT_ID}
NO_PRODUCT = {404: ("product_not_found",)}
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
        "`redis`, `database`, `outbox` (a backlog over OUTBOX_BACKLOG_LIMIT). A staff token "
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
        listing=True, query=ProductQuery,
        errors={400: ("invalid_cursor",)},
        description="`search` matches name or sku; `in_stock` keeps products with (or "
        "without) available units. A page may come back short with a `next` cursor.",
    ),
    Operation(
        "POST", "/api/products/", "create_product", "Create a product with its opening stock",
        "products", "staff", ref("Product"),
        status=201, body=ProductCreate, body_examples={"product": EXAMPLE_PRODUCT},
        idempotent=True,
        errors={404: ("warehouse_not_found",), 409: ("sku_exists",)},
        description="Opening stock is `total_stock` (into the default warehouse) or `stock`: "
        '`[{"warehouse", "quantity"}]`, not both.',
    ),
    Operation(
        "GET", "/api/products/{id}/", "get_product", "One product with live stock",
        "products", "open", ref("Product"),
        path_params=PRODUCT_PATH, errors=NO_PRODUCT,
    ),
    Operation(
        "PUT", "/api/products/{id}/", "put_product", "Replace the catalog fields",
        "products", "staff", ref("Product"),
        body=ProductPut, path_params=PRODUCT_PATH,
        errors={**NO_PRODUCT, 409: ("sku_exists",), 503: ("redis_behind",)},
    ),
    Operation(
        "PATCH", "/api/products/{id}/", "patch_product", "Change some catalog fields",
        "products", "staff", ref("Product"),
        body=ProductPatch, path_params=PRODUCT_PATH, body_examples={"price": {"price": "39.00"}},
        errors={**NO_PRODUCT, 409: ("sku_exists",), 503: ("redis_behind",)},
    ),
    Operation(
        "DELETE", "/api/products/{id}/", "delete_product",
        "Delete a product (refused while units are reserved or an order is open)",
        "products", "staff", ref("DeletedProduct"),
        path_params=PRODUCT_PATH,
        errors={**NO_PRODUCT, 409: ("product_in_use",), 503: ("redis_behind",)},
    ),
    Operation(
        "POST", "/api/products/{id}/stock/", "adjust_stock",
        "Receive or remove units, with a reason", "stock", "staff", ref("StockAdjustment"),
        body=StockAdjust, path_params=PRODUCT_PATH, idempotent=True,
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
        listing=True, query=AuditQuery, errors={400: ("invalid_cursor",)},
        description="One entry per change of stock, reservation or order, once the worker "
        "has recorded it. A time without an offset is UTC.",
    ),
]  # fmt: skip
