"""`inventory rq-dashboard` as a real process on a real socket against the test Redis: it will
not start without credentials, listens on 127.0.0.1 alone, answers 401 without them and 200
with them, deletes nothing unless told to, and refuses changes another site sends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from rq import Queue
from rq.job import Job

from engine.settings import Settings
from persistence import jobs
from tests.support import wait_until_serving

USER, PASSWORD = "ops", "a long enough password"
AUTH = (USER, PASSWORD)


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def inventory(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "rq-dashboard", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RQ_DASHBOARD_")}
    return {**env, "REDIS_URL": settings.redis_url, **extra}


@contextmanager
def dashboard(settings: Settings, *args: str) -> Iterator[str]:
    port = free_port()
    env = environment(settings, RQ_DASHBOARD_USERNAME=USER, RQ_DASHBOARD_PASSWORD=PASSWORD)
    proc = inventory("--port", str(port), *args, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base + "/", proc, "rq-dashboard")
        yield base
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as the kernel writes them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.fixture
def queued(settings: Settings, clean_redis: None) -> Iterator[Job]:
    """A job waiting in the inventory queue (no worker runs here)."""
    conn = redis.Redis.from_url(settings.redis_url)
    yield Queue(jobs.QUEUE, connection=conn).enqueue("json.loads", "[]")
    conn.close()


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({}, "needs RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD"),
        ({"RQ_DASHBOARD_USERNAME": USER}, "needs RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD"),
        ({"RQ_DASHBOARD_PASSWORD": PASSWORD}, "needs RQ_DASHBOARD_USERNAME"),
        ({"RQ_DASHBOARD_USERNAME": USER, "RQ_DASHBOARD_PASSWORD": "short"}, "at least 12"),
    ],
)
def test_it_will_not_start_without_credentials(
    settings: Settings, extra: dict[str, str], says: str
) -> None:
    port = free_port()
    proc = inventory("--port", str(port), env=environment(settings, **extra))
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 2
    assert says in " ".join(stderr.decode().split())
    assert listening_addresses(port) == set()


def test_only_staff_with_the_credentials_get_in_on_loopback_alone(
    settings: Settings, queued: Job
) -> None:
    with dashboard(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        addresses = listening_addresses(port)
        anonymous = httpx.get(base + "/")
        wrong = [
            httpx.get(base + "/", auth=(USER, PASSWORD + "x")),
            httpx.get(base + "/", auth=("admin", PASSWORD)),
            httpx.get(base + "/0/data/queues.json", headers={"Authorization": "Bearer x"}),
        ]
        page = httpx.get(base + "/", auth=AUTH)
        queues = httpx.get(base + "/0/data/queues.json", auth=AUTH)

    assert addresses == {"0100007F"}  # 127.0.0.1, and nothing else
    for response in (anonymous, *wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Basic ")
        assert jobs.QUEUE not in response.text
    assert page.status_code == 200
    assert "RQ dashboard" in page.text or "RQ Dashboard" in page.text
    assert queues.status_code == 200
    assert {q["name"]: q["count"] for q in queues.json()["queues"]} == {jobs.QUEUE: 1}


def test_deleting_is_off_by_default(settings: Settings, queued: Job) -> None:
    conn = redis.Redis.from_url(settings.redis_url)
    with dashboard(settings) as base:
        deleted = httpx.post(f"{base}/job/{queued.id}/delete", auth=AUTH)
        emptied = httpx.post(f"{base}/queue/{jobs.QUEUE}/queued/empty", auth=AUTH)

    assert deleted.status_code == 200
    assert deleted.json() == {"status": "DISABLED"}
    assert emptied.json() == {"status": "DISABLED"}
    assert Job.exists(queued.id, connection=conn)
    assert Queue(jobs.QUEUE, connection=conn).count == 1
    conn.close()


def test_allow_delete_deletes(settings: Settings, queued: Job) -> None:
    conn = redis.Redis.from_url(settings.redis_url)
    with dashboard(settings, "--allow-delete") as base:
        deleted = httpx.post(f"{base}/job/{queued.id}/delete", auth=AUTH)

    assert deleted.json() == {"status": "OK"}
    assert not Job.exists(queued.id, connection=conn)
    conn.close()


def test_changes_sent_by_another_site_are_refused(settings: Settings, queued: Job) -> None:
    conn = redis.Redis.from_url(settings.redis_url)
    with dashboard(settings, "--allow-delete") as base:
        forged = [
            httpx.post(
                f"{base}/job/{queued.id}/delete",
                auth=AUTH,
                headers={"Origin": "http://shop.example"},
            ),
            httpx.get(
                f"{base}/requeue/{jobs.QUEUE}", auth=AUTH, headers={"Sec-Fetch-Site": "cross-site"}
            ),
        ]
        looked = httpx.get(base + "/", auth=AUTH, headers={"Sec-Fetch-Site": "cross-site"})

    for response in forged:
        assert response.status_code == 403
    assert looked.status_code == 200  # following a link to it is fine; changing is not
    assert Job.exists(queued.id, connection=conn)
    conn.close()
