"""The published contract says exactly what the server accepts: a request that /openapi.json
allows is taken (or answered with a documented conflict of state: 404, 409), one it forbids is
refused, and a method it does not list is 405 with `Allow`. tests/test_schemathesis.py checks
this broadly with generated requests; here each kind of mismatch those runs found is pinned:
the document is asked (with jsonschema_rs, the validator schemathesis judges with) and then the
server, request by request."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Any

import httpx
import jsonschema_rs
import pytest
from starlette.applications import Starlette

from engine.models import CallContext
from engine.settings import Settings
from tests.api import bearer, data, err, running
from tests.catalog_support import create, svc
from web.app import create_app
from web.openapi.conventions import Schema
from web.pagination import WIDTH, cursor_pattern, encode_cursor
from web.routes import docs

SYSTEM = CallContext(actor="system", request_id="setup", staff=True)
RECORD = "0123456789abcdef0123456789abcdef"


def allows(document: Schema, schema: Schema, value: Any) -> bool:
    """Whether `value` is valid against `schema`, a part of `document` (its $refs resolved)."""
    root = {**schema, "components": document["components"]}
    return bool(jsonschema_rs.validator_for(root, validate_formats=True).is_valid(value))


def body_schema(document: Schema, method: str, path: str) -> Schema:
    schema: Schema = document["paths"][path][method]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    return schema


def parameter(document: Schema, method: str, path: str, name: str) -> Schema:
    for param in document["paths"][path][method]["parameters"]:
        if "$ref" in param:
            param = document["components"]["parameters"][param["$ref"].rsplit("/", 1)[1]]
        if param["name"] == name:
            found: Schema = param["schema"]
            return found
    raise KeyError(name)


@pytest.fixture
def staff(app: Starlette) -> dict[str, str]:
    return bearer(app, "1", staff=True)


@pytest.fixture
async def product(client: httpx.AsyncClient, staff: dict[str, str]) -> int:
    """A USD product with 10 units in main."""
    made: int = (await create(client, staff, "CONTRACT-1", total_stock=10))["id"]
    return made


# -- 405 ----------------------------------------------------------------------------------------


async def test_options_on_every_path_is_405_with_allow_listing_its_methods(
    client: httpx.AsyncClient, app_settings: Settings
) -> None:
    document = docs.document(app_settings)
    for path, item in document["paths"].items():
        url = path.format(id=1, reservation_id=RECORD, order_id=RECORD)
        methods = {method.upper() for method in item}
        response = await client.options(url)

        assert response.status_code == 405, path
        assert err(response)["code"] == "method_not_allowed"
        allowed = set(response.headers["allow"].split(", "))
        assert allowed == methods | ({"HEAD"} if "GET" in methods else set()), path


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/orders/", "GET, HEAD, POST"),
        ("POST", "/api/products/1/", "DELETE, GET, HEAD, PATCH, PUT"),
        ("PUT", f"/api/reservations/{RECORD}/", "DELETE, GET, HEAD"),
        ("GET", "/api/token/", "POST"),
    ],
)
async def test_any_method_a_path_does_not_take_is_405_with_all_its_methods(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path)

    assert response.status_code == 405
    assert response.headers["allow"] == allow


# -- headers ------------------------------------------------------------------------------------


async def test_any_request_id_is_allowed_and_one_that_is_not_a_token_is_replaced(
    client: httpx.AsyncClient, app_settings: Settings
) -> None:
    document = docs.document(app_settings)
    schema = parameter(document, "get", "/healthz", "X-Request-ID")

    odd = await client.get("/healthz", headers={"X-Request-ID": "not a token <>"})
    empty = await client.get("/healthz", headers={"X-Request-ID": ""})

    assert allows(document, schema, "not a token <>")
    assert allows(document, schema, "")
    for response in (odd, empty):
        assert response.status_code == 200
        assert len(response.headers["x-request-id"]) == 36


# -- bodies: the document allows it exactly when the server takes it --------------------------

CREATE = {"name": "Ticket", "sku": "TICKET-9"}

BODIES: list[tuple[str, str, dict[str, Any], bool, int]] = [
    # (method, path, body, the document allows it, the server's status)
    ("post", "/api/products/{id}/stock/", {"quantity": 0, "reason": "correction"}, False, 400),
    ("post", "/api/products/{id}/stock/", {"quantity": -1, "reason": "received"}, False, 400),
    ("post", "/api/products/{id}/stock/", {"quantity": 1, "reason": "lost"}, False, 400),
    ("post", "/api/products/{id}/stock/", {"quantity": 5.0, "reason": "received"}, True, 200),
    ("post", "/api/products/{id}/stock/", {"quantity": 2.5, "reason": "received"}, False, 400),
    ("post", "/api/products/{id}/stock/", {"quantity": -2, "reason": "correction"}, True, 200),
    ("patch", "/api/products/{id}/", {}, False, 400),
    ("patch", "/api/products/{id}/", {"name": None}, False, 400),
    ("patch", "/api/products/{id}/", {"name": " \t "}, False, 400),
    ("patch", "/api/products/{id}/", {"name": "x" * 199 + "  "}, False, 400),
    ("patch", "/api/products/{id}/", {"name": "  Renamed  "}, True, 200),
    ("patch", "/api/products/{id}/", {"description": "a\x00b"}, False, 400),
    # Fits a currency (KWD has three places), not this USD product: a conflict with it.
    ("patch", "/api/products/{id}/", {"price": "1.001"}, True, 409),
    ("patch", "/api/products/{id}/", {"price": "1.0001"}, False, 400),
    ("put", "/api/products/{id}/", {**CREATE, "price": "100000000000", "description": ""},
     True, 409),
    ("post", "/api/products/", {**CREATE, "price": "2419663700568"}, False, 400),
    ("post", "/api/products/", {**CREATE, "price": "19.999"}, False, 400),
    ("post", "/api/products/", {**CREATE, "price": "19.999", "currency": "KWD"}, True, 201),
    ("post", "/api/products/", {**CREATE, "price": "19.5", "currency": "JPY"}, False, 400),
    ("post", "/api/products/", {**CREATE, "price": "19", "currency": "JPY"}, True, 201),
    ("post", "/api/products/", {**CREATE, "price": "1.99", "currency": None}, True, 201),
    ("post", "/api/products/", {**CREATE, "price": "1", "total_stock": 7.0}, True, 201),
    ("post", "/api/products/",
     {**CREATE, "price": "1", "total_stock": 1, "stock": [{"warehouse": "main", "quantity": 1}]},
     False, 400),
    ("post", "/api/products/",
     {**CREATE, "price": "1", "total_stock": None, "stock": [{"warehouse": "main", "quantity": 1}]},
     True, 201),
    ("post", "/api/warehouses/", {"id": "east", "name": "East", "priority": -5.0}, True, 201),
    ("post", "/api/warehouses/", {"id": "east", "name": "   "}, False, 400),
    ("post", "/api/reservations/", {"product": "{id}", "quantity": 2.0}, True, 201),
    ("post", "/api/reservations/", {"product": "{id}", "quantity": 1, "ttl_seconds": 0.05},
     True, 201),
    ("post", "/api/reservations/", {"product": "{id}", "quantity": 1, "ttl_seconds": 0.0499},
     False, 400),
    ("post", "/api/reservations/", {"product": "{id}", "quantity": 1, "ttl_seconds": 3600},
     True, 201),
    ("post", "/api/reservations/", {"product": "{id}", "quantity": 1, "ttl_seconds": 3600.5},
     False, 400),
    ("post", "/api/reservations/",
     {"lines": [{"product": "{id}", "quantity": 1, "warehouse": "no|pipes"}]}, False, 400),
    ("post", "/api/orders/", {"product": "{id}", "quantity": 1.0, "allow_split": True}, True, 201),
    ("post", "/api/token/", {"username": "alice", "password": "pass\x00word"}, False, 400),
]  # fmt: skip


def _filled(value: Any, pid: int) -> Any:
    """The body with the product's id where it says "{id}"."""
    if value == "{id}":
        return pid
    if isinstance(value, dict):
        return {k: _filled(v, pid) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, pid) for v in value]
    return value


