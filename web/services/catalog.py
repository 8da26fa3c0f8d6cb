"""Reading products: one product (catalog fields from the cache or the database, live stock
from Redis), and paging the catalog when Redis decides which rows belong on a page.

Each read asks Redis once for the stock and the catalog's version together (engine
`catalog_stocks`); the catalog rows come from this process's cache (web/catalog_cache.py) while
the version stays, else from the database (its async path on PostgreSQL). Stock is never cached.

A catalog row that Redis does not know (a create whose engine step has not happened yet) is
not a product to readers: it is left out of lists and is a 404 alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine import errors
from engine.models import ProductStock
from persistence import catalog
from persistence.catalog import CatalogProduct
from web.pagination import decode_cursor, encode_cursor
from web.schemas.catalog import ProductQuery
from web.services.container import Services

# How many database chunks one page may scan while Redis filters rows out (in_stock): a page
# may come back short, with a `next` cursor that goes on where the scan stopped.
MAX_CHUNKS = 10


async def live_product(svc: Services, pid: int) -> tuple[CatalogProduct, ProductStock]:
    """A product that is in the catalog, not deleted, and known to Redis; else 404."""
    engine_id = str(pid)  # CatalogProduct.engine_id
    version, stocks = await svc.engine.catalog_stocks([engine_id])
    stock = stocks.get(engine_id)
    if stock is None:
        raise errors.ProductNotFound(engine_id)
    cache = svc.catalog
    row = cache.row(pid) if cache.current(version) else None
    if row is None:
        row = await cache.once(("row", pid), version, lambda: _read_row(svc, version, pid))
        if row is None:
            raise errors.ProductNotFound(engine_id)
    return row, stock


async def _read_row(svc: Services, version: str | None, pid: int) -> CatalogProduct | None:
    row = await catalog.read_product(svc.db, svc.adb, pid)
    if row is not None:
        svc.catalog.keep_row(version, row)
    return row


async def _chunk(
    svc: Services, *, search: str | None, after: int | None, before: int | None, limit: int
) -> tuple[list[CatalogProduct], dict[str, ProductStock]]:
    """One chunk of the scan and its live stock: one Redis call when the chunk's rows are
    cached under the catalog's version, else a read of the version, the database's rows, and
    their stock."""
    cache = svc.catalog
    key = (search, after, before, limit)
    rows = cache.scan(key)
    if rows is not None:
        version, stocks = await svc.engine.catalog_stocks([r.engine_id for r in rows])
        if cache.current(version):
            return rows, stocks
    else:
        version, _ = await svc.engine.catalog_stocks([])
        cache.current(version)
    # The version was read before the rows: a write after that read changes it again.
    rows = await cache.once(("scan", *key), version, lambda: _read_scan(svc, version, key))
    return rows, await svc.engine.get_stocks([r.engine_id for r in rows])


async def _read_scan(
    svc: Services, version: str | None, key: tuple[str | None, int | None, int | None, int]
) -> list[CatalogProduct]:
    search, after, before, limit = key
    rows = await catalog.read_products(
        svc.db, svc.adb, search=search, after=after, before=before, limit=limit
    )
    svc.catalog.keep_scan(version, key, rows)
    return rows


@dataclass
class ProductPage:
    items: list[tuple[CatalogProduct, ProductStock]]
    next: str | None
    previous: str | None


def _boundary(cursor: str) -> tuple[int, bool]:
    (value,), direction = decode_cursor(cursor, [int])
    return value, direction == "p"


async def page_products(svc: Services, query: ProductQuery) -> ProductPage:
    """One page by id (keyset). The database (or the cache) gives chunks of candidates; Redis
    gives their stock (one call per chunk when the chunk is cached) and, with `in_stock`,
    decides which of them stay. The scan goes on until the page is full, the catalog ends, or
    MAX_CHUNKS were read."""
    limit = query.limit
    boundary, backwards = _boundary(query.cursor) if query.cursor is not None else (None, False)
    found: list[tuple[CatalogProduct, ProductStock]] = []
    position = boundary
    exhausted = False
    for _ in range(MAX_CHUNKS):
        rows, stocks = await _chunk(
            svc,
            search=query.search,
            after=None if backwards else position,
            before=position if backwards else None,
            limit=limit + 1,
        )
        for row in rows:
            position = row.id
            stock = stocks.get(row.engine_id)
            if stock is None:
                continue
            if query.in_stock is not None and (stock.available > 0) != query.in_stock:
                continue
            found.append((row, stock))
            if len(found) > limit:
                break
        if len(found) > limit:
            break
        if len(rows) <= limit:
            exhausted = True
            break
    page = found[:limit]
    # Where the scan may go on: after the page's last item when there are more, after the
    # last row looked at when the scan stopped at its bound, nowhere when the catalog ended.
    go_on = page[-1][0].id if len(found) > limit else (None if exhausted else position)
    if backwards:
        page.reverse()
    items = page
    ahead = encode_cursor([go_on], "p" if backwards else "n") if go_on is not None else None
    behind: str | None = None
    if boundary is not None:
        if backwards:
            behind = encode_cursor([page[-1][0].id if page else boundary - 1], "n")
        else:
            behind = encode_cursor([page[0][0].id if page else boundary + 1], "p")
    if backwards:
        return ProductPage(items, next=behind, previous=ahead)
    return ProductPage(items, next=ahead, previous=behind)
