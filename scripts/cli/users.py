"""`inventory createuser NAME [--staff] [--password PW]`: a user who can get a token; and
`inventory user list|disable|enable|set-staff|unset-staff|set-password`: the accounts, and an
operator's changes of one, each with an audit row (persistence/users.py)."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the database and rich are imported by the command that runs, not here
    from sqlalchemy import Engine

    from persistence import users


def _password(args: argparse.Namespace) -> str:
    from web import passwords

    if args.password is not None:
        password: str = args.password
    elif getattr(args, "password_stdin", False):
        # For scripts: the first line of stdin, its line break not part of it.
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        # Prompted twice and not echoed: it stays out of the shell history and the process list.
        password = getpass.getpass("password: ")
        if getpass.getpass("password again: ") != password:
            raise ValueError("the two passwords differ")
    if len(password) < passwords.MIN_LENGTH:
        raise ValueError(f"the password must be at least {passwords.MIN_LENGTH} characters")
    if len(password) > passwords.MAX_LENGTH:
        raise ValueError(f"the password must be at most {passwords.MAX_LENGTH} characters")
    return password


@contextmanager
def _database(args: argparse.Namespace) -> Iterator[Engine]:
    from sqlalchemy.exc import DBAPIError

    from engine.settings import Settings
    from persistence.db import database_engine
    from scripts.cli import unreachable

    settings = Settings.from_env()
    if args.database_url:
        settings = dataclasses.replace(settings, database_url=args.database_url)
    db = database_engine(settings)
    try:
        yield db
    except DBAPIError as exc:
        if unreachable.diagnose(exc, args) is not None:
            raise  # main() names the database it could not reach (exit 3)
        raise ValueError(
            f"the database refused: {exc.orig}; is it migrated? (inventory migrate)"
        ) from None
    finally:
        db.dispose()


def cmd_createuser(args: argparse.Namespace) -> int:
    from persistence import users
    from web import passwords

    username: str = args.username
    if not 1 <= len(username) <= 150 or username != username.strip() or not username.isprintable():
        raise ValueError("the username is 1 to 150 printable characters, no surrounding spaces")
    with _database(args) as db:
        if users.find_by_username(db, username) is not None:
            raise users.UsernameTaken(username)  # before the prompt, not after it
        password_hash = passwords.hash_password(_password(args))
        user = users.create_user(db, username, password_hash, staff=args.staff)
    result: dict[str, Any] = {"id": user.id, "username": user.username, "staff": user.staff}
    print(json.dumps(result, sort_keys=True))
    return 0


def _row(user: users.User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "staff": user.staff,
        "active": user.active,
        "created_at": user.created_at.isoformat(),
        "token_version": user.token_version,
    }


def cmd_user_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from persistence import users

    with _database(args) as db:
        found = users.list_users(db)
    if args.json:
        print(json.dumps({"users": [_row(u) for u in found]}, sort_keys=True))
        return 0
    table = Table("id", "username", "staff", "active", "created_at", "token_version")
    for user in found:
        table.add_row(*(str(v) for v in _row(user).values()))
    Console().print(table)
    return 0


def _changer(args: argparse.Namespace) -> Callable[[Engine], users.AccountChange]:
    from persistence import users

    name: str = args.username
    actor: str = args.actor
    match args.action:
        case "disable":
            return lambda db: users.disable(db, name, actor=actor)
        case "enable":
            return lambda db: users.enable(db, name, actor=actor)
        case "set-staff" | "unset-staff":
            staff = args.action == "set-staff"
            return lambda db: users.set_staff(db, name, staff, actor=actor)
        case "set-password":
            return lambda db: users.change_password(db, name, _new_hash(args), actor=actor)
    raise AssertionError(args.action)


def _new_hash(args: argparse.Namespace) -> str:
    from web import passwords

    return passwords.hash_password(_password(args))


def cmd_user_change(args: argparse.Namespace) -> int:
    from persistence import users

    if not 1 <= len(args.actor) <= 150 or not args.actor.isprintable():
        raise ValueError("the actor is 1 to 150 printable characters")
    with _database(args) as db:
        if users.find_by_username(db, args.username) is None:
            raise users.UnknownUser(args.username)  # before the prompt, not after it
        change = _changer(args)(db)
    result = {
        "username": change.user.username,
        "action": change.action,
        "changed": change.changed,
        "old": change.old,
        "new": change.new,
    }
    print(json.dumps(result, sort_keys=True))
    return 0


USER_ACTIONS = {
    "disable": "disable: no login, and the user's tokens stop working within ACCOUNT_CACHE_TTL",
    "enable": "enable again (the tokens ended by disabling stay ended)",
    "set-staff": "make staff (from the next login or refresh)",
    "unset-staff": "remove staff; the user's tokens stop working",
    "set-password": "set a new password; the user's tokens stop working",
}


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--database-url", help="default: $DATABASE_URL, else SQLite in data/")
    database.add_argument(  # as every subcommand takes it (README); users live in the database
        "--redis-url", help="accepted as by every subcommand; users need only the database"
    )

    p = sub.add_parser(
        "createuser", parents=[database], help="create a user who can log in (POST /api/token/)"
    )
    p.add_argument("username")
    p.add_argument("--staff", action="store_true", help="may manage stock, orders and the audit")
    p.add_argument("--password", help="default: prompt twice, without echo")
    p.set_defaults(func=cmd_createuser)

    p = sub.add_parser("user", help="list the users, or change one (with an audit row)")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("list", parents=[database], help="every user, by name")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(func=cmd_user_list)
    for action, text in USER_ACTIONS.items():
        q = actions.add_parser(action, parents=[database], help=text)
        q.add_argument("username")
        q.add_argument("--actor", default="operator", help="who, for the audit row")
        if action == "set-password":
            given = q.add_mutually_exclusive_group()
            given.add_argument("--password", help="default: prompt twice, without echo")
            given.add_argument(
                "--password-stdin", action="store_true", help="read it from the first line of stdin"
            )
        q.set_defaults(func=cmd_user_change)