@pytest.mark.parametrize(("method", "path", "body", "allowed", "status"), BODIES)
async def test_the_document_allows_a_body_exactly_when_the_server_takes_it(
    client: httpx.AsyncClient,
    app_settings: Settings,
    staff: dict[str, str],
    product: int,
    method: str,
    path: str,
    body: dict[str, Any],
    allowed: bool,
    status: int,
) -> None:
    document = docs.document(app_settings)
    sent = _filled(body, product)

    response = await client.request(method, path.format(id=product), json=sent, headers=staff)

    assert allows(document, body_schema(document, method, path), sent) is allowed
    assert response.status_code == status, response.text
    if status == 409:
        assert err(response)["code"] == "price_currency_mismatch"
        assert err(response)["details"] == {"price": sent["price"], "currency": "USD"}


async def test_integral_numbers_are_the_integers_they_are(
    client: httpx.AsyncClient, staff: dict[str, str], product: int
) -> None:
    held = await client.post(
        "/api/reservations/", json={"product": float(product), "quantity": 3.0}, headers=staff
    )
    adjusted = await client.post(
        f"/api/products/{product}/stock/",
        json={"quantity": -2.0, "reason": "damaged"},
        headers=staff,
    )

    assert [(li["product"], li["quantity"]) for li in data(held)["lines"]] == [(product, 3)]
    assert data(adjusted)["adjustment"]["quantity"] == -2
    assert data(adjusted)["product"]["available_stock"] == 5


