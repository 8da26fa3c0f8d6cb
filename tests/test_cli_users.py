"""`inventory user list|disable|enable|set-staff|unset-staff|set-password`: each change of an
account writes one audit row with the old and new values (never a password hash) and moves the
token version when the account's tokens must end; an unknown user is exit 2 and changes
nothing."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import func, select

from persistence import users
from persistence.schema import audit_log, refresh_tokens
from tests.support import last_json, run_cli
from tests.test_api_auth import PASSWORD, make_user
from web import passwords

NEW_PASSWORD = "a new and better passphrase"


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL only: each command is a process of its own (seconds a run), and the account
    functions they call run on SQLite in tests/test_api_auth.py and test_api_accounts.py."""
    return pg_url


def inventory(
    db_url: str, *args: str, stdin: str | None = None, new_session: bool = False
) -> subprocess.CompletedProcess[str]:
    # No controlling terminal (a new session): getpass reads the prompted password from stdin.
    return run_cli(
        "user", *args, "--database-url", db_url, input=stdin, start_new_session=new_session
    )


def audit_rows(db: DatabaseEngine) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.id)).mappings().all()
    return [dict(r) for r in rows]


def account(db: DatabaseEngine, name: str) -> users.User:
    found = users.find_by_username(db, name)
    assert found is not None
    return found


def test_user_list_shows_every_account(db: DatabaseEngine, db_url: str) -> None:
    bob = make_user(db, "bob", staff=True)
    alice = make_user(db, "alice")
    users.disable(db, "alice", actor="test")

    # --redis-url is taken as by every subcommand (README), though users need only the database
    listed = inventory(db_url, "list", "--json", "--redis-url", "redis://127.0.0.1:1/0")
    table = inventory(db_url, "list")

    assert listed.returncode == table.returncode == 0, listed.stderr
    found = last_json(listed)["users"]
    assert [u["username"] for u in found] == ["alice", "bob"]
    assert found[0] == {
        "id": alice.id,
        "username": "alice",
        "staff": False,
        "active": False,
        "created_at": found[0]["created_at"],
        "token_version": 1,
    }
    assert found[1]["id"] == bob.id
    assert (found[1]["staff"], found[1]["active"], found[1]["token_version"]) == (True, True, 0)
    assert found[1]["created_at"] == bob.created_at.isoformat()
    assert "alice" in table.stdout
    assert "token_version" in table.stdout


# action, extra arguments -> (audit action, old, new) with alice at token version 0, active,
# not staff when the sequence starts
SEQUENCE: list[tuple[list[str], str, dict[str, Any], dict[str, Any]]] = [
    (["set-staff"], "user_staff_granted", {"staff": False, "token_version": 0},
     {"staff": True, "token_version": 0}),
    (["unset-staff"], "user_staff_removed", {"staff": True, "token_version": 0},
     {"staff": False, "token_version": 1}),
    (["disable"], "user_disabled", {"active": True, "token_version": 1},
     {"active": False, "token_version": 2}),
    (["enable", "--actor", "ops-oncall"], "user_enabled", {"active": False, "token_version": 2},
     {"active": True, "token_version": 2}),
    (["set-password", "--password", NEW_PASSWORD], "user_password_changed",
     {"token_version": 2}, {"token_version": 3}),
]  # fmt: skip


def test_each_change_writes_one_audit_row(db: DatabaseEngine, db_url: str) -> None:
    alice = make_user(db, "alice")

    for args, action, old, new in SEQUENCE:
        done = inventory(db_url, args[0], "alice", *args[1:])
        assert done.returncode == 0, done.stderr
        assert last_json(done) == {
            "username": "alice",
            "action": action,
            "changed": True,
            "old": {"username": "alice", **old},
            "new": {"username": "alice", **new},
        }

    rows = audit_rows(db)
    assert [r["action"] for r in rows] == [action for _, action, _, _ in SEQUENCE]
    assert [r["actor"] for r in rows] == ["operator"] * 3 + ["ops-oncall", "operator"]
    for row, (_, _, old, new) in zip(rows, SEQUENCE, strict=True):
        assert (row["object_type"], row["object_id"]) == ("user", str(alice.id))
        assert row["old_value"] == {"username": "alice", **old}
        assert row["new_value"] == {"username": "alice", **new}
    assert "argon2" not in json.dumps(
        [r["old_value"] for r in rows] + [r["new_value"] for r in rows]
    )
    after = account(db, "alice")
    assert (after.active, after.staff, after.token_version) == (True, False, 3)
    assert passwords.verify_password(after.password_hash, NEW_PASSWORD)


