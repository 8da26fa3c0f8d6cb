"""The event bodies (engine/events.py) against the scripts that write them: every `emit` call
in lua/*.lua names a known type and exactly the fields of its body, and the drain's
translate.py handles every type."""

from __future__ import annotations

import re
from collections import defaultdict
from importlib import resources
from typing import Any

from engine import events
from persistence import translate


def _lua(name: str) -> str:
    """A script's code without its comments (no string in the scripts holds '--')."""
    text = resources.files("lua").joinpath(name).read_text(encoding="utf-8")
    return re.sub(r"--[^\n]*", "", text)


def _close(text: str, start: int) -> int:
    """The index just past the bracket that closes the one at `start`, skipping strings."""
    depth, i, quote = 0, start, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "({":
            depth += 1
        elif c in ")}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise AssertionError(f"unbalanced from {text[start : start + 40]!r}")


def _top_level(inner: str) -> list[str]:
    """The comma-separated items of a call's arguments or a table's fields."""
    items, depth, quote, current = [], 0, "", ""
    for c in inner:
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "({":
            depth += 1
        elif c in ")}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(current.strip())
            current = ""
            continue
        current += c
    if current.strip():
        items.append(current.strip())
    return items


def emitted() -> dict[str, list[tuple[str, set[str]]]]:
    """Event type -> (file, the body's field names) for every `emit` call in the scripts."""
    found: dict[str, list[tuple[str, set[str]]]] = defaultdict(list)
    for path in resources.files("lua").iterdir():
        if not path.name.endswith(".lua"):
            continue
        text = _lua(path.name)
        for m in re.finditer(r"(?<!function )\bemit(_text)?\(", text):
            args = _top_level(text[m.end() : _close(text, m.end() - 1) - 1])
            etype = re.fullmatch(r"'(\w+)'", args[1])
            assert etype, f"{path.name}: the event type must be a literal: {args[1]}"
            if m[1]:  # emit_text: the event written as JSON text, its members' names quoted
                assert len(args) == 3, f"{path.name}: emit_text({args})"
                fields = set(re.findall(r'"(\w+)":', args[2])) - COMMON
            else:
                assert len(args) in (6, 7), f"{path.name}: emit({args})"
                body = args[5]
                assert body.startswith("{"), body
                assert _close(body, 0) == len(body), body
                fields = {item.split("=", 1)[0].strip() for item in _top_level(body[1:-1])}
            found[etype[1]].append((path.name, fields))
    return found


COMMON = events.EventBody.__required_keys__  # what emit() adds to every body


def test_emit_adds_the_fields_every_body_has() -> None:
    lib = _lua("lib.lua")
    common = {*events.EventBody.__required_keys__, *events.EventBody.__optional_keys__}
    start = lib.index("local function emit(")
    body = lib[start : lib.index("\nend\n", start)]
    assert set(re.findall(r"\bbody\.(\w+) =", body)) == common
    assert events.EventBody.__optional_keys__ == {"idempotency"}
    # an event written as text has the same fields, and its idempotency copy the copy's
    start = lib.index("local function idempotency_json(")
    body = lib[start : lib.index("\nend\n", start)]
    copy = {"idempotency"} | events.IdempotencyCopy.__required_keys__
    assert set(re.findall(r'"(\w+)":', body)) == copy
    for path in resources.files("lua").iterdir():
        if path.name.endswith(".lua"):
            text = _lua(path.name)
            for m in re.finditer(r"(?<!function )\bemit_text\(", text):
                call = text[m.end() : _close(text, m.end() - 1) - 1]
                assert set(re.findall(r'"(\w+)":', call)) >= COMMON, path.name
                assert "idempotency_json(" in call, path.name


def test_every_emitted_event_has_exactly_the_fields_of_its_body() -> None:
    found = emitted()
    assert set(found) == set(events.BODIES), "an event type without a body, or the reverse"
    common = events.EventBody.__required_keys__
    for etype, calls in found.items():
        body: Any = events.BODIES[etype]
        assert "idempotency" in body.__optional_keys__, etype
        required, optional = body.__required_keys__ - common, body.__optional_keys__
        for where, fields in calls:
            # every required field; an optional one (a cart's) where the call has it
            assert required <= fields <= required | optional, f"{etype} in {where}"
    # each optional field is written somewhere
    for etype, body in events.BODIES.items():
        written = {f for _, fields in found.get(etype, []) for f in fields}
        assert body.__optional_keys__ - {"idempotency"} <= written, etype


def test_the_parser_reads_a_nested_body() -> None:
    (call,) = emitted()["stock_reconciled"]
    assert call == ("repair.lua", {"product", "warehouse", "found", "live_reserved", "movements"})
    # the sweep's and on access (holds.lua), and a cart part's on access (part.lua)
    assert len(emitted()["reservation_expired"]) == 3


def test_the_drain_translates_every_event_type() -> None:
    assert set(translate.HANDLERS) == set(events.BODIES)
