"""Alembic's environment: migrates the tables of persistence.schema.metadata.

Alembic runs this module for every command (see persistence.migrate, which configures Alembic
in code). The database comes from the config's attributes: "connection" (an open SQLAlchemy
Connection, used as it is) or "url"; without either (or with an empty url), from the
environment: DATABASE_URL, else the SQLite file in DATA_DIR (Settings.from_env()).
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from engine.settings import Settings
from persistence.db import database_engine
from persistence.migrate import MIGRATION_LOCK_KEY, compare_options, resolve_url
from persistence.schema import metadata


# Every migration must run on Postgres and SQLite alike. SQLite can't ALTER most things, so
# autogenerate writes `with op.batch_alter_table(...)`, which Alembic turns into plain ALTERs
# on Postgres and into copy-and-move on SQLite (whatever database a revision is made from).
def options(dialect: str) -> dict[str, Any]:
    return {"target_metadata": metadata, "render_as_batch": True, **compare_options(dialect)}


def database_url() -> str:
    url = context.config.attributes.get("url")
    return resolve_url(None if url is None else str(url))


def run_migrations_offline() -> None:
    """`--sql`: print the DDL for the URL's dialect instead of running it."""
    url = make_url(database_url())
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **options(url.get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_with(connection: Connection) -> None:
    context.configure(connection=connection, **options(connection.dialect.name))
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Concurrent upgrades (several workers started at once, each running `inventory
            # migrate`) queue here; a later one then finds nothing left to do. Held until the
            # transaction ends: Alembic runs every step in this one transaction on Postgres.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        run_with(connection)
        return
    db = database_engine(Settings(database_url=database_url()))
    try:
        with db.connect() as conn:
            run_with(conn)
    finally:
        db.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
