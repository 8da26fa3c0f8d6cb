"""A real redis-server for the tests: 127.0.0.1, a free port, data in a temporary folder."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

# The Redis settings every redis-server the project starts reads first.
CONF = Path(__file__).resolve().with_name("redis.conf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """`under`: a command that runs the server (e.g. valgrind and its options); `more`: options
    after the launcher's own."""

    def __init__(
        self,
        data_dir: Path,
        *,
        appendfsync: str = "everysec",
        under: Sequence[str] = (),
        more: Sequence[str] = (),
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup.sh")
        self.data_dir = data_dir
        self.appendfsync = appendfsync
        self.under, self.more = list(under), list(more)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                *self.under,
                "redis-server",
                str(CONF),  # the project's settings (scripts/redis.conf), then these
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.data_dir),
                "--appendonly", "yes",
                "--appendfsync", self.appendfsync,
                "--save", "",
                "--protected-mode", "yes",
                "--logfile", str(self.data_dir / "redis.log"),
                *self.more,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + (60 if self.under else 10)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server did not start:\n{log}") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
