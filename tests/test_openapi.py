"""The OpenAPI document covers every route and is a valid OpenAPI 3.1 document; the API page
and everything it loads come from the app itself (no CDN, no other host)."""

from __future__ import annotations

import copy
import re
from typing import Any

import httpx
import pytest
import schemathesis
from starlette.routing import Route

from engine import errors as engine_errors
from engine.settings import Settings
from tests.api import err
from web.errors import ENGINE_STATUS
from web.openapi.conventions import ref
from web.ratelimit import EXEMPT
from web.routes import ROUTES, docs

METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    # Serving the document and the page reads no database: SQLite alone is enough here.
    return sqlite_url


def documented() -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in docs.document(Settings())["paths"].items()
        for method in item
        if method in METHODS
    }


def routed(*, in_schema: bool) -> set[tuple[str, str]]:
    return {
        (route.path, method)
        for route in ROUTES
        if isinstance(route, Route) and route.include_in_schema == in_schema
        for method in route.methods or ()
        if method != "HEAD"  # Starlette's automatic HEAD for every GET
    }


def test_every_route_is_documented_and_every_operation_routed() -> None:
    assert all(isinstance(route, Route) for route in ROUTES)
    assert documented() == routed(in_schema=True)
    # Only the API page's own files are left out: they are not operations of the API.
    assert routed(in_schema=False) == {("/api/docs/static/{name}", "GET")}


def test_the_document_is_valid_openapi_3_1() -> None:
    document = docs.document(Settings())
    schema = schemathesis.openapi.from_dict(copy.deepcopy(document))

    schema.validate()  # against the OpenAPI 3.1 meta-schema
    assert document["openapi"] == "3.1.0"
    assert len(list(schema.get_all_operations())) == len(documented())


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


def test_every_reference_resolves_and_every_path_parameter_is_declared() -> None:
    document = docs.document(Settings())

    for target in _refs(document):
        assert target.startswith("#/components/"), target
        _, _, kind, name = target.split("/", 3)
        assert name in document["components"][kind], target
    names = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(names) == len(set(names))
    for path, item in document["paths"].items():
        for op in item.values():
            declared = {p["name"] for p in op["parameters"] if p.get("in") == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), path


def test_every_operation_has_the_envelope_the_request_id_and_its_errors() -> None:
    document = docs.document(Settings())
    for path, item in document["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            success = [s for s in responses if s.startswith("2")]
            assert len(success) == 1, (method, path)
            assert op["parameters"][0] == {"$ref": "#/components/parameters/X-Request-ID"}
            for status, response in responses.items():
                assert "X-Request-ID" in response["headers"], (method, path, status)
                if status == "304":  # a conditional read's: no body, the tag it matched
                    assert "content" not in response, (method, path)
                    assert "ETag" in response["headers"], (method, path)
                    assert "ETag" in responses["200"]["headers"], (method, path)
                    assert {"$ref": "#/components/parameters/If-None-Match"} in op["parameters"]
                elif not status.startswith("2"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema["allOf"][0] == ref("ErrorEnvelope")
            if op.get("security"):
                assert "401" in responses, (method, path)
            if "requestBody" in op:
                assert {"400", "413", "415"} <= set(responses), (method, path)


def test_engine_errors_are_documented_with_the_status_the_app_gives_them() -> None:
    status_of = {cls.code: status for cls, status in ENGINE_STATUS.items()}
    status_of[engine_errors.InvalidInput.code] = 400
    seen = set()
    for item in docs.document(Settings())["paths"].values():
        for op in item.values():
            for status, response in op["responses"].items():
                if status.startswith("2") or status == "304":  # no error body
                    continue
                codes = response["content"]["application/json"]["schema"]["allOf"][1]
                for code in codes["properties"]["error"]["properties"]["code"]["enum"]:
                    if code in status_of:
                        seen.add(code)
                        assert int(status) == status_of[code], (code, status)
    # Every refusal of the engine is documented somewhere.
    assert seen == set(status_of)


def test_rate_limit_errors_follow_the_limiter() -> None:
    exempt = {op.path for op in docs.OPERATIONS if not op.rate_limited}

    assert exempt == set(EXEMPT)


def test_the_consistency_token_and_idempotency_are_described() -> None:
    document = docs.document(Settings())
    reserve = document["paths"]["/api/reservations/"]
    orders = document["paths"]["/api/orders/"]

    assert "X-Consistency-Token" in reserve["post"]["responses"]["201"]["headers"]
    assert {"$ref": "#/components/parameters/Idempotency-Key"} in reserve["post"]["parameters"]
    for listing in (reserve["get"], orders["get"]):
        names = {p.get("name") for p in listing["parameters"]}
        assert "consistent_with" in names
        assert "X-Consistency" in listing["responses"]["200"]["headers"]
    assert "consistent_with" in document["info"]["description"]


async def test_openapi_json_is_served(client: httpx.AsyncClient, app_settings: Settings) -> None:
    response = await client.get("/openapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == docs.document(app_settings)
    assert response.headers["x-request-id"]


async def test_the_api_page_loads_everything_from_the_app(client: httpx.AsyncClient) -> None:
    page = await client.get("/api/docs/")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'id="swagger-ui"' in html
    assert not re.search(r"https?://|//[a-z]", html), "the page names another host"
    loaded = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(loaded) == 5
    kinds = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for url in loaded:
        assert url.startswith("/api/docs/static/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(kinds[url[url.rindex(".") :]]), url
        assert len(asset.content) > 0
    init = await client.get("/api/docs/static/init.js")
    assert not re.search(r"https?://", init.text)
    assert 'url: "/openapi.json"' in init.text
    assert "validatorUrl: null" in init.text  # no badge fetched from the validator's host


@pytest.mark.parametrize("name", ["index.html", "swagger-initializer.js", "..%2Fpyproject.toml"])
async def test_only_the_page_files_are_served(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"/api/docs/static/{name}")

    assert response.status_code == 404
    assert err(response)["code"] == "not_found"