async def test_a_warehouse_named_twice_in_the_opening_stock_gets_both_quantities(
    client: httpx.AsyncClient, staff: dict[str, str]
) -> None:
    stock = [{"warehouse": "main", "quantity": 2}, {"warehouse": "main", "quantity": 5}]

    made = await create(client, staff, "TWICE-1", stock=stock)

    assert [(w["warehouse"], w["total"]) for w in made["warehouses"]] == [("main", 7)]


async def test_the_document_states_the_configured_ttl_bounds(
    app_settings: Settings, clean_redis: None
) -> None:
    settings = dataclasses.replace(
        app_settings,
        reservation_ttl_min_ms=20_000,
        reservation_ttl_ms=60_000,
        reservation_ttl_max_ms=120_000,
    )
    app = create_app(settings)
    async with running(app) as client:
        await svc(app).engine.setup_product("1", SYSTEM, price=100, stock={"main": 5})
        document = (await client.get("/openapi.json")).json()
        answers = {
            ttl: (
                await client.post(
                    "/api/reservations/",
                    json={"product": 1, "quantity": 1, "ttl_seconds": ttl},
                    headers=bearer(app, "7"),
                )
            ).status_code
            for ttl in (19.999, 20, 120, 120.001)
        }

    ttl_schema = document["components"]["schemas"]["TtlSeconds"]
    assert (ttl_schema["minimum"], ttl_schema["maximum"]) == (20, 120)
    assert answers == {19.999: 400, 20: 201, 120: 201, 120.001: 400}


# -- queries ------------------------------------------------------------------------------------

LISTS = [
    ("/api/products/", (int,)),
    ("/api/audit-logs/", (datetime, int)),
    ("/api/reservations/", (datetime, str)),
    ("/api/orders/", (datetime, str)),
    ("/api/orders/?sort=highest_value", (int, str)),
]


@pytest.mark.parametrize(("url", "kinds"), LISTS)
async def test_every_cursor_of_the_documented_form_is_a_position_and_no_other(
    client: httpx.AsyncClient,
    app_settings: Settings,
    staff: dict[str, str],
    url: str,
    kinds: tuple[type, ...],
) -> None:
    document = docs.document(app_settings)
    schema = parameter(document, "get", url.split("?")[0], "cursor")
    joiner = "&" if "?" in url else "?"
    # The first and last positions there are (times beyond a datetime's range among them),
    # and one in between.
    positions = [d + "".join(c * WIDTH[k] for k in kinds) for d in "np" for c in "0f7"]
    others = ["", "x", "n" + "0" * 15, "N" + "0" * 48, positions[0] + "0"]

    answers = {
        cursor: await client.get(f"{url}{joiner}cursor={cursor}", headers=staff)
        for cursor in positions + others
    }

    assert schema["pattern"] == cursor_pattern(kinds)
    for cursor in positions:
        assert allows(document, schema, cursor), cursor
        assert answers[cursor].status_code == 200, (cursor, answers[cursor].text)
        assert data(answers[cursor]) == []
    for cursor in others:
        assert not allows(document, schema, cursor), cursor
        assert answers[cursor].status_code == 400, cursor
        assert err(answers[cursor]) == {
            "code": "invalid_cursor",
            "message": "the cursor is not one this API gave out",
            "details": {},
        }


