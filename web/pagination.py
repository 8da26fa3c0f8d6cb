"""Keyset (cursor) pagination over SQLAlchemy selects.

A page is cut by the sort key of its last (or first) row plus the row id, never by an offset,
so rows arriving while a client pages never shift, repeat or skip entries.

A cursor is opaque to clients, and regular: the direction (`n`ext or `p`revious), then each
key's value in hexadecimal of a fixed width — 16 digits for an integer (64 bits, offset by
2^63) or a time (microseconds since 1970, UTC, likewise), 32 for a record id. So the OpenAPI
document can state its exact pattern, and every string of that pattern is a position in the
list: one the API did not give out pages from where it points (a time beyond what a datetime
holds counts as the first or last one), and only a string of another form is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Select, and_, or_

from engine.validation import RECORD_ID
from web.errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

# A key's value in a cursor, by the key's Python type: hex digits.
WIDTH: dict[type, int] = {int: 16, datetime: 16, str: 32}
_OFFSET = 2**63  # int64 -> 0 .. 2^64 - 1, so that 16 hex digits hold each of them
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FIRST_US = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND
_LAST_US = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class SortKey:
    column: Column[Any] | ColumnElement[Any]
    descending: bool = False

    @property
    def kind(self) -> type:
        """The Python type of the column's values: int, datetime or str (a record id)."""
        kind: type = self.column.type.python_type
        return kind


@dataclass
class Page:
    rows: list[Any]
    next: str | None
    previous: str | None


def cursor_pattern(kinds: Sequence[type]) -> str:
    """The regular expression of every cursor of a list sorted by keys of these types."""
    return "^[np]" + "".join(f"[0-9a-f]{{{WIDTH[kind]}}}" for kind in kinds) + "$"


def _int_hex(value: int) -> str:
    # A position past the 64 bits is past every row: the last 64-bit value says the same.
    return format(min(max(value, -_OFFSET), _OFFSET - 1) + _OFFSET, "016x")


def _encode_value(value: Any) -> str:
    if isinstance(value, datetime):
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value  # SQLite's are naive
        return _int_hex((utc - _EPOCH) // _MICROSECOND)
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_hex(value)
    if isinstance(value, str) and RECORD_ID.fullmatch(value):
        return value
    raise ValueError(f"no cursor holds {value!r}")


def _decode_value(text: str, kind: type) -> Any:
    if kind is str:
        return text
    number = int(text, 16) - _OFFSET
    if kind is datetime:
        return _EPOCH + min(max(number, _FIRST_US), _LAST_US) * _MICROSECOND
    return number


def encode_cursor(values: Sequence[Any], direction: str) -> str:
    return direction + "".join(_encode_value(v) for v in values)


def decode_cursor(token: str, kinds: Sequence[type]) -> tuple[list[Any], str]:
    """The position and direction of a cursor of a list sorted by keys of types `kinds`."""
    if not re.fullmatch(cursor_pattern(kinds), token):
        raise ApiError(400, "invalid_cursor", "the cursor is not one this API gave out")
    values, at = [], 1
    for kind in kinds:
        values.append(_decode_value(token[at : at + WIDTH[kind]], kind))
        at += WIDTH[kind]
    return values, token[0]


def _after(keys: Sequence[SortKey], values: Sequence[Any], backwards: bool) -> ColumnElement[bool]:
    """Rows strictly after `values` in the sort order (before it when `backwards`)."""
    clauses = []
    for i, key in enumerate(keys):
        forward = key.descending == backwards
        step = key.column > values[i] if forward else key.column < values[i]
        clauses.append(and_(*(k.column == values[j] for j, k in enumerate(keys[:i])), step))
    return or_(*clauses)


def paginate(
    conn: Connection,
    query: Select[Any],
    keys: Sequence[SortKey],
    cursor: str | None,
    limit: int,
    boundary: Callable[[Any], Sequence[Any]],
) -> Page:
    """Run `query` for one page. `keys` must end with a unique column (the id); `boundary`
    gives a row's values for those keys."""
    values: list[Any] | None = None
    direction = "n"
    if cursor is not None:
        values, direction = decode_cursor(cursor, [k.kind for k in keys])
    backwards = direction == "p"
    if values is not None:
        query = query.where(_after(keys, values, backwards))
    order = [(k.column.desc() if k.descending != backwards else k.column.asc()) for k in keys]
    rows = list(conn.execute(query.order_by(*order).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    has_next = more if not backwards else values is not None
    has_previous = values is not None if not backwards else more
    return Page(
        rows=rows,
        next=encode_cursor(boundary(rows[-1]), "n") if rows and has_next else None,
        previous=encode_cursor(boundary(rows[0]), "p") if rows and has_previous else None,
    )
