"""What every operation of the API shares, as OpenAPI: the text on its conventions, the
X-Request-ID and Idempotency-Key parameters, the response headers, the Error envelope, and
the errors each kind of operation can answer (web/openapi/document.py puts them into the
document)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

Schema = dict[str, Any]
Access = Literal["open", "user", "staff"]

REF = "#/components/schemas/{model}"


def ref(name: str) -> Schema:
    """A reference to a schema in components/schemas."""
    return {"$ref": REF.format(model=name)}


def closed(properties: Mapping[str, Schema], *, optional: Iterable[str] = ()) -> Schema:
    """An object schema with exactly these properties, all required but `optional`."""
    skip = set(optional)
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [name for name in properties if name not in skip],
        "properties": dict(properties),
    }


# What the conventions add, by what an operation does.
BODY_ERRORS: dict[int, tuple[str, ...]] = {
    400: ("invalid_input", "malformed_json"),
    413: ("payload_too_large",),
    415: ("unsupported_media_type",),
}
ACCESS_ERRORS: dict[Access, dict[int, tuple[str, ...]]] = {
    "open": {},
    "user": {401: ("not_authenticated", "invalid_token", "token_expired", "token_revoked")},
    "staff": {
        401: ("not_authenticated", "invalid_token", "token_expired", "token_revoked"),
        403: ("forbidden",),
    },
}
BACKEND_ERRORS: dict[int, tuple[str, ...]] = {503: ("service_unavailable",)}
RATE_LIMIT_ERRORS: dict[int, tuple[str, ...]] = {429: ("rate_limited",)}
# a Redis write's own 503s: its partition's Redis behind the database, or started and not yet
# checked against it, or no replica confirmed it in time
REDIS_WRITE_UNAVAILABLE = ("redis_behind", "redis_unverified", "not_replicated")
# (writes: every one is a Redis write, refused while its partition's Redis is behind)
IDEMPOTENCY_ERRORS: dict[int, tuple[str, ...]] = {
    400: ("invalid_input",),
    422: ("idempotency_mismatch",),
    503: REDIS_WRITE_UNAVAILABLE,
}

REASONS = {
    400: "Bad input",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Body too large",
    415: "Not JSON",
    422: "Unprocessable",
    429: "Too many requests",
    503: "Unavailable",
}

TITLE = "Inventory Reservation Engine"
DESCRIPTION = """\
Stock reservations for flash sales: reserve units, commit them into orders, move orders
along their state machine. Reads of the catalog and stock are open; everything else takes
`Authorization: Bearer <access token>` from `POST /api/token/`.

**Envelope.** Every JSON answer is `{"request_id", "data"}`; a list adds `next` and
`previous` cursors (pass one back as `cursor`). An error is `{"request_id", "error": {"code",
"message", "details"}}`, with the status and the codes each operation lists below. Every
response carries `X-Request-ID`: the client's own when it sent a valid one, else a new id;
it travels into the audit log.

**Values.** Money is a decimal string (`"19.99"`), quantities are positive integers, times
are ISO 8601 UTC.

**Idempotency.** The writes that take `Idempotency-Key` answer a retry with the same key and
body with the original answer (status and data, plus `Idempotent-Replayed: true`) and no
second effect; the same key with another body is 422 `idempotency_mismatch`.

**Reading your own writes.** Reservations and orders live in Redis and are fresh at once in
`GET /api/reservations/{id}/` and `GET /api/orders/{id}/`. The lists read the durable record,
which trails the writes by the drain lag (usually milliseconds). Every reservation and order
write answers with an `X-Consistency-Token` header; pass it as `?consistent_with=<token>` to
the list and it waits (at most 2 s) until the record has that write, then answers with
`X-Consistency: consistent` — or `X-Consistency: stale` if it had to answer before.
"""

PARAMETERS: dict[str, Schema] = {
    # Any value is taken: one that is not a sane token is replaced, never refused.
    "X-Request-ID": {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "your id for this request, kept when it is 1 to 128 of A-Z a-z 0-9 "
        "`._:-`; anything else is replaced by a new id, as is a missing one",
        "schema": {"type": "string"},
    },
    "Idempotency-Key": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "a retry with the same key and body gets the first answer again; "
        "an empty key is no key",
        "schema": {"type": "string", "maxLength": 255},
    },
    "If-None-Match": {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "description": "the ETag of an answer you hold (or `*`): 304 with no body while it "
        "is still the answer",
        "schema": {"type": "string"},
    },
}

HEADERS: dict[str, Schema] = {
    "X-Request-ID": {
        "description": "the request's id: the client's, or a new one",
        "required": True,
        "schema": {"type": "string"},
    },
    "X-Consistency-Token": {
        "description": "this write's place in the durable record: pass it to a list as "
        "consistent_with to see the write there",
        "required": True,
        "schema": {"type": "string", "pattern": r"^p\d+-\d+-\d+$"},
    },
    "Idempotent-Replayed": {
        "description": "true when this is the stored answer to an earlier request",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "X-Consistency": {
        "description": "with consistent_with: whether the list has the write yet",
        "schema": {"type": "string", "enum": ["consistent", "stale"]},
    },
    "Retry-After": {
        "description": "seconds to wait",
        "required": True,
        "schema": {"type": "string", "pattern": r"^\d+$"},
    },
    "WWW-Authenticate": {
        "description": "when no token was sent",
        "schema": {"type": "string"},
    },
    "ETag": {
        "description": "a weak tag of what the answer says (stock and catalog fields): send "
        "it back as If-None-Match",
        "required": True,
        "schema": {"type": "string", "pattern": r'^W/"[0-9a-f]+"$'},
    },
}

SCHEMAS: dict[str, Schema] = {
    "Error": closed(
        {
            "code": {"type": "string", "description": "stable, machine-readable"},
            "message": {"type": "string", "description": "for people"},
            "details": {"type": "object", "description": "what the error is about"},
        }
    ),
    "ErrorEnvelope": closed({"request_id": {"type": "string"}, "error": ref("Error")}),
}
