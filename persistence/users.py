"""The users who can get a token: stored with an argon2id hash of their password, never the
password itself, and the account changes an operator makes (disable, enable, staff, password).
Users change rarely, so they are written to the database directly.

Each account carries a token version that every token carries too (the `ver` claim). A change
that must end the account's tokens (disabled, staff removed, password changed) moves the
version and revokes the account's refresh tokens in the same transaction as the change and its
audit row; the API refuses a token of another version (web/accounts.py).

Hashing belongs to the web layer (web/passwords.py); these functions take and return hashes.
Synchronous SQLAlchemy Core: async callers run them in a thread (the API's account reads,
`read_token_states`, on one connection of their own on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from persistence import records
from persistence.db_async import SerialReader
from persistence.schema import refresh_tokens, users

# A stored hash no password matches (argon2 refuses it as a hash): the synthetic accounts of
# the benchmark and the tests can't log in.
UNUSABLE_PASSWORD = "!"


class UsernameTaken(ValueError):
    def __init__(self, username: str) -> None:
        super().__init__(f"the username {username!r} is taken")
        self.username = username


class UnknownUser(ValueError):
    def __init__(self, username: str) -> None:
        super().__init__(f"there is no user named {username!r}")
        self.username = username


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    password_hash: str
    staff: bool
    active: bool
    created_at: datetime
    token_version: int = 0


@dataclass(frozen=True, slots=True)
class TokenState:
    """What decides whether an account's tokens still count."""

    user_id: int
    active: bool
    staff: bool
    token_version: int


@dataclass(frozen=True, slots=True)
class AccountChange:
    """An operator's change of one account, as its audit row tells it (`changed` False: the
    account was already so; nothing was written)."""

    user: User
    action: str
    changed: bool
    old: dict[str, Any]
    new: dict[str, Any]


def from_row(row: Any) -> User:
    created = row.created_at
    return User(
        id=int(row.id),
        username=str(row.username),
        password_hash=str(row.password_hash),
        staff=bool(row.is_staff),
        active=bool(row.is_active),
        # SQLite hands back naive datetimes; everything stored is UTC
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
        token_version=int(row.token_version),
    )


def valid_id(user_id: int) -> bool:
    # Beyond BIGINT no user can exist, and Postgres would refuse the comparison.
    return 0 < user_id < 2**63


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
                    token_version=0,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            user_id = int(key[0])
    except IntegrityError:
        raise UsernameTaken(username) from None
    return User(user_id, username, password_hash, staff, True, now, 0)


def find_by_username(db: Engine, username: str) -> User | None:
    with db.connect() as conn:
        row = conn.execute(select(users).where(users.c.username == username)).first()
    return None if row is None else from_row(row)


def find_by_id(db: Engine, user_id: int) -> User | None:
    if not valid_id(user_id):
        return None
    with db.connect() as conn:
        row = conn.execute(select(users).where(users.c.id == user_id)).first()
    return None if row is None else from_row(row)


def list_users(db: Engine) -> list[User]:
    with db.connect() as conn:
        return [from_row(row) for row in conn.execute(select(users).order_by(users.c.username))]


_STATE_COLUMNS = (users.c.id, users.c.is_active, users.c.is_staff, users.c.token_version)
# PostgreSQL's: the ids as one array parameter, so that every batch is the same (prepared)
# statement (`IN` renders one parameter per id: a statement per batch size)
_STATES_ANY = f"SELECT id, is_active, is_staff, token_version FROM {users.name} WHERE id = ANY(%s)"


def token_states(db: Engine, user_ids: Collection[int]) -> dict[int, TokenState]:
    """The token state of each of these users that exists, in one query."""
    wanted = [i for i in user_ids if valid_id(i)]
    if not wanted:
        return {}
    query = select(*_STATE_COLUMNS).where(users.c.id.in_(wanted))
    with db.connect() as conn:
        return _states(conn.execute(query))


async def read_token_states(
    db: Engine, reader: SerialReader | None, user_ids: Collection[int]
) -> dict[int, TokenState]:
    """token_states for the API: on PostgreSQL on the `reader`'s connection (one statement,
    on the event loop), else (SQLite) in a thread."""
    if reader is None:
        return await asyncio.to_thread(token_states, db, user_ids)
    wanted = [i for i in user_ids if valid_id(i)]
    if not wanted:
        return {}
    return _states(await reader.fetch_all(_STATES_ANY, [wanted]))


def _states(rows: Iterable[Sequence[Any]]) -> dict[int, TokenState]:
    """(id, is_active, is_staff, token_version) rows."""
    return {
        int(i): TokenState(int(i), bool(active), bool(staff), int(version))
        for i, active, staff, version in rows
    }


