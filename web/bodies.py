"""Reading request bodies and query strings into pydantic models, with clear 4xx errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError
from starlette.requests import ClientDisconnect, Request

from web.errors import ApiError
from web.middleware import header

M = TypeVar("M", bound=BaseModel)

# What the document says of every text a client sends (web/openapi/document.py adds it where a
# string has no pattern of its own): no NUL character, which `_validate` below refuses.
NO_NUL = r"^[^\x00]*$"


def _integral(value: object) -> object:
    # JSON has one kind of number, and JSON Schema counts 90.0 as the integer 90: a client
    # may well send it so. 90.5, a string or a boolean is still no integer.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Makes a StrictInt a JSON integer: a whole number, written 90 or 90.0. It goes last, after
# the bounds (`Annotated[StrictInt, Field(ge=1), INTEGRAL]`): before them, pydantic would no
# longer write the bounds as JSON Schema's minimum and maximum.
INTEGRAL = BeforeValidator(_integral)


def _problems(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "field": ".".join(str(p) for p in e["loc"]) or "body",
            "problem": e["msg"],
            "type": e["type"],
        }
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _nul_problems(value: Any, field: str) -> list[dict[str, Any]]:
    """A problem for each text holding a NUL character: no database column can store one
    (Postgres refuses it), so it is bad input, never a server error."""
    if isinstance(value, str):
        if "\x00" not in value:
            return []
        problem = "must not contain NUL characters"
        return [{"field": field or "body", "problem": problem, "type": "string_nul"}]
    if not isinstance(value, (dict, list)):
        return []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return [p for k, v in items for p in _nul_problems(v, f"{field}.{k}" if field else str(k))]


# The body of most reservations and orders, {"product": <id>, "quantity": <units>}: JSON's own
# whitespace anywhere between the tokens, each number a plain JSON integer of at most 18 digits.
_PRODUCT_QUANTITY = re.compile(
    rb"[ \t\n\r]*\{[ \t\n\r]*"
    rb'"product"[ \t\n\r]*:[ \t\n\r]*(0|[1-9][0-9]{0,17})[ \t\n\r]*,[ \t\n\r]*'
    rb'"quantity"[ \t\n\r]*:[ \t\n\r]*(0|[1-9][0-9]{0,17})[ \t\n\r]*\}[ \t\n\r]*'
)

# A decoder of a common body: exactly what json.loads gives for it, or None for any other. What
# it gives holds no text (so no NUL character).
Shortcut = Callable[[bytes], dict[str, Any] | None]


def product_quantity(raw: bytes) -> dict[str, Any] | None:
    """`json.loads(raw)` when the body is `{"product": <int>, "quantity": <int>}` (the common
    reservation), else None; a pattern is several times cheaper than the decoder."""
    match = _PRODUCT_QUANTITY.fullmatch(raw)
    if match is None:
        return None
    return {"product": int(match[1]), "quantity": int(match[2])}


async def read_body(request: Request) -> bytes:
    """`await request.body()`, read straight from `receive` rather than through Starlette's
    stream generator (a measurable share of a reservation's Python); kept where Request.body()
    keeps it, so that a later read of the body gets the same bytes."""
    known: bytes | None = getattr(request, "_body", None)
    if known is not None:
        return known
    chunks: list[bytes] = []
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = body  # what Request.body() returns from now on
    return body


async def parse_body(request: Request, model: type[M], *, shortcut: Shortcut | None = None) -> M:
    """The body as `model`, or the 4xx. `shortcut` may decode the body's common form instead
    of json.loads: it must give what json.loads would, or None (then json.loads does)."""
    content_type = header(request, b"content-type") or ""
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    raw = await read_body(request)
    message = "the request body is not valid"
    payload = shortcut(raw) if shortcut is not None else None
    if payload is not None:  # numbers only: no text, so no NUL to look for
        return _model(model, payload, message)
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    return _validate(model, payload, message)


def parse_query(request: Request, model: type[M]) -> M:
    return _validate(model, dict(request.query_params), "the query string is not valid")


def _validate(model: type[M], data: Any, message: str) -> M:
    # NUL first: the one rule for every text, whatever else a field's pattern says.
    if problems := _nul_problems(data, ""):
        raise ApiError(400, "invalid_input", message, {"errors": problems})
    return _model(model, data, message)


def _model(model: type[M], data: Any, message: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "invalid_input", message, {"errors": _problems(exc)}) from None
