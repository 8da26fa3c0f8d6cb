"""Which failures to apply an event are the event's own, and which are the moment's: the one
rule that decides what the drain dead-letters.

Deterministic — the same event would fail the same way again, so it becomes a dead letter and
the events behind it go on:
- `BadEvent`: the event can't be translated into rows (malformed, or of an unknown type);
- the database refuses its rows: an integrity error (SQLSTATE class 23: a unique, foreign key
  or check violation; and 40002, a constraint checked at commit) or a data error (class 22:
  a value too long, out of range, of the wrong form), from psycopg or SQLite alike;
- SQLAlchemy refuses one of its values before sending it (a bound parameter of the wrong type).

Transient — everything else: a lock timeout (55P03), a statement timeout or cancel (57014), a
deadlock (40P01), a serialization failure (40001), the server shutting down (57P01..57P03), a
lost connection (class 08, or psycopg's OperationalError without a SQLSTATE), a full disk
(class 53), SQLite's "database is locked". The whole batch rolls back and the drain runs it
again later, its checkpoint unmoved. An error this module does not know (a missing table, a
bug) is treated as transient too: a drain that keeps failing is loud (the backlog grows,
/readyz says so), while an event wrongly dead-lettered is missing from the database silently.
"""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy.exc import DBAPIError, StatementError

from persistence.translate import BadEvent

_REFUSALS = (psycopg.IntegrityError, psycopg.DataError, sqlite3.IntegrityError, sqlite3.DataError)
# class 40 is "transaction rollback", mostly transient, but 40002 is a constraint violation
_DETERMINISTIC_SQLSTATES = frozenset({"40002"})


def is_deterministic(exc: BaseException) -> bool:
    """True when applying the same event again would fail the same way (dead-letter it)."""
    if isinstance(exc, BadEvent):
        return True
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        # raised while binding the statement's values, before the database saw it
        return isinstance(exc.orig, (TypeError, ValueError))
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(cause, psycopg.Error) and cause.sqlstate in _DETERMINISTIC_SQLSTATES:
        return True
    return isinstance(cause, _REFUSALS)


def is_transient(exc: BaseException) -> bool:
    """True when the failure belongs to the moment, not the event: retry, dead-letter nothing."""
    return not is_deterministic(exc)


def describe(exc: BaseException) -> str:
    """One line for an operator: the driver's error class and its first line of text."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first}"
