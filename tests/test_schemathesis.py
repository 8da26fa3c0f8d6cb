"""Property-based: schemathesis reads `/openapi.json` from the real app (uvicorn on a free
port, with its lifespan, the test Redis and a fresh Postgres database), generates requests for
every operation, valid ones and invalid ones, with a valid token, and runs every check it has
(`--checks all`): no 5xx; every answer has a documented status, media type, headers and
schema; every request the document allows is accepted (or answered 401/403/404/409/429),
every request it forbids is refused; a method the document does not list is 405 with `Allow`;
and, in the stateful phase, created records can be read back.

The run is `schemathesis run` (its examples, coverage, fuzzing and stateful phases) in a
subprocess: the CLI is schemathesis's steadiest interface (its pytest loader for a schema made
by a fixture does not work with pytest 9.2). Each run has a fixed seed. On demand,
`SCHEMATHESIS_SEED=random` draws one per run (a failure names it), `SCHEMATHESIS_SEED=<n>`
repeats one, and `SCHEMATHESIS_MAX_EXAMPLES` raises the cases per operation (40).
tests/schemathesis_hooks.py makes each Idempotency-Key unique, as a client's are.

Three runs: every operation with a staff token and with a customer's (ids mostly made up, so
mostly 404s), then the operations on one record with the ids of records made beforehand, so
that answers about real products, reservations and orders are checked too. The runs over
every operation make 10 cases per operation and phase in the normal run (`[few]`) and all of
them with `-m slow` (`[all]`). A few minutes in all; select them with `-m schemathesis`, skip
them with `-m "not schemathesis"`.

Below them, the 5xx and the contract mismatches the runs found, each pinned by a plain test
(the rest are in tests/test_api_contract.py).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from engine.settings import Settings
from tests.api import Server, bearer, err
from tests.test_api_reservations import drain
from web import consistency

ROOT = Path(__file__).resolve().parents[1]
# Each run's seed, so that a run is repeatable; SCHEMATHESIS_SEED overrides them (above).
SEEDS = {"staff": 20240611, "customer": 20240612, "records": 20240613}
# Cases per operation and phase; SCHEMATHESIS_MAX_EXAMPLES asks for more.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "40"))
# The runs over every operation: the normal run makes fewer cases (the examples and coverage
# phases are whole either way; fuzzing and stateful draw fewer), `-m slow` makes them all.
FEW_EXAMPLES = 10
EXAMPLES = [
    pytest.param(FEW_EXAMPLES, id="few"),
    pytest.param(MAX_EXAMPLES, id="all", marks=pytest.mark.slow),
]
PRODUCT_OPERATIONS = ("get_product", "put_product", "patch_product", "delete_product")


@dataclass
class Api:
    url: str
    staff: str  # an Authorization header
    customer: str
    ids: dict[str, Any]


def _records(client: httpx.Client) -> dict[str, Any]:
    """A product with stock, a reservation for each operation on one, and an order."""

    def made(response: httpx.Response) -> Any:
        assert response.status_code == 201, response.text
        return response.json()["data"]

    body = {"name": "Ticket", "sku": "TICKET-1", "price": "10.00", "total_stock": 1000}
    product = made(client.post("/api/products/", json=body))["id"]
    reservations = {
        name: made(client.post("/api/reservations/", json={"product": product, "quantity": 1}))
        for name in ("get", "release", "extend", "commit")
    }
    order = made(client.post("/api/orders/", json={"product": product, "quantity": 1}))
    return {
        "product": product,
        "reservations": {name: r["id"] for name, r in reservations.items()},
        "order": order["id"],
    }


@pytest.fixture
def api(
    settings: Settings, pg_url: str, clean_redis: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Api]:
    app_settings = dataclasses.replace(
        settings,
        database_url=pg_url,
        jwt_keys="test:" + "k" * 40,
        rate_limit_per_second=0,  # else the run turns into a study of 429s
    )
    # No worker drains here, so a list asked to wait for a write would wait its full 2 s.
    monkeypatch.setattr(consistency, "WAIT_S", 0.05)
    server = Server(app_settings)
    with server as url:
        staff = bearer(server.app, "1", staff=True, name="schemathesis")
        customer = bearer(server.app, "2", name="customer")
        with httpx.Client(base_url=url, headers=staff) as client:
            ids = _records(client)
        yield Api(url, staff["Authorization"], customer["Authorization"], ids)


def _toml(operations: list[tuple[str, dict[str, Any]]]) -> str:
    """A schemathesis.toml fixing path parameters per operation (JSON strings and numbers are
    valid TOML values)."""
    lines: list[str] = []
    for operation_id, parameters in operations:
        lines += ["[[operations]]", f"include-operation-id = {json.dumps(operation_id)}"]
        lines += [f"parameters.{json.dumps(k)} = {json.dumps(v)}" for k, v in parameters.items()]
        lines.append("")
    return "\n".join(lines)


def _seed(run: str) -> int:
    chosen = os.environ.get("SCHEMATHESIS_SEED", "")
    if chosen == "random":
        return random.randrange(2**32)
    return int(chosen) if chosen else SEEDS[run]


def _run(
    api: Api,
    tmp_path: Path,
    run: str,
    *args: str,
    token: str,
    config: str = "",
    examples: int = MAX_EXAMPLES,
) -> None:
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(config)
    seed = _seed(run)
    command = [
        sys.executable, "-m", "schemathesis.cli",
        "--config-file", str(config_file),
        "--no-color",
        "run", f"{api.url}/openapi.json",
        "--header", f"Authorization: {token}",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--mode", "all",
        "--max-examples", str(examples),
        "--seed", str(seed),
        "--workers", "1",
        "--request-timeout", "30",
        "--warnings", "off",
        # a live stream never ends: tests/test_live_stock.py holds it to the document
        "--exclude-operation-id", "stream_product",
        "--exclude-operation-id", "stream_products",
        *args,
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    log = tmp_path / "schemathesis.log"
    log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (
        f"the {run} run, seed {seed} (SCHEMATHESIS_SEED={seed} repeats it), full output in "
        f"{log}\n{done.stdout[-20_000:]}{done.stderr[-5_000:]}"
    )


@pytest.mark.schemathesis
@pytest.mark.parametrize("examples", EXAMPLES)
@pytest.mark.parametrize("role", ["staff", "customer"])
def test_every_operation_answers_as_documented(
    api: Api, tmp_path: Path, role: str, examples: int
) -> None:
    token = api.staff if role == "staff" else api.customer
    _run(api, tmp_path, role, token=token, examples=examples)


@pytest.mark.schemathesis
def test_operations_on_existing_records_answer_as_documented(api: Api, tmp_path: Path) -> None:
    reservations = api.ids["reservations"]
    operations = [
        *((op, {"path.id": api.ids["product"]}) for op in PRODUCT_OPERATIONS),
        ("adjust_stock", {"path.id": api.ids["product"]}),
        ("get_reservation", {"path.reservation_id": reservations["get"]}),
        ("release_reservation", {"path.reservation_id": reservations["release"]}),
        ("extend_reservation", {"path.reservation_id": reservations["extend"]}),
        ("commit_reservation", {"path.reservation_id": reservations["commit"]}),
        ("get_order", {"path.order_id": api.ids["order"]}),
        ("transition_order", {"path.order_id": api.ids["order"]}),
    ]
    selected = [arg for op, _ in operations for arg in ("--include-operation-id", op)]
    _run(api, tmp_path, "records", *selected, token=api.staff, config=_toml(operations))


# -- what the runs found -------------------------------------------------------------------


def _cursor(*values: Any) -> str:
    raw = json.dumps({"v": list(values), "d": "n"}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_a_ttl_too_large_for_milliseconds_is_a_clear_400(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    staff = bearer(app, "1", staff=True)
    body = {"name": "Ticket", "sku": "T-1", "price": "1.00", "total_stock": 5}
    product = (await client.post("/api/products/", json=body, headers=staff)).json()["data"]
    held = await client.post(
        "/api/reservations/", json={"product": product["id"], "quantity": 1}, headers=staff
    )
    rid = held.json()["data"]["id"]

    reserve = await client.post(
        "/api/reservations/",
        json={"product": product["id"], "quantity": 1, "ttl_seconds": 1e308},
        headers=staff,
    )
    extend = await client.post(
        f"/api/reservations/{rid}/extend/", json={"ttl_seconds": 1e308}, headers=staff
    )
    after = await client.get(f"/api/products/{product['id']}/")

    for response in (reserve, extend):
        assert response.status_code == 400
        error = err(response)
        assert error["message"].startswith("ttl_seconds must be between")
        assert error["details"] == {"field": "ttl_seconds"}
    assert after.json()["data"]["reserved_stock"] == 1
    assert (await client.get(f"/api/reservations/{rid}/", headers=staff)).json()["data"][
        "expires_at"
    ] == held.json()["data"]["expires_at"]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/api/products/", {"name": "a\x00", "sku": "S", "price": "1.00"}, "name"),
        ("POST", "/api/warehouses/", {"id": "w", "name": "West\x00"}, "name"),
        ("POST", "/api/token/", {"username": "alice", "password": "pass\x00word"}, "password"),
        ("GET", "/api/products/?search=a%00", None, "search"),
        ("GET", "/api/audit-logs/?object_id=%00", None, "object_id"),
        ("GET", "/api/orders/?user=a%00", None, "user"),
        ("GET", "/api/reservations/?user=a%00", None, "user"),
    ],
)
async def test_text_with_a_nul_character_is_a_clear_400(
    client: httpx.AsyncClient,
    app: Starlette,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    field: str,
) -> None:
    staff = bearer(app, "1", staff=True)

    response = await client.request(method, path, json=body, headers=staff)
    products = await client.get("/api/products/")
    warehouses = await client.get("/api/warehouses/")

    assert response.status_code == 400
    error = err(response)
    assert error["code"] == "invalid_input"
    problem = {"field": field, "problem": "must not contain NUL characters", "type": "string_nul"}
    assert error["details"]["errors"] == [problem]
    assert products.json()["data"] == []
    assert [w["id"] for w in warehouses.json()["data"]] == ["main"]


@pytest.mark.parametrize(
    "path",
    ["/api/reservations/%00/", "/api/orders/%00/", "/api/reservations/a%00b/"],
)
async def test_ids_no_record_can_have_are_404(
    client: httpx.AsyncClient, app: Starlette, path: str
) -> None:
    response = await client.get(path, headers=bearer(app, "1", staff=True))

    assert response.status_code == 404
    assert err(response)["code"] in ("reservation_not_found", "order_not_found")


@pytest.mark.parametrize(
    "query",
    [
        "/api/orders/?cursor=" + _cursor({"$dt": "2020-01-01T00:00:00+00:00"}, "a\x00"),
        "/api/reservations/?cursor=" + _cursor({"$dt": "2020-01-01T00:00:00+00:00"}, "a\x00"),
        "/api/orders/?sort=highest_value&cursor=" + _cursor(10**30, "a"),
        "/api/audit-logs/?cursor=" + _cursor({"$dt": "2020-01-01T00:00:00+00:00"}, -(10**30)),
    ],
)
async def test_forged_cursors_are_a_clear_400(
    client: httpx.AsyncClient, app: Starlette, query: str
) -> None:
    response = await client.get(query, headers=bearer(app, "1", staff=True))

    assert response.status_code == 400
    assert err(response) == {
        "code": "invalid_cursor",
        "message": "the cursor is not one this API gave out",
        "details": {},
    }


@pytest.mark.parametrize(
    ("bound", "edge"),
    [
        ("since=0001-01-01T00:00:00%2B01:00", "since=0001-01-01T00:00:00Z"),
        ("until=9999-12-31T23:59:59-01:00", "until=9999-12-31T23:59:59.999999Z"),
    ],
)
async def test_audit_times_beyond_utc_bound_the_log_as_the_first_or_last_time(
    client: httpx.AsyncClient, app: Starlette, bound: str, edge: str
) -> None:
    """Valid date-times that no UTC datetime can hold: the document allows them."""
    staff = bearer(app, "1", staff=True)
    await client.post(
        "/api/products/",
        json={"name": "Ticket", "sku": "T-1", "price": "1.00", "total_stock": 5},
        headers=staff,
    )
    await drain(app)

    beyond = await client.get(f"/api/audit-logs/?{bound}", headers=staff)
    at_the_edge = await client.get(f"/api/audit-logs/?{edge}", headers=staff)

    assert beyond.status_code == 200
    assert beyond.json()["data"] != []
    assert beyond.json()["data"] == at_the_edge.json()["data"]
