"""A product as the API shows it: catalog fields from the database, live stock from Redis
(read by web/services/catalog.py), and the answer to a read of products with its `ETag`.

The ETag is weak (`W/"…"`, the body also carries the request's own id) and a digest of what
the answer says — each product's catalog fields (digested once per row) and stock levels, and a
list's cursors — so it changes whenever the stock or a catalog field does, and is the same in
every process. A read whose `If-None-Match` names it (or `*`) gets 304 with no body: `ETag`
and `X-Request-ID` alone. A row's rendered fields are kept with it (ROWS_RENDERED rows).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine import errors
from engine.models import ProductStock
from persistence.catalog import CatalogProduct
from web.money import to_decimal_string
from web.responses import iso, ok

MAX_ID = 2**63 - 1
ROWS_RENDERED = 10_000  # as many as web/catalog_cache.py keeps


@lru_cache(maxsize=ROWS_RENDERED)
def _rendered(p: CatalogProduct) -> tuple[str, str, str, str]:
    """The price and times of a row as the API writes them, and the digest of its fields."""
    price, created, updated = (
        to_decimal_string(p.price, p.currency),
        iso(p.created_at),
        iso(p.updated_at),
    )
    fields = [p.id, p.sku, p.name, p.description, price, p.currency, created, updated]
    return price, created, updated, _digest(json.dumps(fields))


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def stock_json(stock: ProductStock) -> dict[str, Any]:
    """A product's live stock as the API shows it (on the product, and in its live stream)."""
    return {
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
    }


def product_json(p: CatalogProduct, stock: ProductStock) -> dict[str, Any]:
    price, created, updated, _ = _rendered(p)
    return {
        "id": p.id,
        "sku": p.sku,
        "name": p.name,
        "description": p.description,
        "price": price,
        "currency": p.currency,
        **stock_json(stock),
        "max_per_customer": stock.limits.max_per_customer,
        "min_quantity": stock.limits.min_quantity,
        "quantity_increment": stock.limits.quantity_increment,
        "max_per_order": stock.limits.max_per_order,
        "created_at": created,
        "updated_at": updated,
    }


def product_id(raw: str) -> int:
    """The id in a path; anything else is a product that does not exist."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_ID:
        raise errors.ProductNotFound(raw[:64])
    return int(raw)


def etag(products: Iterable[tuple[CatalogProduct, ProductStock]], *cursors: str | None) -> str:
    """The tag of an answer showing `products` (and, for a list, its cursors)."""
    parts = [repr(cursors)]
    for row, stock in products:
        parts.append(_rendered(row)[3])
        if stock.limits.as_json():
            parts.append(repr(stock.limits))
        parts.extend(
            f"{lv.warehouse}|{lv.priority}|{lv.available}|{lv.reserved}" for lv in stock.levels
        )
    return f'W/"{_digest(chr(10).join(parts))}"'


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """Whether an `If-None-Match` header names `tag` (compared weakly, as HTTP says for it)."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = tag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == opaque for t in if_none_match.split(","))


def read_answer(request: Request, tag: str, data: Any, **cursors: str | None) -> Response:
    """200 with the envelope and the ETag `tag`; 304 when the client holds it already."""
    if not_modified(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers={"ETag": tag})
    response = ok(request, data, 200, **cursors)
    response.headers["ETag"] = tag
    return response
