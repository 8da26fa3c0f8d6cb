"""A real Redis Cluster for the tests and the benchmark: redis-server nodes on 127.0.0.1, each in
its own folder, joined by `redis-cli --cluster create`. No Docker.

Every node needs two free ports: its client port P and its cluster bus port P + 10000. They are
picked below the kernel's ephemeral range when there is room, so that no outgoing connection
takes one between the pick and the node's bind. Each node lives in DATA_DIR/<port> (nodes.conf,
the AOF, redis.pid, redis.log); DATA_DIR/cluster.json records the cluster, so that another
process (the CLI below) finds its nodes again, through their pidfiles only.

    cluster = RedisClusterServer(tmp / "cluster", primaries=3, replicas=1)
    cluster.start()           # nodes up, slots assigned, replicas in sync (~2 s)
    cluster.url               # redis://127.0.0.1:PORT/0, a startup node for RedisCluster
    cluster.kill(port)        # SIGKILL one node: with replicas, its replica takes over
    cluster.wait_ok()         # until every running node sees a healthy, agreed cluster
    cluster.restart(port)     # the killed node again, in its folder: it rejoins (as a replica)
    cluster.stop()            # SIGTERM every node; start() brings the same cluster back

Failover is tuned for tests: cluster-node-timeout 1000 ms (a primary is declared failed about a
second after it stops answering; its replica is elected 0.5-1 s later) and
cluster-replica-validity-factor 0 (a replica may always take over, however long its link has
been down). Under heavy load (the benchmark) a larger node_timeout_ms avoids false failovers.

    python -m scripts.redis_cluster start DIR [--primaries 3] [--replicas 0]  # prints the URL
    python -m scripts.redis_cluster status DIR    # exit 0 ok, 1 unhealthy, 3 not running
    python -m scripts.redis_cluster stop DIR

The nodes' ports and replies parsed are in nodes.py, their processes in processes.py, what
healthy is in health.py; the command
line in cli.py (__main__.py).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from scripts.redis_cluster.health import SLOTS, Roles, agreement_problem, node_problem
from scripts.redis_cluster.nodes import (
    HOST,
    ClusterNode,
    free_cluster_ports,
    parse_cluster_nodes,
    parse_info,
)
from scripts.redis_cluster.processes import STOP_TIMEOUT_S, NodeProcesses

__all__ = ["SLOTS", "STATE_FILE", "RedisClusterServer"]

STATE_FILE = "cluster.json"
OK_TIMEOUT_S = 30.0
BIND_ATTEMPTS = 3


def _text(reply: object) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class RedisClusterServer:
    def __init__(
        self,
        data_dir: Path,
        *,
        primaries: int = 3,
        replicas: int = 0,
        appendfsync: str = "everysec",
        node_timeout_ms: int = 1000,
        detach: bool = False,
    ) -> None:
        """`detach`: the nodes run in a session of their own and outlive this process (the
        CLI); otherwise they are this process's children (and share its Ctrl-C)."""
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed: run scripts/setup.sh")
        if primaries < 3:
            raise ValueError("a Redis Cluster needs at least 3 primaries")
        if replicas < 0:
            raise ValueError("replicas must be 0 or more")
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.data_dir = Path(data_dir).resolve()
        self.primaries = primaries
        self.replicas = replicas
        self.appendfsync = appendfsync
        self.node_timeout_ms = node_timeout_ms
        self.detach = detach
        self._ports: list[int] = []
        self._first_primary: int | None = None
        self.processes = NodeProcesses(
            self.data_dir, appendfsync=appendfsync, node_timeout_ms=node_timeout_ms, detach=detach
        )

    @classmethod
    def from_dir(cls, data_dir: Path, *, detach: bool = True) -> RedisClusterServer:
        """The cluster recorded in data_dir/cluster.json by an earlier start()."""
        state = json.loads((Path(data_dir) / STATE_FILE).read_text())
        cluster = cls(
            Path(data_dir),
            primaries=int(state["primaries"]),
            replicas=int(state["replicas"]),
            appendfsync=str(state["appendfsync"]),
            node_timeout_ms=int(state["node_timeout_ms"]),
            detach=detach,
        )
        cluster._ports = [int(p) for p in state["ports"]]
        first = state.get("first_primary")
        cluster._first_primary = None if first is None else int(first)
        return cluster

    # --- addresses -------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        """Every node's client port, in creation order (empty before start())."""
        return list(self._ports)

    @staticmethod
    def node_url(port: int) -> str:
        return f"redis://{HOST}:{port}/0"

    @property
    def url(self) -> str:
        """The first primary (as created), or, once that node is down, the first running node:
        any node serves as a startup node for redis.cluster.RedisCluster.from_url."""
        if not self._ports:
            raise RuntimeError("the cluster has not been started")
        candidates = [self._first_primary] if self._first_primary is not None else []
        for port in [*candidates, *self._ports]:
            if self.running(port):
                return self.node_url(port)
        return self.node_url(candidates[0] if candidates else self._ports[0])

    def node_dir(self, port: int) -> Path:
        return self.processes.node_dir(port)

    # --- views of the cluster --------------------------------------------------------------

    def running(self, port: int) -> bool:
        """Whether the node's process is alive (it may not answer yet)."""
        return self.processes.running(port)

    def log_tails(self, lines: int = 15) -> str:
        """The last `lines` of each node's log."""
        return self.processes.log_tails(self._ports, lines)

    def nodes(self) -> list[ClusterNode]:
        """CLUSTER NODES, as the first running node that answers sees it."""
        errors: list[str] = []
        for port in self._ports:
            if not self.running(port):
                continue
            try:
                with self.processes.client(port) as client:
                    return parse_cluster_nodes(_text(client.execute_command("CLUSTER", "NODES")))
            except redis.RedisError as error:
                errors.append(f"{port}: {error}")
        raise RuntimeError(f"no node of the cluster answers: {'; '.join(errors) or 'none runs'}")

    def primary_ports(self) -> list[int]:
        """The primaries serving slots now (they change on failover), as the cluster sees them,
        leaving out nodes it flags as failed and nodes whose process is gone."""
        return sorted(
            n.port
            for n in self.nodes()
            if "master" in n.flags and n.slots and not n.failed and self.running(n.port)
        )

    def replica_ports(self) -> list[int]:
        """The replicas now, on the same terms as primary_ports()."""
        return sorted(
            n.port
            for n in self.nodes()
            if "slave" in n.flags and not n.failed and self.running(n.port)
        )

    def problem(self) -> str | None:
        """None when the cluster is healthy, else what is wrong (health.py says what healthy
        is), asking each running node in turn."""
        live = [p for p in self._ports if self.running(p)]
        if not live:
            return "no node is running"
        views: dict[int, Roles] = {}
        for port in live:
            try:
                with self.processes.client(port) as client:
                    info = parse_info(_text(client.execute_command("CLUSTER", "INFO")))
                    nodes = parse_cluster_nodes(_text(client.execute_command("CLUSTER", "NODES")))
                    replication = client.info("replication")
            except redis.RedisError as error:
                return f"node {port}: {error}"
            wrong, views[port] = node_problem(
                port,
                info,
                nodes,
                replication,
                live=live,
                known=len(self._ports),
                primaries=self.primaries,
            )
            if wrong is not None:
                return wrong
        return agreement_problem(views, live)

    def wait_ok(self, timeout: float = OK_TIMEOUT_S) -> None:
        """Wait until problem() is None; RuntimeError (with the nodes' logs) after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            problem = self.problem()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the cluster is not ok after {timeout:g} s: {problem}\n{self.log_tails()}"
                )
            time.sleep(0.05)

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Create a new cluster (fresh ports and folders) and wait until it is ok. After stop()
        (or from_dir()) it starts the stopped nodes of the same cluster in their folders
        instead: they find each other through nodes.conf and reload their AOF. If the cluster
        does not come up, every node is stopped and RuntimeError raised."""
        fresh = not self._ports
        try:
            if not fresh:
                stopped = [p for p in self._ports if not self.running(p)]
                for port in stopped:
                    self.processes.launch(port)
                failed = self.processes.wait_ping(stopped)
                if failed:
                    raise RuntimeError(self.processes.failed_message(failed))
            else:
                self._create()
            self.wait_ok(OK_TIMEOUT_S)
        except BaseException:
            self.stop()
            if fresh:  # nothing worth resuming: the next start() creates a cluster anew
                self._ports = []
                (self.data_dir / STATE_FILE).unlink(missing_ok=True)
            raise
        if self._first_primary is None:
            primaries = set(self.primary_ports())
            self._first_primary = next(p for p in self._ports if p in primaries)
        self._save_state()

    def _create(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = free_cluster_ports(self.primaries * (1 + self.replicas))
        for port in ports:
            self.processes.launch(port)
        for attempt in range(BIND_ATTEMPTS):
            failed = self.processes.wait_ping(ports)
            if not failed:
                break
            # Another process took a port between the pick and the bind: pick others.
            clash = all("Address already in use" in self.processes.log(p) for p in failed)
            if not clash or attempt + 1 == BIND_ATTEMPTS:
                self._ports = ports
                raise RuntimeError(self.processes.failed_message(failed))
            for old in failed:
                (new,) = free_cluster_ports(1, avoid=ports)
                ports[ports.index(old)] = new
                self.processes.procs.pop(old, None)
                shutil.rmtree(self.node_dir(old), ignore_errors=True)
                self.processes.launch(new)
        self._ports = ports
        self._save_state()  # from here on `stop DIR` finds the nodes, even if create fails
        command = [
            "redis-cli",
            "--cluster", "create",
            *(f"{HOST}:{p}" for p in ports),
            "--cluster-replicas", str(self.replicas),
            "--cluster-yes",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"redis-cli --cluster create hung\n{self.log_tails()}") from None
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed (exit {result.returncode}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}\n{self.log_tails()}"
            )

    def stop(self) -> None:
        """SIGTERM every running node (each flushes its AOF and nodes.conf) and wait for them
        to exit; SIGKILL after 10 s. Idempotent."""
        self.processes.stop_all(self._ports)

    def kill(self, port: int) -> None:
        """SIGKILL one node (no AOF flush, no goodbye to the cluster) and wait until it is gone.
        A no-op when it is not running."""
        self._check_port(port)
        pid = self.processes.pid(port)
        if pid is None:
            return
        self.processes.signal([pid], signal.SIGKILL)
        if not self.processes.wait_gone(port, pid, STOP_TIMEOUT_S):
            raise RuntimeError(f"node {port} (pid {pid}) survived SIGKILL")

    def pause(self, port: int) -> None:
        """SIGSTOP one node: it neither answers nor replicates until resume(), as a node stalled
        by its machine would (a replica paused falls behind its primary)."""
        self._check_port(port)
        pid = self.processes.pid(port)
        if pid is None:
            raise RuntimeError(f"node {port} is not running")
        self.processes.signal([pid], signal.SIGSTOP)

    def resume(self, port: int) -> None:
        """SIGCONT a node pause() stopped."""
        self._check_port(port)
        pid = self.processes.pid(port)
        if pid is not None:
            self.processes.signal([pid], signal.SIGCONT)

    def replica_of(self, primary: int) -> int:
        """The port of a replica of the primary at `primary`."""
        nodes = self.nodes()
        ids = {n.port: n.id for n in nodes}
        for n in nodes:
            if "slave" in n.flags and n.master_id == ids.get(primary):
                return n.port
        raise RuntimeError(f"node {primary} has no replica")

    def restart(self, port: int) -> None:
        """Start a stopped or killed node again in its folder (same port, nodes.conf, AOF) and
        wait until it answers PING; it rejoins the cluster by itself (wait_ok() waits for
        that). A no-op when it is running."""
        self._check_port(port)
        if self.running(port):
            return
        self.processes.launch(port)
        if self.processes.wait_ping([port]):
            raise RuntimeError(self.processes.failed_message([port]))

    def __enter__(self) -> RedisClusterServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals -------------------------------------------------------------------------

    def _check_port(self, port: int) -> None:
        if port not in self._ports:
            raise ValueError(f"{port} is not a node of this cluster (ports {self._ports})")

    def _save_state(self) -> None:
        state = {
            "primaries": self.primaries,
            "replicas": self.replicas,
            "appendfsync": self.appendfsync,
            "node_timeout_ms": self.node_timeout_ms,
            "ports": self._ports,
            "first_primary": self._first_primary,
        }
        path = self.data_dir / STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        temporary.replace(path)
