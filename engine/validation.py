"""Input checks shared by the engine's calls: a bad value is refused before Redis is asked."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import orjson

from engine import errors
from engine.models import LineRequest

# Product and warehouse ids end up inside hash field names split by '|'.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
RECORD_ID = re.compile(r"[0-9a-f]{32}")
CURRENCY = re.compile(r"[A-Z]{3}")
MAX_LINES = 100
MAX_QUANTITY = 1_000_000
MAX_STOCK_DELTA = 1_000_000_000
MAX_PRICE = 10**12


def check_name(field: str, value: object) -> None:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise errors.InvalidInput(
            field, "must be 1-64 characters: letters, digits and _ . : - (not first)"
        )


def check_int(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidInput(field, "must be a whole number")
    if not low <= value <= high:
        raise errors.InvalidInput(field, f"must be between {low} and {high}")


def merge_lines(lines: Sequence[LineRequest]) -> list[tuple[str, str, int]]:
    """Sum repeated (product, warehouse) lines, keeping first-seen order."""
    if not lines:
        raise errors.InvalidInput("lines", "a reservation needs at least one line")
    if len(lines) > MAX_LINES:
        raise errors.InvalidInput("lines", f"at most {MAX_LINES} lines")
    merged: dict[tuple[str, str], int] = {}
    for line in lines:
        check_name("product", line.product)
        if line.warehouse is not None:
            check_name("warehouse", line.warehouse)
        check_int("quantity", line.quantity, 1, MAX_QUANTITY)
        key = (line.product, line.warehouse or "")
        # Summed without a cap of their own: the API's document bounds each line, and no
        # schema can bound the sum of the lines that name one product.
        merged[key] = merged.get(key, 0) + line.quantity
    return [(p, w, q) for (p, w), q in merged.items()]


# json.dumps(value, separators=(",", ":"), sort_keys=True), without building the encoder per call
dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def fingerprint_text(value: Sequence[Any]) -> str:
    """`dumps(value)` for a list of strs, ints and lists of them (an idempotent call's
    operation and arguments), by orjson where that gives the same text: when what it wrote is
    ASCII without DEL, which json.dumps would have escaped (`\\u007f`), as it does every
    character past it. Otherwise (or for an int past 64 bits) json.dumps's own text."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError: an int past 64 bits
        return dumps(value)
    if text.isascii() and b"\x7f" not in text:
        return text.decode()
    return dumps(value)


def compact_json(value: Any) -> str:
    """`json.dumps(value, separators=(",", ":"), ensure_ascii=False)`, by orjson: the same text
    for what events hold (strs, ints, bools, None, lists, str-keyed objects: no floats); an int
    past 64 bits, or a str orjson refuses, by json.dumps."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def lines_json(merged: Sequence[tuple[str, str, int]]) -> str:
    """`dumps(merged)` for lines `merge_lines` returned, written directly: their names match
    NAME (nothing to escape) and their quantities are ints, so the text is the same, and on
    the hot path it costs a fraction of the encoder's."""
    return "[" + ",".join(f'["{p}","{w}",{q}]' for p, w, q in merged) + "]"
