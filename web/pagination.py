"""Keyset (cursor) pagination over SQLAlchemy selects.

A page is cut by the sort key of its last (or first) row plus the row id, never by an offset,
so rows arriving while a client pages never shift, repeat or skip entries. A cursor is an
opaque token: base64url JSON of the boundary values and the direction.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Select, and_, or_

from web.errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True, slots=True)
class SortKey:
    column: Column[Any] | ColumnElement[Any]
    descending: bool = False


@dataclass
class Page:
    rows: list[Any]
    next: str | None
    previous: str | None


def _encode_value(value: Any) -> Any:
    return {"$dt": value.isoformat()} if isinstance(value, datetime) else value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and "$dt" in value:
        return datetime.fromisoformat(value["$dt"])
    return value


def encode_cursor(values: Sequence[Any], direction: str) -> str:
    raw = json.dumps({"v": [_encode_value(v) for v in values], "d": direction}, default=str)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _storable(value: Any) -> bool:
    """Whether a database can compare a column with `value`: no NUL in text, integers of 64
    bits (a forged cursor must be a 400, never an error from the driver)."""
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return True


def decode_cursor(token: str, width: int) -> tuple[list[Any], str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw)
        values, direction = decoded["v"], decoded["d"]
        if not isinstance(values, list) or len(values) != width or direction not in ("n", "p"):
            raise ValueError("shape")
        if not all(_storable(v) for v in values):
            raise ValueError("value")
        return [_decode_value(v) for v in values], direction
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ApiError(400, "invalid_cursor", "the cursor is not one this API gave out") from None


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
    if cursor:
        values, direction = decode_cursor(cursor, len(keys))
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
