"""Alembic, configured in code: bring a database to the newest schema and say where it stands.

The migrations live in persistence/migrations (shipped as package data), so these functions
work from any working directory and from an installed wheel; there is no alembic.ini. The
same revisions serve Postgres and SQLite.

    upgrade(url)            # what `inventory migrate` runs; idempotent
    upgrade_sql(url)        # the DDL it would run, as text (offline: connects to nothing)
    current(url)            # the revision a database is at (None: never migrated)
    diff(url)               # how the database differs from schema.py ([]: not at all)
    head()                  # the newest revision the code knows
    downgrade(url, "base")  # back to an empty database (tests, development)
    revision("add x")       # development: autogenerate the next revision from schema.py

`url` is a SQLAlchemy URL (`postgresql://` is taken as psycopg 3); "" means the one the
environment gives, like everywhere else: DATABASE_URL, else the SQLite file in DATA_DIR.

Alembic keeps its `context` and `op` as module-level proxies, so one process runs one
migration command at a time (never from two threads at once). Concurrent `upgrade` calls
from several processes are safe on Postgres: env.py serialises them with an advisory lock.
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Identity
from sqlalchemy.engine import make_url

from engine.settings import Settings
from persistence.db import database_engine, make_sqlite_folder
from persistence.schema import metadata

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# The Postgres advisory lock (per database) that env.py takes before migrating.
MIGRATION_LOCK_KEY = 0x1BE_0001


def _sqlite_compare_server_default(
    context: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    """SQLite has no identity columns (an INTEGER PRIMARY KEY is the rowid): the Identity() of
    the ids is not a server default missing there. None: compare as usual."""
    if isinstance(metadata_default, Identity) and inspected_default is None:
        return False
    return None


def compare_options(dialect: str) -> dict[str, Any]:
    """How autogenerate (env.py) and diff() compare a database of this dialect with schema.py.
    (The SQLite hook is not used on Postgres: Alembic 1.20 calls a user hook with reflected
    Identity defaults and fails there, 'Identity' object has no attribute 'arg'.)"""
    return {
        "compare_type": True,
        "compare_server_default": _sqlite_compare_server_default if dialect == "sqlite" else True,
    }


def resolve_url(url: str | None) -> str:
    """The database meant by `url`: itself, or when empty what the environment says."""
    return url or Settings.from_env().database_url_or_default


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for this project; `url` goes to env.py through the attributes
    (None or "": env.py asks the environment, see resolve_url)."""
    cfg = Config()
    # set_main_option interpolates '%' (ConfigParser); a literal one must be doubled.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    # 0001_initial.py, 0002_add_x.py, ...: the revision ids are sequential, see revision().
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if url is not None:
        cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply every migration up to `revision` (default: the newest). Does nothing when the
    database is already there. Creates the SQLite file (and its folder) if missing."""
    sa_url = make_url(resolve_url(url))
    if sa_url.get_backend_name() == "sqlite":
        make_sqlite_folder(sa_url.database)
    command.upgrade(alembic_config(url), revision)


def upgrade_sql(url: str, revision: str = "head") -> str:
    """The SQL that upgrade() would run on a database of the URL's kind, from an empty one to
    `revision` (offline mode: nothing is connected to), for a DBA to review or run."""
    cfg = alembic_config(url)
    cfg.output_buffer = buffer = io.StringIO()
    command.upgrade(cfg, revision, sql=True)
    return buffer.getvalue()


def downgrade(url: str, revision: str) -> None:
    """Undo migrations down to `revision` ("base": drop every table of the schema)."""
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """The revision the database is at; None when it was never migrated (or the SQLite file
    does not exist: it is not created by asking)."""
    url = resolve_url(url)
    sa_url = make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        path = sa_url.database
        if path and path != ":memory:" and not Path(path).exists():
            return None
    db = database_engine(Settings(database_url=url))
    try:
        with db.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        db.dispose()


def diff(url: str) -> list[Any]:
    """What autogenerate would change to make the database match schema.py: [] when the
    migrations and the metadata agree (Alembic's compare_metadata)."""
    db = database_engine(Settings(database_url=resolve_url(url)))
    try:
        with db.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={"target_metadata": metadata, **compare_options(connection.dialect.name)},
            )
            changes: list[Any] = compare_metadata(context, metadata)
            return changes
    finally:
        db.dispose()


def head() -> str:
    """The newest revision in persistence/migrations/versions."""
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if rev is None:  # pragma: no cover - the initial revision ships with the package
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return rev


def revision(message: str, url: str, *, autogenerate: bool = True) -> Path:
    """Development: write the next revision (id = previous + 1, zero-padded) comparing
    schema.py with the database at `url`, which must be at head (an empty SQLite file
    upgraded first is the usual choice). The file is formatted with ruff when ruff is
    installed next to the interpreter. Review it by hand before committing. Returns its path.
    """
    cfg = alembic_config(url)
    script = ScriptDirectory.from_config(cfg)
    newest = script.get_current_head()
    rev_id = f"{int(newest) + 1:04d}" if newest is not None else "0001"
    ruff = Path(sys.executable).parent / "ruff"
    ruff_path = str(ruff) if ruff.exists() else shutil.which("ruff")
    if ruff_path is not None:
        cfg.set_section_option("post_write_hooks", "hooks", "ruff_format, ruff_fix")
        for hook, options in (
            ("ruff_format", "format --quiet REVISION_SCRIPT_FILENAME"),
            ("ruff_fix", "check --fix --silent REVISION_SCRIPT_FILENAME"),
        ):
            cfg.set_section_option("post_write_hooks", f"{hook}.type", "exec")
            cfg.set_section_option("post_write_hooks", f"{hook}.executable", ruff_path)
            cfg.set_section_option("post_write_hooks", f"{hook}.options", options)
    written = command.revision(cfg, message=message, autogenerate=autogenerate, rev_id=rev_id)
    scripts = written if isinstance(written, list) else [written]
    if not scripts or scripts[0] is None:
        raise RuntimeError("alembic wrote no revision")
    return Path(scripts[0].path)
