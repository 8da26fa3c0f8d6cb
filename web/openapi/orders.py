"""The operations table, part two: reservations and orders (web/openapi/document.py builds the
document from it). Bodies, queries and answers are the pydantic models of
web/schemas/orders.py; a body that comes in several shapes is described shape by shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import BaseModel

from engine.settings import Settings
from web.openapi.conventions import REDIS_WRITE_UNAVAILABLE, REF, Schema, closed, ref
from web.openapi.document import Operation, without_null
from web.pagination import cursor_pattern
from web.schemas.orders import (
    ExtendIn,
    OrderIn,
    OrderOut,
    OrderQuery,
    ReservationOut,
    ReservationQuery,
    ReserveIn,
    TransitionIn,
    WaitlistJoin,
    ttl_bounds,
)

RECORD_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
DECIMAL: Schema = {
    "type": "string",
    "pattern": r"^\d{1,13}(\.\d{1,6})?$",
    "description": 'a decimal amount like "19.99", inclusive, in each order\'s own currency',
}
# Its partition must be one of the server's: ConsistencyToken is built from its settings.
CONSISTENT_WITH: Schema = {
    **ref("ConsistencyToken"),
    "description": "the X-Consistency-Token of one of your writes: the list waits (at most "
    "2 s) until it has that write; a position no write has reached yet is 400 "
    "`invalid_consistency_token` at once",
}
USER: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 150,
    "description": "staff: whose records (a customer may only name themselves)",
}
# A page's position: newest first (created_at, id), or by value (total, id): one form.
CURSOR: Schema = {
    "type": "string",
    "pattern": cursor_pattern((datetime, str)),
    "description": "the `next` or `previous` of a page",
}
LIST_QUERY = {"cursor": CURSOR, "consistent_with": CONSISTENT_WITH, "user": USER}
LIST_ERRORS = {400: ("invalid_cursor", "invalid_consistency_token"), 403: ("forbidden",)}


# The bounds are the server's settings: web/routes/docs.py puts the schema in the document.
TTL_SECONDS: Schema = {"anyOf": [ref("TtlSeconds"), {"type": "null"}]}


def configured(settings: Settings) -> dict[str, Schema]:
    """The schemas whose limits are settings of the server, as it is configured."""
    low, high = ttl_bounds(settings)
    ttl = {
        "type": "number",
        "minimum": low,
        "maximum": high,
        "description": "seconds (RESERVATION_TTL_MIN to RESERVATION_TTL_MAX); left out or "
        "null: RESERVATION_TTL",
    }
    token = {
        "type": "string",
        "pattern": rf"^p{_below(settings.partitions)}-\d{{1,20}}-\d{{1,20}}$",
        "description": "an X-Consistency-Token",
    }
    return {"TtlSeconds": ttl, "ConsistencyToken": token}


def _below(bound: int) -> str:
    """A regular expression of the numbers a token's partition may be: 1 to 6 digits (zeros
    may lead) worth less than `bound`."""
    top = str(bound - 1)
    width = len(top)
    if width > 6:
        return r"\d{1,6}"
    # `top` itself, or its first i digits and then a smaller digit and any digits after.
    at_most = [
        f"{top[:i]}[0-{int(top[i]) - 1}]" + (rf"\d{{{width - i - 1}}}" if i < width - 1 else "")
        for i in range(width)
        if top[i] != "0"
    ]
    shorter = [rf"\d{{1,{width - 1}}}"] if width > 1 else []
    return "(" + "|".join([*shorter, f"0{{0,{6 - width}}}({'|'.join([*at_most, top])})"]) + ")"


def body(model: type[BaseModel], **fields: Schema) -> Schema:
    """A model's schema with some of its fields' schemas replaced."""
    schema = model.model_json_schema(ref_template=REF)
    schema["properties"] = {**schema["properties"], **fields}
    return schema


def shapes(
    model: type[BaseModel],
    *variants: tuple[str, Sequence[str], Sequence[str]],
    replace: Mapping[str, Schema] | None = None,
) -> Schema:
    """A body that must take exactly one of several shapes: (title, the fields it requires,
    the fields it may add), `replace` giving some fields' schemas. The model checks the same;
    this tells clients."""
    full = body(model, **(replace or {}))
    fields = full["properties"]
    one_of = []
    for title, required, optional in variants:
        properties = {name: without_null(fields[name]) for name in required}
        properties.update({name: fields[name] for name in optional})
        one_of.append(
            {
                "title": title,
                "type": "object",
                "additionalProperties": False,
                "required": list(required),
                "properties": properties,
            }
        )
    schema: Schema = {"title": model.__name__, "oneOf": one_of}
    if "$defs" in full:
        schema["$defs"] = full["$defs"]
    return schema


RESERVE = shapes(
    ReserveIn,
    ("one product", ["product", "quantity"], ["ttl_seconds", "allow_split"]),
    ("cart", ["lines"], ["ttl_seconds", "allow_split"]),
    replace={"ttl_seconds": TTL_SECONDS},
)
EXTEND = body(ExtendIn, ttl_seconds=TTL_SECONDS)
ORDER = shapes(
    OrderIn,
    ("commit a reservation", ["reservation"], []),
    ("one product", ["product", "quantity"], ["allow_split"]),
    ("cart", ["lines"], ["allow_split"]),
)
RESERVATION_PATH = {"reservation_id": RECORD_ID}
ORDER_PATH = {"order_id": RECORD_ID}
NO_RESERVATION = ("reservation_not_found",)
NOT_LIVE = ("reservation_expired", "reservation_not_live")

WAITLIST_ENTRY = {
    "id": {**RECORD_ID, "description": "the id of the reservation it is handed"},
    "product": {"type": "integer"},
    "quantity": {"type": "integer", "minimum": 1},
    "allow_partial": {"type": "boolean"},
    "joined_at": {"type": "string", "format": "date-time"},
    "expires_at": {
        "type": "string",
        "format": "date-time",
        "description": "it leaves the waitlist unserved then (WAITLIST_TTL)",
    },
}
POSITION = {"type": "integer", "minimum": 1, "description": "1: first in line"}
PRODUCT_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
WAITLIST_TEXT = (
    "While anyone waits for a product, its available units are held back for the waitlist: "
    "a reservation of it by anyone else is 409 `insufficient_stock`. When units come back (a "
    "release, an expiry, a cancellation, a stock adjustment up), the call that gives them "
    "back hands them to the head of the queue as a reservation with the entry's `id` "
    '(`"source": "waitlist"`, held for RESERVATION_TTL), first come first served; an entry '
    "is never handed fewer units than it asks for unless `allow_partial`."
)

OPERATIONS: list[Operation] = [
    Operation(
        "POST", "/api/reservations/", "create_reservation", "Reserve units, all lines or none",
        "reservations", "user", ReservationOut,
        status=201, body=RESERVE, idempotent=True, token=True,
        body_examples={
            "one product": {"product": 1, "quantity": 3},
            "cart": {"lines": [{"product": 1, "quantity": 2}], "ttl_seconds": 600},
        },
        errors={
            404: ("product_not_found", "warehouse_not_found"),
            409: ("insufficient_stock", "limit_exceeded", "too_many_reservations"),
            422: ("invalid_quantity",),
            503: ("id_collision", "cart_timeout"),
        },
        description="201 with the warehouse each unit came from and `expires_at`. "
        "409 `insufficient_stock` lists the shortfall per line in `details.lines`. "
        "A product's purchase limits are checked first: 409 `limit_exceeded` (`details`: "
        "`product`, `rule`, `limit`, `held`, `requested`), 422 `invalid_quantity`; and a "
        "customer holds at most MAX_LIVE_RESERVATIONS_PER_CUSTOMER live reservations "
        "(409 `too_many_reservations`). "
        "With `allow_split` (the default) a line may draw from several warehouses.",
    ),
    Operation(
        "GET", "/api/reservations/", "list_reservations",
        "Your reservations (staff: everyone's), newest first", "reservations", "user",
        ReservationOut,
        listing=True, query=ReservationQuery, query_schemas=LIST_QUERY, consistent_reads=True,
        errors=LIST_ERRORS,
        description="Read from the durable record: see `consistent_with` to read your own "
        "writes.",
    ),
    Operation(
        "GET", "/api/reservations/{reservation_id}/", "get_reservation",
        "One reservation, fresh", "reservations", "user", ReservationOut,
        path_params=RESERVATION_PATH, errors={404: NO_RESERVATION},
        description="Another customer's reservation is 404, like one that does not exist.",
    ),
    Operation(
        "DELETE", "/api/reservations/{reservation_id}/", "release_reservation",
        "Release: give the units back", "reservations", "user", ReservationOut,
        path_params=RESERVATION_PATH, idempotent=True, token=True,
        errors={404: NO_RESERVATION, 409: NOT_LIVE},
    ),
    Operation(
        "POST", "/api/reservations/{reservation_id}/extend/", "extend_reservation",
        "Hold the units longer", "reservations", "user", ReservationOut,
        body=EXTEND, body_required=False, path_params=RESERVATION_PATH, idempotent=True,
        token=True,
        errors={404: NO_RESERVATION, 409: (*NOT_LIVE, "extension_limit_reached")},
        description="`expires_at` becomes now + `ttl_seconds` (the default without a body), "
        "capped by the reservation's maximum lifetime; never earlier than it was (a shorter "
        "value changes nothing, and writes no event).",
    ),
    Operation(
        "POST", "/api/reservations/{reservation_id}/commit/", "commit_reservation",
        "Buy the reserved units: a pending order", "reservations", "user", OrderOut,
        status=201, path_params=RESERVATION_PATH, idempotent=True, token=True,
        errors={
            404: NO_RESERVATION,
            409: (*NOT_LIVE, "currency_mismatch", "order_total_too_large"),
            503: ("id_collision",),
        },
    ),
    Operation(
        "POST", "/api/orders/", "create_order",
        "Commit a reservation, or reserve and commit in one step", "orders", "user", OrderOut,
        status=201, body=ORDER, idempotent=True, token=True,
        body_examples={
            "commit a reservation": {"reservation": "0123456789abcdef0123456789abcdef"},
            "one product": {"product": 1, "quantity": 1},
        },
        errors={
            404: (*NO_RESERVATION, "product_not_found", "warehouse_not_found"),
            409: (
                *NOT_LIVE,
                "insufficient_stock",
                "currency_mismatch",
                "order_total_too_large",
                "limit_exceeded",
            ),
            422: ("invalid_quantity",),
            503: ("id_collision", "cart_timeout"),
        },
    ),
    Operation(
        "GET", "/api/orders/", "list_orders", "Your orders (staff: everyone's), filtered",
        "orders", "user", OrderOut,
        listing=True, query=OrderQuery, consistent_reads=True,
        query_schemas={**LIST_QUERY, "min_total": DECIMAL, "max_total": DECIMAL},
        errors=LIST_ERRORS,
        description="Dates are YYYY-MM-DD UTC days of `created_at`, both ends inclusive; "
        "`status` is case-insensitive; `sort=newest` (the default) or `highest_value`. "
        "Pages are cut by keyset: orders that arrive while you page never shift, repeat or "
        "skip the ones you have not seen. Read from the durable record: see "
        "`consistent_with` to read your own writes.",
    ),
    Operation(
        "GET", "/api/orders/{order_id}/", "get_order", "One order, fresh", "orders", "user",
        OrderOut,
        path_params=ORDER_PATH, errors={404: ("order_not_found",)},
        description="Another customer's order is 404, like one that does not exist.",
    ),
    Operation(
        "PATCH", "/api/orders/{order_id}/", "transition_order",
        "Move an order along its state machine", "orders", "user", OrderOut,
        body=TransitionIn, path_params=ORDER_PATH, idempotent=True, token=True,
        body_examples={"confirm": {"status": "confirmed"}},
        errors={
            403: ("forbidden",),
            404: ("order_not_found",),
            409: ("invalid_transition", "status_changed"),
        },
        description="pending → confirmed | cancelled, confirmed → processing | cancelled, "
        "processing → shipped → delivered. Staff make any move; a customer may only cancel "
        "their own pending order (else 403); 409 `status_changed` if it moved meanwhile. "
        "409 `invalid_transition` lists the allowed moves.",
    ),
    Operation(
        "POST", "/api/products/{id}/waitlist/", "join_waitlist",
        "Wait for units of a sold-out product", "waitlist", "user",
        closed({"entry": closed(WAITLIST_ENTRY), "position": POSITION}),
        status=202, body=WaitlistJoin, path_params={"id": PRODUCT_ID},
        body_examples={"one unit": {"quantity": 1}},
        errors={
            404: ("product_not_found",),
            409: ("in_stock", "already_waiting", "limit_exceeded"),
            422: ("invalid_quantity",),
            503: REDIS_WRITE_UNAVAILABLE,
        },
        description="202 with the entry and its `position`. 409 `in_stock` when the units "
        "are there and nobody waits: reserve them. " + WAITLIST_TEXT,
    ),
    Operation(
        "DELETE", "/api/products/{id}/waitlist/", "leave_waitlist",
        "Leave a product's waitlist", "waitlist", "user",
        closed({"entry": closed(WAITLIST_ENTRY)}),
        path_params={"id": PRODUCT_ID},
        errors={404: ("not_waiting", "product_not_found"), 503: REDIS_WRITE_UNAVAILABLE},
    ),
    Operation(
        "GET", "/api/waitlist/", "list_waitlist", "Your waitlist entries, oldest first",
        "waitlist", "user", closed({**WAITLIST_ENTRY, "position": POSITION}), listing=True,
        description="Read fresh from Redis, one page (the cursors are null). " + WAITLIST_TEXT,
    ),
]  # fmt: skip