async def test_the_cursors_given_out_have_the_documented_form(
    client: httpx.AsyncClient, app_settings: Settings, staff: dict[str, str]
) -> None:
    for n in range(3):
        await create(client, staff, f"PAGE-{n}")
    document = docs.document(app_settings)
    pattern = parameter(document, "get", "/api/products/", "cursor")["pattern"]

    first = (await client.get("/api/products/?limit=1")).json()
    second = (await client.get(f"/api/products/?limit=1&cursor={first['next']}")).json()

    for cursor in (first["next"], second["next"], second["previous"]):
        assert re.fullmatch(pattern, cursor), cursor
    assert second["data"][0]["sku"] == "PAGE-1"
    assert encode_cursor([second["data"][0]["id"]], "n") == second["next"]


@pytest.mark.parametrize(
    "query",
    [
        "/api/orders/?start_date=2024-01-03&end_date=2024-01-02",
        "/api/orders/?min_total=10&max_total=9.99",
        "/api/audit-logs/?since=2030-01-02T00:00:00Z&until=2030-01-01T00:00:00Z",
    ],
)
async def test_bounds_with_nothing_between_them_are_an_empty_list(
    client: httpx.AsyncClient, staff: dict[str, str], query: str
) -> None:
    response = await client.get(query, headers=staff)

    assert response.status_code == 200
    assert data(response) == []


async def test_a_number_is_no_audit_time(
    client: httpx.AsyncClient, app_settings: Settings, staff: dict[str, str]
) -> None:
    document = docs.document(app_settings)
    schema = parameter(document, "get", "/api/audit-logs/", "until")

    response = await client.get("/api/audit-logs/?until=0.5", headers=staff)

    assert not allows(document, schema, "0.5")
    assert response.status_code == 400
    assert err(response)["details"]["errors"][0]["field"] == "until"


@pytest.mark.parametrize(
    ("token", "allowed"),
    [("p0-0-0", True), ("p000000-0-0", True), ("p1-0-0", False), ("p0000000-0-0", False)],
)
async def test_a_consistency_token_names_one_of_the_configured_partitions(
    client: httpx.AsyncClient,
    app_settings: Settings,
    staff: dict[str, str],
    token: str,
    allowed: bool,
) -> None:
    document = docs.document(app_settings)
    schema = parameter(document, "get", "/api/orders/", "consistent_with")

    response = await client.get(f"/api/orders/?consistent_with={token}", headers=staff)

    assert app_settings.partitions == 1
    assert allows(document, schema, token) is allowed
    assert response.status_code == (200 if allowed else 400)


def test_every_text_a_request_may_carry_refuses_nul() -> None:
    """Each string of a body or a query says what it takes: a pattern, a format or an enum
    (the server refuses NUL in every text; a string without a pattern of its own gets
    NO_NUL)."""
    document = docs.document(Settings())
    schemas = document["components"]["schemas"]
    loose: list[str] = []
    seen: set[str] = set()

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            target = node.get("$ref", "")
            if target.startswith("#/components/schemas/") and target not in seen:
                seen.add(target)
                name = target.rsplit("/", 1)[1]
                walk(schemas[name], name)
            if node.get("type") == "string" and not node.keys() & {"pattern", "format", "enum"}:
                loose.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    for path, item in document["paths"].items():
        for method, op in item.items():
            for param in op["parameters"]:
                if param.get("in") == "query":
                    walk(param["schema"], f"{method} {path} {param['name']}")
            if "requestBody" in op:
                walk(op["requestBody"], f"{method} {path} body")
    assert loose == []
    assert {"#/components/schemas/LoginBody", "#/components/schemas/OpeningStock"} <= seen
