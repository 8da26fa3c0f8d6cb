"""`inventory serve` and the development key: used only while the API listens on a loopback
address; on any other address without JWT_KEYS the command refuses to start, before it binds."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from starlette.applications import Starlette

from engine.settings import PROJECT_ROOT, Settings
from scripts.bench.meter import family
from scripts.cli.serve import is_loopback
from scripts.redis_server import RedisServer, free_port
from tests.api import running
from tests.support import run_cli, wait_until_serving
from web.app import create_app


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("192.168.0.7", False),
        ("localhost.example.com", False),
        ("shop.example.com", False),
    ],
)
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _env(redis_server: RedisServer, tmp_path: Path, jwt_keys: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        "JWT_KEYS": jwt_keys,
    }


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serve_on_all_addresses_without_keys_refuses_to_start(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()

    done = run_cli(
        "serve", "--host", "0.0.0.0", "--port", str(port),
        env=_env(redis_server, tmp_path, ""),
        timeout=60,
    )  # fmt: skip

    assert done.returncode == 2
    assert "refusing to start" in done.stderr
    assert "JWT_KEYS is not set" in done.stderr
    assert "loopback address (127.0.0.1, ::1, localhost), not on 0.0.0.0" in done.stderr
    assert "Uvicorn running" not in done.stderr  # it never got as far as listening
    assert not _listening(port)
    assert not (tmp_path / "serve.db").exists()  # nor opened anything


def test_serve_on_all_addresses_starts_with_keys(redis_server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "serve", "--host", "0.0.0.0", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env={**os.environ, **_env(redis_server, tmp_path, "main:" + "m" * 40)},
        stdout=log,
        stderr=log,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/healthz", proc, "inventory serve")
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()

    assert health.status_code == 200
    assert "development key" not in (tmp_path / "serve.log").read_text()


def test_serve_on_loopback_without_keys_uses_the_development_key(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "serve", "--host", "localhost", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env={**os.environ, **_env(redis_server, tmp_path, "")},
        stdout=log,
        stderr=log,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/healthz", proc, "inventory serve")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()

    assert "JWT_KEYS is not set: using the development key" in (tmp_path / "serve.log").read_text()


def _descendants(pid: int) -> set[int]:
    """The processes below `pid` (from /proc)."""
    return set(family(pid)) - {pid}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; only its exit status waits to be read


def _running(pids: set[int], command: str) -> list[int]:
    """Those of `pids` alive whose command line runs `inventory <command>`."""
    found = []
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"scripts.cli" in args and command.encode() in args and _alive(pid):
            found.append(pid)
    return [pid for pid in found if _parent(pid) not in found]  # (not RQ's work horses)


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def test_serve_sh_stops_everything_it_started_on_term(tmp_path: Path) -> None:
    """scripts/serve.sh, TERMed while the API runs, stops the API, the worker, the scheduler
    and its Redis within seconds, as Ctrl-C does; a worker or scheduler killed meanwhile is
    started again. It runs from a copy of the tree whose setup.sh does nothing (the real one
    installs) and whose `inventory` is this checkout's."""
    root = tmp_path / "root"
    (root / "scripts").mkdir(parents=True)
    for name in ("serve.sh", "redis.sh"):
        (root / "scripts" / name).write_bytes((PROJECT_ROOT / "scripts" / name).read_bytes())
        (root / "scripts" / name).chmod(0o755)
    settings = (PROJECT_ROOT / "scripts" / "redis.conf").read_text()
    (root / "scripts" / "redis.conf").write_text(settings)
    (root / "scripts" / "setup.sh").write_text("#!/bin/sh\nexit 0\n")
    (root / "scripts" / "setup.sh").chmod(0o755)
    (root / ".venv" / "bin").mkdir(parents=True)
    inventory = root / ".venv" / "bin" / "inventory"
    inventory.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m scripts.cli "$@"\n')
    inventory.chmod(0o755)
    redis_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "REDIS_PORT": str(redis_port),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        "JWT_KEYS": "",
    }
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        ["bash", str(root / "scripts" / "serve.sh"), "--port", str(api_port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # the test can clean up after a failure
    )
    started: set[int] = set()
    try:
        wait_until_serving(f"http://127.0.0.1:{api_port}/healthz", proc, "serve.sh", timeout=60)
        started = _descendants(proc.pid)
        assert len(started) >= 3  # the worker, the scheduler and the API at least

        # a worker and a scheduler killed are started again (after a second)
        for command in ("worker", "scheduler"):
            (first,) = _running(started, command)
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                again = _running(_descendants(proc.pid), command)
                if again and again != [first]:
                    break
                time.sleep(0.1)
            assert again, (tmp_path / "serve.log").read_text()
            assert first not in again
        assert b"the worker stopped (exit 137)" in (tmp_path / "serve.log").read_bytes()
        started = _descendants(proc.pid)
        assert _listening(redis_port)
        with redis.Redis(port=redis_port, decode_responses=True) as client:  # scripts/redis.conf
            assert client.config_get("hash-max-listpack-entries") == {
                "hash-max-listpack-entries": "64"
            }

        proc.terminate()
        proc.wait(timeout=20)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in started if _alive(p)], (tmp_path / "serve.log").read_text()
        assert proc.returncode == 143
        assert not _listening(api_port)
        assert not _listening(redis_port)  # the Redis it started is stopped too
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(
            [str(root / "scripts" / "redis.sh"), "stop", str(root / "data" / "redis"),
             str(redis_port)],
            check=False, capture_output=True,
        )  # fmt: skip
        log.close()


