"""The HTTP layer's shortcuts give what the general way gives: the body pattern decodes what
json.loads decodes (and declines the rest), the reservation's JSON is the model's, a route
called from the middleware is the one the router picks, and request ids are UUIDs."""

from __future__ import annotations

import datetime
import decimal
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.routing import Match

from engine.models import Reservation, ReservationStatus, ReservedLine, ms_to_datetime
from web import responses
from web.bodies import product_quantity
from web.middleware import direct_routes
from web.responses import Envelope, iso, iso_ms
from web.routes import ROUTES
from web.schemas.orders import reservation_data, reservation_out

DECODED = [
    b'{"product":1,"quantity":3}',
    b'{"product": 12, "quantity": 1}',
    b' \r\n\t{ "product" :\t7 ,\n"quantity":0 } \n',
    b'{"product":0,"quantity":999999999999999999}',
    b'{"product":123456789012345678,"quantity":2}',
]
DECLINED = [
    b'{"quantity":3,"product":1}',
    b'{"product":1,"quantity":3,"ttl_seconds":5}',
    b'{"product":01,"quantity":3}',
    b'{"product":-1,"quantity":3}',
    b'{"product":1.0,"quantity":3}',
    b'{"product":1e2,"quantity":3}',
    b'{"product":"1","quantity":3}',
    b'{"product":1234567890123456789,"quantity":3}',
    b'{"product":1,"quantity":3,"quantity":4}',
    b'{"product":1,"quantity":3}x',
    b'\xef\xbb\xbf{"product":1,"quantity":3}',
    b'{"product":1,\x0b"quantity":3}',
    b'{"product":1,"quantity":3}\x0c',
    b"",
    b"[]",
]


@pytest.mark.parametrize("raw", DECODED)
def test_the_common_body_decodes_as_json_loads_does(raw: bytes) -> None:
    found = product_quantity(raw)
    assert found == json.loads(raw)
    assert found is not None
    assert all(type(v) is int for v in found.values())


@pytest.mark.parametrize("raw", DECLINED)
def test_any_other_body_is_left_to_json_loads(raw: bytes) -> None:
    assert product_quantity(raw) is None


RESERVATIONS = [
    Reservation(
        "0123456789abcdef0123456789abcdef",
        "7",
        ReservationStatus.ACTIVE,
        1796164967033,
        1796165567999,
        (ReservedLine("779", "main", 1),),
    ),
    Reservation(
        "f" * 32,
        'user-\u00e9"x',
        ReservationStatus.COMMITTED,
        1,
        999,
        (ReservedLine("bench-1", "w\u00e9st", 3), ReservedLine("0012", "main", 2)),
        order_id="a" * 32,
        replayed=True,
        event_id="p0-1-0",
    ),
    Reservation("e" * 32, "1", ReservationStatus.EXPIRED, 1796164967000, 1796164968001, ()),
]


@pytest.mark.parametrize("reservation", RESERVATIONS)
def test_a_reservations_json_is_its_models(reservation: Reservation) -> None:
    model: dict[str, Any] = reservation_out(reservation).model_dump(mode="json")
    assert reservation_data(reservation) == model

    def text(value: Any) -> str:
        return json.dumps({"data": value}, separators=(",", ":"), default=str)

    assert text(reservation_data(reservation)) == text(model)


def test_a_route_called_directly_is_the_one_the_router_picks() -> None:
    direct = direct_routes(ROUTES)
    assert ("POST", "/api/reservations/") in direct
    for (method, path), route in direct.items():
        probe = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
        first = next(r for r in ROUTES if r.matches(probe)[0] is Match.FULL)
        assert first is route
        assert not route.param_convertors


def test_the_envelope_is_the_json_document_json_dumps_would_write() -> None:
    body = {
        "request_id": "r",
        "data": {"name": "caf\u00e9", "at": datetime.datetime(2026, 1, 1), "n": None},
        "price": decimal.Decimal("1.50"),
    }
    sent = bytes(Envelope(body).body)
    assert json.loads(sent) == json.loads(json.dumps(body, default=str))
    assert "caf\u00e9".encode() in sent  # UTF-8, not escaped
    # what orjson refuses, json writes: a key that is not a str, an int past 64 bits
    odd = {"request_id": "r", "data": {1: 2**70}}
    assert json.loads(bytes(Envelope(odd).body)) == {"request_id": "r", "data": {"1": 2**70}}


def test_a_time_in_ms_is_written_the_same_once_its_seconds_are_kept_and_after() -> None:
    """iso_ms keeps each second's text (web/responses.py); past the kept count it starts
    afresh: every time is written as `iso` writes it, before, during and after."""
    start = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    for n in range(2 * responses._SECONDS_KEPT + 10):
        ms = start + n * 1_001
        exact = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
            milliseconds=ms
        )
        assert iso_ms(ms) == iso(exact)
    assert len(responses._seconds_text) <= responses._SECONDS_KEPT


@given(st.integers(min_value=0, max_value=253_402_300_799_999))  # to 9999-12-31T23:59:59.999
def test_a_time_in_ms_is_written_to_the_millisecond(ms: int) -> None:
    exact = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(milliseconds=ms)
    assert ms_to_datetime(ms) == exact
    assert iso_ms(ms) == iso(exact)
