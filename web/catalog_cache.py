"""The catalog rows one API process keeps, so that a product read asks the database nothing.

Catalog fields (name, sku, price, description, times) change rarely and only through the
catalog writes of web/services/products.py, each of which replaces the catalog's version in
Redis (engine `new_catalog_version`) once the database has the change. A read gets the version
in the same Redis round trip as the live stock (engine `catalog_stocks`): rows cached under
another version are dropped, all at once (a write is rare; a sale's reads are many), and read
again from the database. So a change made through the API is seen by the first read that starts
after the write answered, in every process. Stock is never cached.

The one bound besides: an entry is trusted for at most `max_age` seconds (MAX_AGE_S). That
covers what changes the database without a new version — a catalog write whose Redis step
failed (Redis down after the database committed), an edit by hand in the database.

Bounded: at most `size` rows and `size // 10` scans (a page of the list's candidates); the
oldest entry goes first. The reads that miss one entry at the same time (a sale's first reads,
an entry past its age) share one database read (`once`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from persistence.catalog import CatalogProduct

MAX_AGE_S = 5.0
SIZE = 10_000

ScanKey = tuple[Hashable, ...]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")
# Not a version (those are hex tokens, or None while Redis has none): the cache before a read.
UNSEEN = "unseen"


class CatalogCache:
    def __init__(
        self,
        size: int = SIZE,
        max_age: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.max_age = max_age
        self.clock = clock
        # The catalog version the entries were read under.
        self.version: str | None = UNSEEN
        self._rows: dict[int, tuple[float, CatalogProduct]] = {}
        self._scans: dict[ScanKey, tuple[float, list[CatalogProduct]]] = {}
        self._loading: dict[tuple[Hashable, str | None], asyncio.Future[Any]] = {}

    def current(self, version: str | None) -> bool:
        """Whether `version`, just read from Redis, is the one the entries belong to. If not,
        they are dropped and the cache belongs to `version` from now on."""
        if version == self.version:
            return True
        self.clear()
        self.version = version
        return False

    def clear(self) -> None:
        self._rows.clear()
        self._scans.clear()

    def row(self, product_id: int) -> CatalogProduct | None:
        return self._fresh(self._rows, product_id)

    def scan(self, key: ScanKey) -> list[CatalogProduct] | None:
        return self._fresh(self._scans, key)

    async def once(self, key: Hashable, version: str | None, load: Callable[[], Awaitable[T]]) -> T:
        """`load()`, or the answer of the same load under way for `key` and `version`."""
        flight = (key, version)
        pending = self._loading.get(flight)
        if pending is None:
            pending = asyncio.ensure_future(load())
            self._loading[flight] = pending
            pending.add_done_callback(lambda done: self._landed(flight, done))
        # shielded: a caller that goes away does not cancel the others' read
        found: T = await asyncio.shield(pending)
        return found

    def _landed(self, flight: tuple[Hashable, str | None], done: asyncio.Future[Any]) -> None:
        self._loading.pop(flight, None)
        if not done.cancelled():
            done.exception()  # retrieved: its callers may all have gone

    def keep_row(self, version: str | None, row: CatalogProduct) -> None:
        """Keep `row`, read from the database after `version` was read from Redis."""
        if version == self.version:
            self._put(self._rows, row.id, row, self.size)

    def keep_scan(self, version: str | None, key: ScanKey, rows: list[CatalogProduct]) -> None:
        """Keep a scan's rows (and each row), read from the database after `version` was."""
        if version == self.version:
            self._put(self._scans, key, rows, max(1, self.size // 10))
            for row in rows:
                self._put(self._rows, row.id, row, self.size)

    def _fresh(self, entries: dict[K, tuple[float, V]], key: K) -> V | None:
        found = entries.get(key)
        if found is None:
            return None
        if self.clock() - found[0] > self.max_age:
            del entries[key]
            return None
        return found[1]

    def _put(self, entries: dict[K, tuple[float, V]], key: K, value: V, size: int) -> None:
        entries.pop(key, None)
        while len(entries) >= size:
            del entries[next(iter(entries))]
        entries[key] = (self.clock(), value)