def test_a_change_the_account_already_has_writes_nothing(db: DatabaseEngine, db_url: str) -> None:
    make_user(db, "alice")

    again = inventory(db_url, "enable", "alice")

    assert again.returncode == 0, again.stderr
    assert last_json(again)["changed"] is False
    assert audit_rows(db) == []
    assert account(db, "alice").token_version == 0


def test_a_change_that_ends_tokens_revokes_the_refresh_tokens(
    db: DatabaseEngine, db_url: str
) -> None:
    # (The API refuses them by their version anyway; the rows say so too.)
    alice = make_user(db, "alice")
    with db.begin() as conn:
        conn.execute(
            refresh_tokens.insert(),
            {
                "jti": "j1",
                "family": "j1",
                "user_id": alice.id,
                "issued_at": alice.created_at,
                "expires_at": alice.created_at,
            },
        )

    assert inventory(db_url, "disable", "alice").returncode == 0

    with db.connect() as conn:
        revoked = conn.scalar(
            select(refresh_tokens.c.revoked_at).where(refresh_tokens.c.jti == "j1")
        )
    assert revoked is not None


@pytest.mark.parametrize(
    "args",
    [
        ["disable"],
        ["enable"],
        ["set-staff"],
        ["unset-staff"],
        ["set-password", "--password", NEW_PASSWORD],
    ],
)
def test_an_unknown_user_is_exit_2_and_changes_nothing(
    db: DatabaseEngine, db_url: str, args: list[str]
) -> None:
    make_user(db, "alice")

    refused = inventory(db_url, args[0], "nobody", *args[1:])

    assert refused.returncode == 2
    assert "there is no user named 'nobody'" in refused.stderr
    assert refused.stdout == ""
    assert audit_rows(db) == []
    alice = account(db, "alice")
    assert (alice.active, alice.staff, alice.token_version) == (True, False, 0)


def test_set_password_from_stdin_or_prompted_twice(db: DatabaseEngine, db_url: str) -> None:
    make_user(db, "alice")
    make_user(db, "bob")

    from_stdin = inventory(
        db_url, "set-password", "alice", "--password-stdin", stdin=f"{NEW_PASSWORD}\n"
    )
    prompted = inventory(
        db_url, "set-password", "bob", stdin=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n", new_session=True
    )

    assert from_stdin.returncode == prompted.returncode == 0, from_stdin.stderr + prompted.stderr
    for name in ("alice", "bob"):
        changed = account(db, name)
        assert passwords.verify_password(changed.password_hash, NEW_PASSWORD)
        assert changed.token_version == 1
    assert len(audit_rows(db)) == 2


def test_a_refused_password_changes_nothing(db: DatabaseEngine, db_url: str) -> None:
    make_user(db, "alice")

    differ = inventory(
        db_url, "set-password", "alice", stdin=f"{NEW_PASSWORD}\nsomething else\n", new_session=True
    )
    short = inventory(db_url, "set-password", "alice", "--password-stdin", stdin="seven77\n")

    assert differ.returncode == short.returncode == 2
    assert "the two passwords differ" in differ.stderr
    assert "at least 8 characters" in short.stderr
    assert differ.stdout == short.stdout == ""
    alice = account(db, "alice")
    assert passwords.verify_password(alice.password_hash, PASSWORD)
    assert alice.token_version == 0
    assert audit_rows(db) == []
    with db.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(audit_log)) == 0


def test_a_bad_actor_is_refused_before_anything_changes(db: DatabaseEngine, db_url: str) -> None:
    make_user(db, "alice")

    refused = inventory(db_url, "disable", "alice", "--actor", "")

    assert refused.returncode == 2
    assert "the actor is 1 to 150 printable characters" in refused.stderr
    assert account(db, "alice").active is True
    assert audit_rows(db) == []
