"""With Redis or the database unreachable, every command says so in one line and exits 3.

Each command runs as a process of its own against ports where nothing listens: one line on
stderr names what could not be reached, where, and what to do; no traceback; with --json the
last line on stdout is an error object. So too against a SQLite file that can't be opened or
is not a database, and a database never migrated (`database_not_set_up`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.models import SYSTEM, CallContext, LineRequest
from engine.settings import Settings
from scripts.redis_server import RedisServer, free_port
from tests.support import run_cli

REDIS_PORT = free_port()
DATABASE_PORT = free_port()
ENV = {
    "REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
    "DATABASE_URL": f"postgresql://inventory:secret@127.0.0.1:{DATABASE_PORT}/x",
    "JWT_KEYS": "main:" + "k" * 40,
    "RQ_DASHBOARD_USERNAME": "ops",
    "RQ_DASHBOARD_PASSWORD": "p" * 40,
}
REDIS = (
    f"inventory: cannot reach Redis at 127.0.0.1:{REDIS_PORT} (connection refused): "
    "start it with scripts/serve.sh or set REDIS_URL"
)
DATABASE = (
    f"inventory: cannot reach the database at 127.0.0.1:{DATABASE_PORT} (connection refused): "
    "start PostgreSQL or set DATABASE_URL"
)


def _one_line(args: list[str], expected: str) -> None:
    done = run_cli(*args, env=ENV, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines() == [expected], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    if "--json" in args:
        error = json.loads(done.stdout.strip().splitlines()[-1])["error"]
        assert error == {
            "code": "redis_unreachable" if expected == REDIS else "database_unreachable",
            "message": expected.removeprefix("inventory: "),
        }
    else:
        assert done.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["sweep"],
        ["sweep", "--json"],
        ["check", "--json"],
        ["chaos", "--processes", "2", "--json"],
        ["rebuild", "--json"],
        ["drain"],
        ["worker", "--burst"],
        ["scheduler", "--burst"],
        ["serve", "--port", str(free_port())],
        ["serve", "--bench", "--port", str(free_port())],
        ["rq-dashboard", "--port", str(free_port())],
    ],
    ids=lambda args: " ".join(a for a in args if not a.isdigit()),
)
def test_redis_unreachable_is_one_line_and_exit_3(args: list[str]) -> None:
    _one_line(args, REDIS)


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["reconcile"],
        ["reconcile", "--json"],
        ["dead-letters", "--json"],
        ["dead-letters", "replay", "--all", "--json"],
        ["dead-letters", "resolve", "1", "--note", "gone"],
        ["user", "list", "--json"],
        ["user", "disable", "bob"],
        ["createuser", "bob", "--password", "a long enough password"],
    ],
    ids=" ".join,
)
def test_database_unreachable_is_one_line_and_exit_3(args: list[str]) -> None:
    _one_line(args, DATABASE)


def test_the_url_given_on_the_command_line_is_the_one_named() -> None:
    port = free_port()
    done = run_cli("check", "--redis-url", f"redis://localhost:{port}/0", env=ENV)
    assert done.returncode == 3
    assert done.stderr.startswith(f"inventory: cannot reach Redis at localhost:{port} (")


# -- a SQLite database that can't be opened, or that was never migrated -------------------------

BROKEN = ["cannot open", "not a database", "not set up"]


def _broken(tmp_path: Path, kind: str) -> tuple[str, str, str]:
    """DATABASE_URL, the error code and the message of a SQLite database broken as `kind`."""
    if kind == "cannot open":  # its folder can't be made: a file is in the way
        (tmp_path / "a-file").write_text("")
        path = tmp_path / "a-file" / "folder" / "inventory.db"
        message = (
            f"cannot reach the database at {path} (cannot open): check that its folder exists "
            "and is writable, or set DATABASE_URL"
        )
        return f"sqlite:///{path}", "database_unreachable", message
    if kind == "not a database":
        path = tmp_path / "notes.txt"
        path.write_text("not a database, some words to fill the header of a SQLite file\n" * 4)
        message = (
            f"cannot reach the database at {path} (not a database): set DATABASE_URL to the "
            "inventory's database"
        )
        return f"sqlite:///{path}", "database_unreachable", message
    path = tmp_path / "never-migrated.db"
    message = (
        f"the database at {path} is not set up (no table {{table}}): run `inventory migrate`, "
        "or set DATABASE_URL to the inventory's database"
    )
    return f"sqlite:///{path}", "database_not_set_up", message


def _one_broken_line(
    done: subprocess.CompletedProcess[str], code: str, message: str, as_json: bool
) -> None:
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    said = lines[0].removeprefix("inventory: ")
    if "{table}" in message:
        prefix, suffix = message.split("{table}")
        assert said.startswith(prefix), said
        assert said.endswith(suffix), said
        message = said
    assert said == message
    if as_json:
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {
            "error": {"code": code, "message": message}
        }
    else:
        assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        (args, kind)
        for args in (
            ["reconcile", "--json"],
            ["rebuild", "--force", "--json"],
            ["dead-letters", "--json"],
            ["dead-letters"],
            ["drain"],
            ["migrate", "--json"],
        )
        for kind in BROKEN
        if not (args[0] == "migrate" and kind == "not set up")  # migrate sets it up
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_a_broken_sqlite_database_is_one_line_and_exit_3(
    args: list[str], kind: str, tmp_path: Path, redis_server: RedisServer, clean_redis: None
) -> None:
    url, code, message = _broken(tmp_path, kind)
    done = run_cli(*args, env={"REDIS_URL": redis_server.url, "DATABASE_URL": url}, timeout=60)
    _one_broken_line(done, code, message, "--json" in args)


@pytest.mark.parametrize("kind", BROKEN)
def test_a_sweep_that_must_check_a_started_redis_against_a_broken_database(
    kind: str, tmp_path: Path
) -> None:
    """A Redis that has started checks its first write (here the sweep's release) against
    the database's record: a record that can't be read is one line and exit 3 too."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:

        async def due_reservation() -> None:
            settings = Settings(redis_url=server.url, reservation_ttl_min_ms=50)
            async with Engine.from_settings(settings) as engine:
                await engine.setup_product("p1", SYSTEM, price=100, stock={"main": 3})
                await engine.reserve([LineRequest("p1", 1)], CallContext(actor="u1"), ttl_ms=50)
            await asyncio.sleep(0.1)

        asyncio.run(due_reservation())
        server.stop()  # started again: its writes wait for the check
        server.start()
        url, code, message = _broken(tmp_path, kind)
        done = run_cli("sweep", "--json", env={"REDIS_URL": server.url, "DATABASE_URL": url})
        _one_broken_line(done, code, message, as_json=True)
    finally:
        server.stop()


def test_only_the_embedded_default_gets_its_folder_made(tmp_path: Path) -> None:
    """DATA_DIR's folder is made for the default SQLite file (scripts/serve.sh relies on it);
    a DATABASE_URL naming a folder that is not there is reported, not made."""
    named = tmp_path / "typo" / "inventory.db"
    done = run_cli("dead-letters", env={"DATABASE_URL": f"sqlite:///{named}"})
    assert done.returncode == 3
    assert done.stderr.startswith(f"inventory: cannot reach the database at {named} (cannot")
    assert not named.parent.exists()

    default = tmp_path / "data"
    done = run_cli("dead-letters", env={"DATABASE_URL": "", "DATA_DIR": str(default)})
    assert done.returncode == 3
    assert done.stderr.startswith(f"inventory: the database at {default / 'inventory.db'} is not")
    assert default.is_dir()
