"""The database's async path, for the API's reads: SQLAlchemy asyncio over psycopg 3's async
connections for the catalog, and one plain psycopg connection (`SerialReader`) for the account
states every new client's first request needs; on PostgreSQL only.

A read here is one statement on one pooled connection, in autocommit: no BEGIN, no ROLLBACK
when the connection goes back to the pool, and no pre-ping (a round trip per checkout).
Instead a statement that finds its connection dead (Postgres restarted) is run once more: the
error invalidated the pool's connections, and the second try opens a fresh one.

`SerialReader` is for a reader that runs one statement at a time (web/accounts.py's batches):
a statement on it costs ~120 µs of the API's CPU, against ~400 µs through the async engine (its
checkout, greenlet hop and result rows) and ~750 µs through the sync engine in a thread. It
opens its connection on first use and drops it on any error; the next statement opens another,
failing fast while PostgreSQL refuses connections.

The embedded SQLite default stays on the thread path (the sync engine through
`asyncio.to_thread`): its reads are local file reads, and an async driver would add a
dependency and a thread of its own per connection for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import Executable, Row
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from engine.settings import Settings
from persistence.db import libpq_url

POOL_SIZE = 10
MAX_OVERFLOW = 10


def async_database_engine(settings: Settings, **kwargs: Any) -> AsyncEngine | None:
    """The async engine of a PostgreSQL database; None for SQLite (see the docstring)."""
    url = make_url(settings.database_url_or_default)
    if url.get_backend_name() != "postgresql":
        return None
    url = url.set(drivername="postgresql+psycopg")
    kwargs.setdefault("pool_size", POOL_SIZE)
    kwargs.setdefault("max_overflow", MAX_OVERFLOW)
    return create_async_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,
        pool_pre_ping=False,
        **kwargs,
    )


async def fetch_all(adb: AsyncEngine, statement: Executable) -> list[Row[Any]]:
    """Every row of one read-only statement (see the docstring for the one retry)."""
    for attempt in range(2):
        try:
            async with adb.connect() as conn:
                result = await conn.execute(statement)
                return list(result.all())
        except DBAPIError as exc:
            if attempt or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


CONNECT_TIMEOUT_S = 5


class SerialReader:
    """One autocommit psycopg connection to PostgreSQL, for a reader that runs one statement at
    a time (see the module's docstring)."""

    def __init__(self, database_url: str) -> None:
        self._conninfo = libpq_url(database_url)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.statements = 0  # run so far (successfully or not)

    @classmethod
    def of(cls, settings: Settings) -> SerialReader | None:
        """The reader of a PostgreSQL database; None for SQLite."""
        url = settings.database_url_or_default
        return cls(url) if make_url(url).get_backend_name() == "postgresql" else None

    async def fetch_all(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Every row of one read-only statement (prepared once per connection). A connection
        that fails is dropped; one that had been open before is tried once more on a new one
        (PostgreSQL restarted meanwhile)."""
        for attempt in range(2):
            conn, fresh = self._conn, False
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
                self._conn, fresh = conn, True
            self.statements += 1
            try:
                cursor = await conn.execute(query, params, prepare=True)
                return await cursor.fetchall()
            except psycopg.Error:
                self._conn = None
                await conn.close()
                if fresh or attempt:
                    raise
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
