"""The database's async path, for the API's catalog reads: SQLAlchemy asyncio over psycopg 3's
async connections, on PostgreSQL only.

A read here is one statement on one pooled connection, in autocommit: no BEGIN, no ROLLBACK
when the connection goes back to the pool, and no pre-ping (a round trip per checkout).
Instead a statement that finds its connection dead (Postgres restarted) is run once more: the
error invalidated the pool's connections, and the second try opens a fresh one.

The embedded SQLite default stays on the thread path (the sync engine through
`asyncio.to_thread`): its reads are local file reads, and an async driver would add a
dependency and a thread of its own per connection for nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Executable, Row
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from engine.settings import Settings

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