def test_a_served_worker_tunes_the_garbage_collector_once_started(
    app_settings: Settings, clean_redis: None
) -> None:
    before = gc.get_threshold()
    app = create_app(dataclasses.replace(app_settings, gc_threshold=12_345))
    app.state.tune_gc = True  # as served_app, the factory `inventory serve` runs, sets it

    async def started() -> tuple[tuple[int, int, int], int]:
        async with running(app):
            return gc.get_threshold(), gc.get_freeze_count()

    try:
        threshold, frozen = asyncio.run(started())
        assert threshold == (12_345, *before[1:])
        assert frozen > 10_000  # what start-up made: the modules, the app, its routes
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_an_app_not_served_leaves_the_garbage_collector_alone(
    app_settings: Settings, clean_redis: None
) -> None:
    # create_app alone (the tests, a program that embeds the app): the process's collector is
    # not the app's to set; nor is it when served with GC_THRESHOLD=0
    before = gc.get_threshold()
    off = create_app(dataclasses.replace(app_settings, gc_threshold=0))
    off.state.tune_gc = True

    async def started(app: Starlette) -> tuple[tuple[int, int, int], int]:
        async with running(app):
            return gc.get_threshold(), gc.get_freeze_count()

    assert asyncio.run(started(create_app(app_settings))) == (before, 0)
    assert asyncio.run(started(off)) == (before, 0)


def test_serve_refuses_what_its_start_up_would_before_it_says_it_serves(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A short JWT_KEYS secret and a PARTITIONS other than the data's: exit 2 and one line, as
    every other command refuses them, not a traceback from inside uvicorn's start-up (exit 3,
    the code for an unreachable service) after a line saying it serves."""
    port = free_port()
    short = run_cli(
        "serve", "--port", str(port), env=_env(redis_server, tmp_path, "main:short"), timeout=60
    )
    own = RedisServer(tmp_path / "laid-out")
    own.start()
    try:
        redis.Redis.from_url(own.url).set("inv:layout", '{"partitions": 1}')
        other = run_cli(
            "serve", "--port", str(port),
            env={**_env(own, tmp_path, "main:" + "m" * 40), "PARTITIONS": "4"},
            timeout=60,
        )  # fmt: skip
    finally:
        own.stop()

    for done in (short, other):
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "serving the API" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "JWT_KEYS" in short.stderr
    assert "laid out in 1 partitions, but PARTITIONS is 4" in other.stderr
    assert not _listening(port)
