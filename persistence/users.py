"""The users who can get a token: stored with an argon2id hash of their password, never the
password itself. Users change rarely, so they are written to the database directly.

Hashing belongs to the web layer (web/passwords.py); these functions take and return hashes.
Synchronous SQLAlchemy Core: async callers run them in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from persistence.schema import users


class UsernameTaken(ValueError):
    def __init__(self, username: str) -> None:
        super().__init__(f"the username {username!r} is taken")
        self.username = username


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    password_hash: str
    staff: bool
    active: bool
    created_at: datetime


def _user(row: Any) -> User:
    created = row.created_at
    return User(
        id=int(row.id),
        username=str(row.username),
        password_hash=str(row.password_hash),
        staff=bool(row.is_staff),
        active=bool(row.is_active),
        # SQLite hands back naive datetimes; everything stored is UTC
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
    )


def create_user(db: Engine, username: str, password_hash: str, *, staff: bool = False) -> User:
    """A new active user; `UsernameTaken` if the name is in use (the unique index decides)."""
    now = datetime.now(UTC)
    try:
        with db.begin() as conn:
            result = conn.execute(
                insert(users).values(
                    username=username,
                    password_hash=password_hash,
                    is_staff=staff,
                    is_active=True,
                    created_at=now,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            user_id = int(key[0])
    except IntegrityError:
        raise UsernameTaken(username) from None
    return User(user_id, username, password_hash, staff, True, now)


def find_by_username(db: Engine, username: str) -> User | None:
    with db.connect() as conn:
        row = conn.execute(select(users).where(users.c.username == username)).first()
    return None if row is None else _user(row)


def find_by_id(db: Engine, user_id: int) -> User | None:
    if not 0 < user_id < 2**63:  # beyond BIGINT no user can exist, and Postgres would refuse
        return None
    with db.connect() as conn:
        row = conn.execute(select(users).where(users.c.id == user_id)).first()
    return None if row is None else _user(row)


def set_password_hash(db: Engine, user_id: int, password_hash: str) -> None:
    with db.begin() as conn:
        conn.execute(update(users).where(users.c.id == user_id).values(password_hash=password_hash))


def set_active(db: Engine, user_id: int, active: bool) -> None:
    """Disable (or enable again) a user: a disabled user can neither log in nor refresh."""
    with db.begin() as conn:
        conn.execute(update(users).where(users.c.id == user_id).values(is_active=active))