def set_password_hash(db: Engine, user_id: int, password_hash: str) -> None:
    """The same password hashed again with today's parameters (at a login): its tokens stay.
    A new password is `change_password`."""
    with db.begin() as conn:
        conn.execute(update(users).where(users.c.id == user_id).values(password_hash=password_hash))


# -- an operator's account changes --------------------------------------------------------------


def disable(db: Engine, username: str, *, actor: str) -> AccountChange:
    """A disabled user can't log in, and their tokens stop counting."""
    return _change(db, username, actor, "user_disabled", {"is_active": False}, ends_tokens=True)


def enable(db: Engine, username: str, *, actor: str) -> AccountChange:
    """Enabled again: the user logs in anew (the tokens ended by disabling stay ended)."""
    return _change(db, username, actor, "user_enabled", {"is_active": True}, ends_tokens=False)


def set_staff(db: Engine, username: str, staff: bool, *, actor: str) -> AccountChange:
    """Staff removed ends the user's tokens, which claim staff. Staff granted does not: the
    user's tokens keep their customer's rights until the next login or refresh, which reads the
    account as it is then."""
    action = "user_staff_granted" if staff else "user_staff_removed"
    return _change(db, username, actor, action, {"is_staff": staff}, ends_tokens=not staff)


def change_password(db: Engine, username: str, password_hash: str, *, actor: str) -> AccountChange:
    """A new password ends every token issued under the old one."""
    values = {"password_hash": password_hash}
    return _change(db, username, actor, "user_password_changed", values, ends_tokens=True)


# What an audit row shows of an account, by the column changed (never the password hash).
_SHOWN = {"is_active": "active", "is_staff": "staff", "password_hash": None}


def _change(
    db: Engine,
    username: str,
    actor: str,
    action: str,
    values: dict[str, Any],
    *,
    ends_tokens: bool,
) -> AccountChange:
    now = datetime.now(UTC)
    with db.begin() as conn:
        row = conn.execute(
            select(users).where(users.c.username == username).with_for_update()
        ).first()
        if row is None:
            raise UnknownUser(username)
        before = from_row(row)
        changes = {
            column: value
            for column, value in values.items()
            if column == "password_hash" or getattr(row, column) != value
        }
        if not changes:
            same = _shown(before, values)
            return AccountChange(before, action, False, same, same)
        if ends_tokens:
            changes["token_version"] = users.c.token_version + 1
            _revoke_refresh_tokens(conn, before.id, now)
        conn.execute(update(users).where(users.c.id == before.id).values(**changes))
        after = from_row(conn.execute(select(users).where(users.c.id == before.id)).one())
        old, new = _shown(before, values), _shown(after, values)
        records.audit(
            conn, actor, action, ("user", str(after.id)), old, new, "",
            event_id=f"user-{uuid.uuid4().hex}",
        )  # fmt: skip
    return AccountChange(after, action, True, old, new)


def _revoke_refresh_tokens(conn: Connection, user_id: int, now: datetime) -> None:
    # The version alone would refuse them; the rows say so too, for whoever reads the table.
    conn.execute(
        update(refresh_tokens)
        .where(
            refresh_tokens.c.user_id == user_id,
            refresh_tokens.c.used_at.is_(None),
            refresh_tokens.c.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )


def _shown(user: User, values: Mapping[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = {"username": user.username}
    for column in values:
        name = _SHOWN[column]
        if name is not None:
            shown[name] = getattr(user, name)
    shown["token_version"] = user.token_version
    return shown


# -- accounts for tokens minted with the server's key -------------------------------------------


def ensure_synthetic(db: Engine, names: Mapping[int, str], *, staff: bool = False) -> None:
    """Accounts with these ids and names (id -> username) that can't log in, made if missing
    and made staff if `staff`: the benchmark and the tests mint their tokens with the server's
    key, and a token counts only while its account exists and is active."""
    now = datetime.now(UTC)
    ids = list(names)
    with db.begin() as conn:
        existing: set[int] = set()
        for i in range(0, len(ids), 1000):
            chunk = ids[i : i + 1000]
            existing.update(conn.scalars(select(users.c.id).where(users.c.id.in_(chunk))))
            if staff:
                conn.execute(update(users).where(users.c.id.in_(chunk)).values(is_staff=True))
        rows = [
            {
                "id": user_id,
                "username": name,
                "password_hash": UNUSABLE_PASSWORD,
                "is_staff": staff,
                "is_active": True,
                "created_at": now,
                "token_version": 0,
            }
            for user_id, name in names.items()
            if user_id not in existing
        ]
        if rows:
            conn.execute(insert(users), rows)
        if rows and conn.dialect.name == "postgresql":
            # Ids given by hand don't move the identity's sequence: move it past them, or the
            # next createuser would be handed one of them.
            top = conn.scalar(select(func.max(users.c.id)))
            conn.execute(
                text("SELECT setval(pg_get_serial_sequence('users', 'id'), :top)"), {"top": top}
            )
