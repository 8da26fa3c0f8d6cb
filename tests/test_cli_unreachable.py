"""With Redis or the database unreachable, every command says so in one line and exits 3.

Each command runs as a process of its own against ports where nothing listens: one line on
stderr names what could not be reached, where, and what to do; no traceback; with --json the
last line on stdout is an error object."""

from __future__ import annotations

import json

import pytest

from scripts.redis_server import free_port
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
