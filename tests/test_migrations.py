"""The Alembic migrations build exactly persistence.schema.metadata, on Postgres and SQLite."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import inspect

from engine.settings import PROJECT_ROOT, Settings
from persistence import migrate
from persistence.db import database_engine
from persistence.schema import metadata
from scripts.pg_server import PostgresServer

_empty_databases = itertools.count(1)


@pytest.fixture(params=["postgres", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all, of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    server.start()
    name = f"empty_{next(_empty_databases)}"
    server.create_database(name)
    yield server.url_for(name)
    server.start()
    server.drop_database(name)


def schema_diff(url: str) -> list[Any]:
    return migrate.diff(url)


def table_names(url: str) -> set[str]:
    db = database_engine(Settings(database_url=url))
    try:
        with db.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        db.dispose()


def constraint_names(url: str) -> dict[str, set[str]]:
    """Per table: the names of its primary key, unique constraints, foreign keys and indexes."""
    db = database_engine(Settings(database_url=url))
    out: dict[str, set[str]] = {}
    try:
        with db.connect() as conn:
            insp = inspect(conn)
            for table in metadata.tables:
                names = {insp.get_pk_constraint(table)["name"]}
                names |= {uq["name"] for uq in insp.get_unique_constraints(table)}
                names |= {fk["name"] for fk in insp.get_foreign_keys(table)}
                names |= {ix["name"] for ix in insp.get_indexes(table)}
                out[table] = {str(name) for name in names}
    finally:
        db.dispose()
    return out


def expected_constraint_names() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, table in metadata.tables.items():
        names = {str(c.name) for c in table.constraints if c.name is not None}
        names |= {str(ix.name) for ix in table.indexes}
        out[name] = names
    return out


def test_upgrade_builds_exactly_the_metadata(empty_url: str) -> None:
    assert migrate.current(empty_url) is None
    migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == migrate.head()
    assert table_names(empty_url) == set(metadata.tables) | {"alembic_version"}
    assert schema_diff(empty_url) == []
    # Every constraint and index has the name the naming convention gives it: later
    # migrations can drop or alter them by name on both databases.
    assert constraint_names(empty_url) == expected_constraint_names()


def test_upgrade_twice_changes_nothing(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == migrate.head()
    assert schema_diff(empty_url) == []


def test_downgrade_to_base_then_upgrade_again(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    migrate.downgrade(empty_url, "base")
    assert migrate.current(empty_url) is None
    assert table_names(empty_url) <= {"alembic_version"}
    migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == migrate.head()
    assert schema_diff(empty_url) == []


def test_fixture_databases_are_migrated(db_url: str) -> None:
    assert migrate.current(db_url) == migrate.head()
    assert schema_diff(db_url) == []


def test_pg_url_gives_a_fresh_database_per_test(pg_url: str, pg_server: PostgresServer) -> None:
    # Written here, gone in the next test's database (each is a copy of the template).
    db = database_engine(Settings(database_url=pg_url))
    try:
        with db.begin() as conn:
            conn.execute(metadata.tables["outbox_checkpoints"].delete())
            conn.execute(
                metadata.tables["outbox_checkpoints"].insert(),
                {"partition": 0, "last_event_id": "1-0", "applied": 1, "updated_at": "2026-01-01"},
            )
    finally:
        db.dispose()
    assert pg_url != pg_server.url


def test_current_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "none.db"
    assert migrate.current(f"sqlite:///{path}") is None
    assert not path.exists()
    assert not path.parent.exists()


def test_upgrade_creates_the_sqlite_file_and_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "data" / "inventory.db"
    migrate.upgrade(f"sqlite:///{path}")
    assert path.exists()
    assert migrate.current(f"sqlite:///{path}") == migrate.head()


def test_without_a_url_env_uses_database_url_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    command.upgrade(migrate.alembic_config(), "head")
    assert migrate.current(f"sqlite:///{path}") == migrate.head()


def test_an_empty_url_means_the_environment_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    assert migrate.current("") is None
    migrate.upgrade("")
    assert (tmp_path / "data" / "inventory.db").exists()
    assert migrate.current("") == migrate.head()
    assert migrate.diff("") == []


def test_upgrade_works_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    migrate.upgrade("sqlite:///relative.db")
    assert migrate.current(f"sqlite:///{tmp_path / 'relative.db'}") == migrate.head()


def test_postgres_url_without_driver_means_psycopg(pg_server: PostgresServer) -> None:
    pg_server.start()
    name = f"plain_{next(_empty_databases)}"
    pg_server.create_database(name)
    try:
        url = pg_server.url_for(name).replace("postgresql+psycopg://", "postgresql://")
        migrate.upgrade(url)
        assert migrate.current(url) == migrate.head()
    finally:
        pg_server.drop_database(name)


def test_concurrent_upgrades_on_postgres_are_serialised(pg_server: PostgresServer) -> None:
    # Several workers starting at once each run `inventory migrate`: without a lock they all
    # create alembic_version and the tables, and all but one fail. With env.py's advisory
    # lock they queue, and the later ones find nothing to do. The test holds the lock itself
    # until all three wait for it, so the race is certain, not left to timing. Processes, not
    # threads: Alembic's context is process-global.
    pg_server.start()
    name = f"race_{next(_empty_databases)}"
    pg_server.create_database(name)
    url = pg_server.url_for(name)
    code = "import sys; from persistence.migrate import upgrade; upgrade(sys.argv[1])"
    procs: list[subprocess.Popen[str]] = []
    try:
        with psycopg.connect(
            host="127.0.0.1", port=pg_server.port, user="postgres", dbname=name, autocommit=True
        ) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (migrate.MIGRATION_LOCK_KEY,))
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", code, url],
                    cwd=PROJECT_ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for _ in range(3)
            ]
            deadline = time.monotonic() + 60
            while True:
                row = holder.execute(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND NOT granted AND database = "
                    " (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).fetchone()
                if row is not None and row[0] == 3:
                    break
                exited = [p for p in procs if p.poll() is not None]
                assert not exited, "an upgrade did not wait for the lock:\n" + "\n".join(
                    p.communicate()[0] for p in exited
                )
                assert time.monotonic() < deadline, "the upgrades never queued on the lock"
                time.sleep(0.05)
            holder.execute("SELECT pg_advisory_unlock(%s)", (migrate.MIGRATION_LOCK_KEY,))
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(outputs)
        assert migrate.current(url) == migrate.head()
        assert schema_diff(url) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        pg_server.drop_database(name)


@pytest.mark.parametrize("url", ["postgresql+psycopg://u@db.invalid/x", "sqlite:///unused.db"])
def test_upgrade_sql_renders_the_ddl_without_connecting(url: str) -> None:
    ddl = migrate.upgrade_sql(url)
    assert "CREATE TABLE orders" in ddl
    assert "CREATE INDEX ix_orders_status_created_at_id ON orders" in ddl
    assert "alembic_version" in ddl
    if url.startswith("postgresql"):
        assert "GENERATED BY DEFAULT AS IDENTITY" in ddl


def test_revision_ids_are_sequential_and_linear() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = list(script.walk_revisions())  # newest first
    assert len(script.get_heads()) == 1
    ids = [r.revision for r in reversed(revisions)]
    assert ids == [f"{n:04d}" for n in range(1, len(ids) + 1)]
    assert migrate.head() == ids[-1]


def test_migrations_ship_as_package_data() -> None:
    package = resources.files("persistence.migrations")
    assert package.joinpath("env.py").is_file()
    assert package.joinpath("script.py.mako").is_file()
    versions = [p.name for p in package.joinpath("versions").iterdir()]
    assert any(name.startswith("0001_") and name.endswith(".py") for name in versions)
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {"persistence.migrations", "persistence.migrations.versions"} <= set(config["packages"])
    assert "script.py.mako" in config["package-data"]["persistence.migrations"]


def test_pg_server_stops_and_starts_on_the_same_port_and_data() -> None:
    # What a fault test relies on: stop() and start() are idempotent, keep the port and the
    # data; a killed postmaster is noticed and start() recovers the cluster.
    server = PostgresServer()
    try:
        server.start()
        port, url = server.port, server.url
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
        server.stop()
        server.stop()
        assert not server.running
        server.start()
        server.start()
        assert server.running
        assert (server.port, server.url) == (port, url)
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]

        pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.running:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.start()  # crash recovery from the WAL
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        server.close()
    assert not server.base.exists()
