"""Refresh tokens: one row per token issued. The token itself is a signed JWT; its row holds
what can change about it — spent, revoked.

A login starts a family. Each refresh spends its token and issues the next of the same
family, so a refresh token works once. A spent token presented again means two parties hold
the family (the token was stolen, or replayed): the whole family is revoked, so whoever holds
its newest token must log in again. An account change that ends tokens (persistence/users.py)
revokes the account's tokens too.

Synchronous SQLAlchemy Core: async callers run these in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection, Engine, delete, insert, select, update

from persistence.schema import refresh_tokens, users
from persistence.users import User, from_row

# Why a refresh token was refused: not issued here (or long expired and cleared), revoked
# (its family, or its account's tokens), spent already (the family is revoked now), the
# account gone or disabled, or the account changed since the token was issued.
Refusal = Literal["unknown", "revoked", "reused", "account", "version"]


@dataclass(frozen=True, slots=True)
class Issue:
    """A refresh token to record: its id, and when it was issued and expires (UTC)."""

    jti: str
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Rotation:
    """A refresh: the account the next tokens are issued for, or why not."""

    user: User | None
    refused: Refusal | None


def start_family(db: Engine, user_id: int, first: Issue) -> None:
    """Records a login's refresh token, the first of a new family (named by its id)."""
    with db.begin() as conn:
        # Housekeeping while here: the user's expired rows can't be used or reused any more.
        conn.execute(
            delete(refresh_tokens).where(
                refresh_tokens.c.user_id == user_id, refresh_tokens.c.expires_at < first.issued_at
            )
        )
        _record(conn, first, first.jti, user_id)


def rotate(db: Engine, jti: str, claimed_version: int, following: Issue) -> Rotation:
    """Spends refresh token `jti` (whose JWT claims `claimed_version`) and records the next of
    its family; or refuses, revoking the family when the token was spent already.

    Two uses of one token at once: the conditional update lets exactly one spend it; the other
    finds it spent and revokes the family (with the token the first one just issued)."""
    now = following.issued_at
    with db.begin() as conn:
        row = conn.execute(select(refresh_tokens).where(refresh_tokens.c.jti == jti)).first()
        if row is None:
            return Rotation(None, "unknown")
        found = conn.execute(select(users).where(users.c.id == row.user_id)).first()
        user = None if found is None else from_row(found)
        if user is None or not user.active:
            return Rotation(None, "account")
        if row.used_at is not None:  # spent: reused, every time it comes (its family revoked)
            _revoke_family(conn, str(row.family), now)
            return Rotation(None, "reused")
        if row.revoked_at is not None:
            return Rotation(None, "revoked")
        if user.token_version != claimed_version:
            return Rotation(None, "version")
        spent = conn.execute(
            update(refresh_tokens)
            .where(
                refresh_tokens.c.jti == jti,
                refresh_tokens.c.used_at.is_(None),
                refresh_tokens.c.revoked_at.is_(None),
            )
            .values(used_at=now)
        )
        if spent.rowcount != 1:
            _revoke_family(conn, str(row.family), now)
            return Rotation(None, "reused")
        _record(conn, following, str(row.family), user.id)
    return Rotation(user, None)


def _record(conn: Connection, issue: Issue, family: str, user_id: int) -> None:
    conn.execute(
        insert(refresh_tokens).values(
            jti=issue.jti,
            family=family,
            user_id=user_id,
            issued_at=issue.issued_at,
            expires_at=issue.expires_at,
        )
    )


def _revoke_family(conn: Connection, family: str, now: datetime) -> None:
    conn.execute(
        update(refresh_tokens)
        .where(refresh_tokens.c.family == family, refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
