"""The operations page in a real browser: headless Chromium (Debian's, driven by Playwright)
against the real service (`inventory serve`, `worker` and `scheduler` on the test Redis and a
fresh Postgres database). A staff user signs in through the page, watches live reservations
go from 0 to 1 when a customer reserves, and a customer is turned away. The page loads nothing
from another host. A screenshot is saved as a test artifact: test-artifacts/dashboard.png in
the repository, or in $TEST_ARTIFACTS_DIR.

Chromium is /usr/bin/chromium (scripts/setup.sh installs Debian's `chromium`); Playwright's
own browser download is never used. The flags keep it off the network: this machine has none.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from engine.settings import PROJECT_ROOT, Settings
from tests.support import run_cli
from tests.test_dashboard_rq import free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STAFF = ("alice", "correct horse battery")
CUSTOMER = ("bob", "bob-password-1")


def artifacts() -> Path:
    folder = Path(os.environ.get("TEST_ARTIFACTS_DIR") or PROJECT_ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def inventory(env: dict[str, str], *args: str) -> None:
    done = run_cli(*args, env=env)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def service(settings: Settings, pg_url: str, clean_redis: None, tmp_path: Path) -> Iterator[str]:
    """The API, a worker and the scheduler, as `scripts/serve.sh` runs them; the base URL."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": pg_url,
        "JWT_KEYS": "browser:" + "b" * 40,
    }
    inventory(env, "createuser", STAFF[0], "--staff", "--password", STAFF[1])
    inventory(env, "createuser", CUSTOMER[0], "--password", CUSTOMER[1])
    commands = {
        "serve": ["serve", "--port", str(port), "--no-access-log"],
        "worker": ["worker", "--log-level", "WARNING"],
        "scheduler": ["scheduler", "--log-level", "WARNING"],
    }
    procs = []
    for name, args in commands.items():
        log = (tmp_path / f"{name}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "scripts.cli", *args], env=env, stdout=log, stderr=log
            )
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert procs[0].poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        yield base
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def token(http: httpx.Client, user: tuple[str, str]) -> dict[str, str]:
    answer = http.post("/api/token/", json={"username": user[0], "password": user[1]})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['data']['access']}"}


def sign_in(page: Page, user: tuple[str, str]) -> None:
    page.fill("#username", user[0])
    page.fill("#password", user[1])
    page.click("#sign-in")


def test_staff_watch_a_reservation_arrive_on_the_page(service: str, tmp_path: Path) -> None:
    http = httpx.Client(base_url=service)
    staff = token(http, STAFF)
    body = {"name": "Drop sneaker", "sku": "SNK-1", "price": "129.99", "total_stock": 5}
    product = http.post("/api/products/", json=body, headers=staff).json()["data"]["id"]
    requested: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(service + "/dashboard")
            expect(page.locator("#login")).to_be_visible()

            sign_in(page, CUSTOMER)
            expect(page.locator("#login-error")).to_contain_text("staff accounts only")
            expect(page.locator("#board")).to_be_hidden()

            sign_in(page, STAFF)
            live = page.locator("#reservations-live")
            expect(live).to_have_text("0", timeout=10_000)
            expect(page.locator("#status")).to_contain_text("updated")

            reserved = http.post(
                "/api/reservations/",
                json={"product": product, "quantity": 1},
                headers=token(http, CUSTOMER),
            )
            assert reserved.status_code == 201, reserved.text
            expect(live).to_have_text("1", timeout=10_000)  # the page polls every 2 s
            row = page.locator("#low-stock tr", has_text="SNK-1")
            expect(row).to_contain_text("Drop sneaker")
            expect(row.locator("td").nth(3)).to_have_text("4")  # available after the hold
            # a product's limits refused, and a sold-out product's waitlist (issue 14)
            customer = token(http, CUSTOMER)
            limited = {"max_per_customer": 1}
            assert http.patch(f"/api/products/{product}/", json=limited, headers=staff).is_success
            one = {"product": product, "quantity": 1}  # a limit counts from when it is set
            assert http.post("/api/reservations/", json=one, headers=customer).is_success
            refused = http.post("/api/reservations/", json=one, headers=customer)
            assert refused.status_code == 409, refused.text
            expect(row.locator("td").nth(8)).to_have_text("1", timeout=10_000)
            last = {"name": "Last pair", "sku": "SNK-2", "price": "99.00", "total_stock": 1}
            other = http.post("/api/products/", json=last, headers=staff).json()["data"]["id"]
            held = {"product": other, "quantity": 1}
            assert http.post("/api/reservations/", json=held, headers=customer).is_success
            waits = http.post(f"/api/products/{other}/waitlist/", json={"quantity": 1},
                              headers=staff)  # fmt: skip
            assert waits.status_code == 202, waits.text
            sold_out = page.locator("#low-stock tr", has_text="SNK-2")
            expect(sold_out.locator("td").nth(6)).to_have_text("1", timeout=10_000)
            # the trends: the worker's drains draw the throughput
            expect(page.locator("#trend-events polyline").first).to_be_attached(timeout=20_000)
            expect(page.locator("#trend-lag polyline").first).to_be_attached()
            expect(page.locator("#reconcile")).to_have_attribute("data-ok", "true", timeout=20_000)
            expect(page.locator("#workers")).to_contain_text("inventory")
            page.screenshot(path=str(artifacts() / "dashboard.png"), full_page=True)

            page.click("#logout")
            expect(page.locator("#login")).to_be_visible()
            stored: Any = page.evaluate("window.sessionStorage.length")
            assert stored == 0
        finally:
            browser.close()
    http.close()

    assert requested, "the browser made no request"
    assert all(url.startswith(service + "/") for url in requested), requested
