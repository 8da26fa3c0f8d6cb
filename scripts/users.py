"""`inventory createuser NAME [--staff] [--password PW]`: a user who can get a token."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
from typing import Any

from sqlalchemy.exc import DBAPIError

from engine.settings import Settings
from persistence import users
from persistence.db import database_engine
from web import passwords


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        password: str = args.password
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


def cmd_createuser(args: argparse.Namespace) -> int:
    username: str = args.username
    if not 1 <= len(username) <= 150 or username != username.strip() or not username.isprintable():
        raise ValueError("the username is 1 to 150 printable characters, no surrounding spaces")
    settings = Settings.from_env()
    if args.database_url:
        settings = dataclasses.replace(settings, database_url=args.database_url)
    db = database_engine(settings)
    try:
        if users.find_by_username(db, username) is not None:
            raise users.UsernameTaken(username)  # before the prompt, not after it
        password_hash = passwords.hash_password(_password(args))
        user = users.create_user(db, username, password_hash, staff=args.staff)
    except DBAPIError as exc:
        raise ValueError(
            f"the database refused: {exc.orig}; is it migrated? (inventory migrate)"
        ) from None
    finally:
        db.dispose()
    result: dict[str, Any] = {"id": user.id, "username": user.username, "staff": user.staff}
    print(json.dumps(result, sort_keys=True))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("createuser", help="create a user who can log in (POST /api/token/)")
    p.add_argument("username")
    p.add_argument("--staff", action="store_true", help="may manage stock, orders and the audit")
    p.add_argument("--password", help="default: prompt twice, without echo")
    p.add_argument("--database-url", help="default: $DATABASE_URL, else SQLite in data/")
    p.set_defaults(func=cmd_createuser)
