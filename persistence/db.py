"""The database engine: Postgres through psycopg 3 in production, SQLite as the embedded default."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from engine.settings import Settings


def database_engine(settings: Settings, **kwargs: Any) -> Engine:
    url = make_url(settings.database_url_or_default)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        if not settings.database_url:  # the embedded default, data/inventory.db
            make_sqlite_folder(url.database)
        db = create_engine(url, **kwargs)
        event.listen(db, "connect", _sqlite_pragmas)
        return db
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 5)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_sqlite_folder(path: str | None) -> None:
    """Create the folder of a SQLite file, if it can be: only for the embedded default and for
    `inventory migrate`, so that a DATABASE_URL naming a folder that is not there is an error
    to read (SQLite's "unable to open database file") and not a new empty database elsewhere.
    A folder that can't be made (a file in its way, no permission) is left for SQLite to report
    the same way."""
    if path and path != ":memory:" and not path.startswith("file:"):
        with contextlib.suppress(OSError):
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that knows ON CONFLICT, in the connection's dialect (Postgres or SQLite)."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def libpq_url(database_url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (`postgresql+psycopg://…`) as libpq and psycopg take it."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError("not a PostgreSQL URL")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
