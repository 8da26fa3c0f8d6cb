"""The nodes of a local Redis Cluster (scripts/redis_cluster/) as running processes: each one's
command line, launch, pid (our child's, else its pidfile's, never found by name), signals,
PING and logs. The cluster (RedisClusterServer) says which ports are its nodes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Collection, Sequence
from pathlib import Path

import redis

from scripts.redis_cluster.nodes import HOST, is_node_process, process_state
from scripts.redis_server import CONF

PING_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class NodeProcesses:
    """The redis-server processes of a cluster's nodes, each in data_dir/<port>. `detach`: the
    nodes run in a session of their own and outlive this process (the CLI); otherwise they are
    this process's children (and share its Ctrl-C)."""

    def __init__(
        self, data_dir: Path, *, appendfsync: str, node_timeout_ms: int, detach: bool
    ) -> None:
        self.data_dir = data_dir
        self.appendfsync = appendfsync
        self.node_timeout_ms = node_timeout_ms
        self.detach = detach
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # the nodes started here

    def node_dir(self, port: int) -> Path:
        return self.data_dir / str(port)

    def running(self, port: int) -> bool:
        """Whether the node's process is alive (it may not answer yet)."""
        return self.pid(port) is not None

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=port,
            socket_timeout=2,
            socket_connect_timeout=2,
            decode_responses=True,
        )

    def ping(self, port: int) -> bool:
        try:
            with self.client(port) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def args(self, port: int) -> list[str]:
        folder = self.node_dir(port)
        return [
            "redis-server",
            str(CONF),  # the project's settings (scripts/redis.conf), then these
            "--bind", HOST,
            "--port", str(port),
            "--dir", str(folder),
            "--protected-mode", "yes",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # a replica may always take over, however long its link has been down
            "--cluster-replica-validity-factor", "0",
            # a replica's first sync starts at once (the default waits 5 s for more replicas)
            "--repl-diskless-sync-delay", "0",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--pidfile", str(folder / "redis.pid"),
            "--logfile", str(folder / "redis.log"),
        ]  # fmt: skip

    def launch(self, port: int) -> None:
        folder = self.node_dir(port)
        folder.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            self.args(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.detach,
        )

    def pid(self, port: int) -> int | None:
        """The node's live process: our child if we started it, else the one its pidfile
        names (checked to be the redis-server of that port). Never found by name."""
        proc = self.procs.get(port)
        if proc is not None:
            if proc.poll() is None:
                return proc.pid
            del self.procs[port]
            return None
        try:
            pid = int((self.node_dir(port) / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_node_process(pid, port) else None

    @staticmethod
    def signal(pids: Collection[int], signum: signal.Signals) -> None:
        """Send `signum` to each of `pids` that still exists."""
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def gone(self, port: int, pid: int) -> bool:
        """Whether the process has exited (reaped if it is our child; a zombie left to init
        counts as gone)."""
        proc = self.procs.get(port)
        if proc is not None and proc.pid == pid:
            if proc.poll() is None:
                return False
            del self.procs[port]
            return True
        return process_state(pid) in (None, "Z")

    def wait_gone(self, port: int, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.gone(port, pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def wait_ping(self, ports: Sequence[int]) -> list[int]:
        """Wait until each node answers PING; the ones whose process exited instead, or that
        still do not answer after 10 s."""
        pending = list(ports)
        failed: list[int] = []
        deadline = time.monotonic() + PING_TIMEOUT_S
        while pending:
            for port in list(pending):
                if not self.running(port):
                    failed.append(port)
                    pending.remove(port)
                elif self.ping(port):
                    pending.remove(port)
            if pending and time.monotonic() > deadline:
                return failed + pending
            if pending:
                time.sleep(0.02)
        return failed

    def log(self, port: int) -> str:
        try:
            return (self.node_dir(port) / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def failed_message(self, ports: Sequence[int]) -> str:
        tails = "\n".join(
            f"--- {self.node_dir(p) / 'redis.log'} ---\n{self.log(p)[-2000:]}" for p in ports
        )
        return f"redis-server did not start on port(s) {list(ports)}:\n{tails}"

    def log_tails(self, ports: Collection[int], lines: int = 15) -> str:
        """The last `lines` of each node's log, of `ports` and of every node started here."""
        parts: list[str] = []
        for port in sorted(set(ports) | set(self.procs)):
            log = self.node_dir(port) / "redis.log"
            try:
                tail = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {log} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop_all(self, ports: Collection[int]) -> None:
        """SIGTERM every running node of `ports` and of every node started here (each flushes
        its AOF and nodes.conf) and wait for them to exit; SIGKILL after 10 s."""
        pending: dict[int, int] = {}
        for port in sorted(set(ports) | set(self.procs)):
            pid = self.pid(port)
            if pid is not None:
                pending[port] = pid
        self.signal(pending.values(), signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        again = time.monotonic() + 0.5
        while pending:
            pending = {port: pid for port, pid in pending.items() if not self.gone(port, pid)}
            now = time.monotonic()
            if pending and now > deadline:
                self.signal(pending.values(), signal.SIGKILL)
                for port, pid in pending.items():
                    self.wait_gone(port, pid, STOP_TIMEOUT_S)
                break
            if pending and now > again:
                # A node refuses a SIGTERM that comes while it writes its first AOF (a replica
                # just after its initial sync: "Writing initial AOF, can't exit"): ask again.
                self.signal(pending.values(), signal.SIGTERM)
                again = now + 0.5
            time.sleep(0.02)
        self.procs.clear()
