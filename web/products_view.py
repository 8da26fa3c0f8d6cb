"""A product as the API shows it: catalog fields from the database, live stock from Redis
(read by web/services/catalog.py)."""

from __future__ import annotations

from typing import Any

from engine import errors
from engine.models import ProductStock
from persistence.catalog import CatalogProduct
from web.money import to_decimal_string
from web.responses import iso

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
