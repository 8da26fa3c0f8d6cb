"""The values the Lua scripts keep in Redis, as Python builds them when it restores one
(`inventory rebuild`, `inventory reconcile --fix`): a product's settings in the products
hash, a live reservation's entry in the live hash, and a reservation's or an order's record
hash; and how an idempotency record's value splits. Times are milliseconds; lists are compact
JSON, as cjson writes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def product_meta(
    price: int, currency: str, warehouses: Iterable[Any], limits: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A product's settings as the products hash holds them (setup_product.lua): warehouses
    as [name, priority], lower priority first; its purchase limits, when it has any."""
    ordered = sorted(([str(w), int(n)] for w, n in warehouses), key=lambda x: (x[1], x[0]))
    meta: dict[str, Any] = {"price": int(price), "currency": str(currency), "warehouses": ordered}
    set_limits = {n: int(v) for n, v in (limits or {}).items() if v is not None}
    if set_limits:
        meta["limits"] = set_limits
    return meta


def counted_json(counted: Sequence[str], capped: bool) -> str:
    """What a reservation counts against its customer's limits, as lua/limits.lua counted_json
    writes it after the live entry's lines: its products with a max_per_customer (`counted`),
    and whether it is one of the customer's live reservations (`capped`); '' for nothing."""
    return (',"held":' + compact(list(counted)) if counted else "") + (',"n":1' if capped else "")


def counted_record(counted: Sequence[str], capped: bool) -> str:
    """The same as the record's 'counted' field (reserve.lua): a JSON object."""
    return "{" + counted_json(counted, capped)[1:] + "}"


def live_entry(
    owner: str, lines: list[Any], counted: Sequence[str] = (), capped: bool = False
) -> str:
    """The live hash's value, as reserve.lua writes it: with what the reservation counted
    against its customer's limits."""
    extra = counted_json(counted, capped)
    return '{"owner":' + compact(owner) + ',"lines":' + compact(lines) + extra + "}"


def record_data(created_at: int, lines: list[Any], request_id: str, counted: str = "{}") -> str:
    """A reservation record's 'data' field: what never changes after its start, packed in one
    field (reserve.lua and lua/holds.lua record_data write the same text). `counted`: a JSON
    object's text (`counted_record`)."""
    return (
        f'{{"created_at":{int(created_at)},"lines":{compact(lines)},'
        f'"request_id":{compact(request_id)},"counted":{counted}}}'
    )


def reservation_fields(
    owner: str,
    created_at: int,
    expires_at: int,
    lines: list[Any],
    request_id: str,
    counted: str = "{}",
) -> dict[str, str | int]:
    """A live reservation's record hash, with the fields reserve.lua writes (times in ms): its
    owner, status and expires_at (which its calls read or change) as fields, the rest in
    'data' (`record_data`). Its key names its id."""
    return {
        "owner": owner,
        "status": "active",
        "expires_at": int(expires_at),
        "data": record_data(created_at, lines, request_id, counted),
    }


def record_lines(lines: str | bytes | None, data: str | bytes | None) -> list[Any]:
    """A reservation record's lines from its 'lines' and 'data' fields (HMGET: either form,
    `reservation_record`); [] for none."""
    if data:
        found: list[Any] = json.loads(data)["lines"]
        return found
    return json.loads(lines) if lines else []


def reservation_record(rid: str, fields: Mapping[str, str]) -> dict[str, str]:
    """A reservation's record hash as read (HGETALL), with its 'data' unpacked into the fields
    a record written before it kept them in: id, created_at, lines and counted (JSON text),
    request_id; its other fields as they are. {} stays {}."""
    if not fields:
        return {}
    record = dict(fields)
    record["id"] = rid
    packed = record.pop("data", None)
    if packed is not None:
        data = json.loads(packed)
        record["created_at"] = str(int(data["created_at"]))
        record["lines"] = compact(data["lines"])
        record["request_id"] = str(data.get("request_id") or "")
        record["counted"] = compact(data.get("counted") or {})
    return record


def order_fields(
    oid: str,
    *,
    owner: str,
    status: str,
    reservation: str,
    lines: list[Any],
    total: int,
    currency: str,
    created_at: int,
    updated_at: int,
) -> dict[str, str | int]:
    """An order's record hash, as lib.lua's write_order (and transition.lua) leave it."""
    return {
        "id": oid,
        "owner": owner,
        "status": status,
        "reservation_id": reservation,
        "lines": compact(lines),
        "total": int(total),
        "currency": currency,
        "created_at": int(created_at),
        "updated_at": int(updated_at),
    }


def idempotency_parts(value: str) -> tuple[str, str]:
    """(fingerprint, reply) of an idempotency record's value, as lib.lua idem_store writes it:
    the request's fingerprint (hex), then the first reply (a JSON object: it starts at the
    first '{')."""
    i = value.index("{")
    return value[:i], value[i:]
