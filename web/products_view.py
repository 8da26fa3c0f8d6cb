"""A product as the API shows it: catalog fields from the database, live stock from Redis
(read by web/services/catalog.py), and the answer to a read of products with its `ETag`.

The ETag is weak (`W/"…"`, the body also carries the request's own id) and a digest of what
the answer says — the `data`, and a list's cursors — so it changes whenever the stock or a
catalog field does, and is the same in every process. A read whose `If-None-Match` names it
(or `*`) gets 304 with no body: `ETag` and `X-Request-ID` alone.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine import errors
from engine.models import ProductStock
from persistence.catalog import CatalogProduct
from web.money import to_decimal_string
from web.responses import iso, ok

MAX_ID = 2**63 - 1


def product_json(p: CatalogProduct, stock: ProductStock) -> dict[str, Any]:
    return {
        "id": p.id,
        "sku": p.sku,
        "name": p.name,
        "description": p.description,
        "price": to_decimal_string(p.price, p.currency),
        "currency": p.currency,
        "total_stock": stock.total,
        "available_stock": stock.available,
        "reserved_stock": stock.reserved,
        "warehouses": [
            {
                "warehouse": level.warehouse,
                "priority": level.priority,
                "available": level.available,
                "reserved": level.reserved,
                "total": level.total,
            }
            for level in stock.levels
        ],
        "created_at": iso(p.created_at),
        "updated_at": iso(p.updated_at),
    }


def product_id(raw: str) -> int:
    """The id in a path; anything else is a product that does not exist."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_ID:
        raise errors.ProductNotFound(raw[:64])
    return int(raw)


def etag(answer: Any) -> str:
    encoded = json.dumps(answer, separators=(",", ":")).encode()
    return f'W/"{hashlib.blake2b(encoded, digest_size=12).hexdigest()}"'


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """Whether an `If-None-Match` header names `tag` (compared weakly, as HTTP says for it)."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = tag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == opaque for t in if_none_match.split(","))


def read_answer(request: Request, data: Any, **cursors: str | None) -> Response:
    """200 with the envelope and the ETag; 304 when the client holds that answer already."""
    tag = etag([data, cursors] if cursors else data)
    if not_modified(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers={"ETag": tag})
    response = ok(request, data, 200, **cursors)
    response.headers["ETag"] = tag
    return response
