"""What every response shares: the envelope, the request id, clear errors, never HTML."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette

from tests.api import bearer, data, err


async def test_healthz_and_readyz(client: httpx.AsyncClient, app: Starlette) -> None:
    health = await client.get("/healthz")
    ready = await client.get("/readyz")
    customer = await client.get("/readyz", headers=bearer(app, "2"))
    staff = await client.get("/readyz", headers=bearer(app, "1", staff=True))

    assert health.status_code == 200
    assert data(health) == {"status": "ok"}
    assert ready.status_code == 200
    # the figures are for staff; anyone else learns ready or not (tests/test_api_readyz.py)
    assert data(ready) == data(customer) == {"status": "ready"}
    assert data(staff) == {"status": "ready", "outbox_backlog": 0}


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    made = await client.get("/healthz")
    bad = await client.get("/healthz", headers={"X-Request-ID": "no spaces <allowed>"})

    assert given.headers["x-request-id"] == "abc-123"
    assert given.json()["request_id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 36
    assert bad.headers["x-request-id"] != "no spaces <allowed>"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nowhere", 404, "not_found"),
        ("POST", "/healthz", 405, "method_not_allowed"),
    ],
)
async def test_unknown_routes_get_json_errors(
    client: httpx.AsyncClient, method: str, path: str, status: int, code: str
) -> None:
    response = await client.request(method, path)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert err(response)["code"] == code


async def test_oversized_bodies_are_refused(client: httpx.AsyncClient, app: Starlette) -> None:
    response = await client.post(
        "/healthz", content=b"x" * 70_000, headers={"content-type": "application/json"}
    )

    assert response.status_code == 413
    assert err(response)["code"] == "payload_too_large"
