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

The nodes as processes and ports are in nodes.py; the command line in cli.py (__main__.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import TracebackType

import redis

from scripts.redis_cluster.nodes import (
    HOST,
    ClusterNode,
    free_cluster_ports,
    is_node_process,
    parse_cluster_nodes,
    parse_info,
    process_state,
)
from scripts.redis_server import CONF

SLOTS = 16_384
STATE_FILE = "cluster.json"
PING_TIMEOUT_S = 10.0
OK_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
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
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

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
        return self.data_dir / str(port)

    # --- views of the cluster --------------------------------------------------------------

    def running(self, port: int) -> bool:
        """Whether the node's process is alive (it may not answer yet)."""
        return self._pid(port) is not None

    def nodes(self) -> list[ClusterNode]:
        """CLUSTER NODES, as the first running node that answers sees it."""
        errors: list[str] = []
        for port in self._ports:
            if not self.running(port):
                continue
            try:
                with self._client(port) as client:
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
        """None when the cluster is healthy, else what is wrong. Healthy: every running node
        answers, reports cluster_state:ok with all 16384 slots ok and knows every node, flags
        no running node as failing; all of them agree on which `primaries` running nodes serve
        the slots and which running node replicates which; every replica's link to its
        primary is up and in sync."""
        live = [p for p in self._ports if self.running(p)]
        if not live:
            return "no node is running"
        views: dict[int, tuple[frozenset[int], frozenset[tuple[int, int]]]] = {}
        for port in live:
            try:
                with self._client(port) as client:
                    info = parse_info(_text(client.execute_command("CLUSTER", "INFO")))
                    nodes = parse_cluster_nodes(_text(client.execute_command("CLUSTER", "NODES")))
                    replication = client.info("replication")
            except redis.RedisError as error:
                return f"node {port}: {error}"
            if info.get("cluster_state") != "ok":
                return f"node {port}: cluster_state:{info.get('cluster_state')}"
            if info.get("cluster_slots_ok") != str(SLOTS):
                return f"node {port}: cluster_slots_ok:{info.get('cluster_slots_ok')}"
            if info.get("cluster_known_nodes") != str(len(self._ports)):
                return f"node {port}: cluster_known_nodes:{info.get('cluster_known_nodes')}"
            flagged = sorted(n.port for n in nodes if n.port in live and n.failed)
            if flagged:
                return f"node {port} flags the running node(s) {flagged} as failing"
            owners = {n.port: n.slots for n in nodes if "master" in n.flags and n.slots}
            if sum(owners.values()) != SLOTS:
                return f"node {port} sees {sum(owners.values())} slots served"
            stopped = sorted(set(owners) - set(live))
            if stopped:
                return f"node {port} sees slots served by the stopped node(s) {stopped}"
            if len(owners) != self.primaries:
                return f"node {port} sees {len(owners)} primaries, not {self.primaries}"
            port_of = {n.id: n.port for n in nodes}
            links = frozenset(
                (n.port, port_of.get(n.master_id, 0))
                for n in nodes
                if n.port in live and "slave" in n.flags
            )
            views[port] = (frozenset(owners), links)
            role = replication.get("role")
            if role == "slave":
                if replication.get("master_link_status") != "up":
                    return f"node {port}: replica link {replication.get('master_link_status')}"
                if replication.get("master_sync_in_progress") not in (0, "0", None):
                    return f"node {port}: replica still syncing"
            elif port not in owners:
                return f"node {port} is a {role} without slots"
        if len(set(views.values())) > 1:
            seen = {p: (sorted(o), sorted(r)) for p, (o, r) in views.items()}
            return f"the nodes disagree on the roles (primaries, replica->primary): {seen}"
        primaries, links = next(iter(views.values()))
        unaccounted = sorted(set(live) - primaries - {replica for replica, _ in links})
        if unaccounted:
            return f"the node(s) {unaccounted} are neither primaries nor replicas"
        return None

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

    def log_tails(self, lines: int = 15) -> str:
        parts: list[str] = []
        for port in sorted(set(self._ports) | set(self._procs)):
            log = self.node_dir(port) / "redis.log"
            try:
                tail = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {log} ---\n" + "\n".join(tail))
        return "\n".join(parts)

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
                    self._launch(port)
                failed = self._wait_ping(stopped)
                if failed:
                    raise RuntimeError(self._failed_message(failed))
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
            self._launch(port)
        for attempt in range(BIND_ATTEMPTS):
            failed = self._wait_ping(ports)
            if not failed:
                break
            # Another process took a port between the pick and the bind: pick others.
            clash = all("Address already in use" in self._log(p) for p in failed)
            if not clash or attempt + 1 == BIND_ATTEMPTS:
                self._ports = ports
                raise RuntimeError(self._failed_message(failed))
            for old in failed:
                (new,) = free_cluster_ports(1, avoid=ports)
                ports[ports.index(old)] = new
                self._procs.pop(old, None)
                shutil.rmtree(self.node_dir(old), ignore_errors=True)
                self._launch(new)
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
        pending: dict[int, int] = {}
        for port in sorted(set(self._ports) | set(self._procs)):
            pid = self._pid(port)
            if pid is not None:
                pending[port] = pid
        self._signal(pending.values(), signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        again = time.monotonic() + 0.5
        while pending:
            pending = {port: pid for port, pid in pending.items() if not self._gone(port, pid)}
            now = time.monotonic()
            if pending and now > deadline:
                self._signal(pending.values(), signal.SIGKILL)
                for port, pid in pending.items():
                    self._wait_gone(port, pid, STOP_TIMEOUT_S)
                break
            if pending and now > again:
                # A node refuses a SIGTERM that comes while it writes its first AOF (a replica
                # just after its initial sync: "Writing initial AOF, can't exit"): ask again.
                self._signal(pending.values(), signal.SIGTERM)
                again = now + 0.5
            time.sleep(0.02)
        self._procs.clear()

    def kill(self, port: int) -> None:
        """SIGKILL one node (no AOF flush, no goodbye to the cluster) and wait until it is gone.
        A no-op when it is not running."""
        self._check_port(port)
        pid = self._pid(port)
        if pid is None:
            return
        self._signal([pid], signal.SIGKILL)
        if not self._wait_gone(port, pid, STOP_TIMEOUT_S):
            raise RuntimeError(f"node {port} (pid {pid}) survived SIGKILL")

    def pause(self, port: int) -> None:
        """SIGSTOP one node: it neither answers nor replicates until resume(), as a node stalled
        by its machine would (a replica paused falls behind its primary)."""
        self._check_port(port)
        pid = self._pid(port)
        if pid is None:
            raise RuntimeError(f"node {port} is not running")
        self._signal([pid], signal.SIGSTOP)

    def resume(self, port: int) -> None:
        """SIGCONT a node pause() stopped."""
        self._check_port(port)
        pid = self._pid(port)
        if pid is not None:
            self._signal([pid], signal.SIGCONT)

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
        self._launch(port)
        if self._wait_ping([port]):
            raise RuntimeError(self._failed_message([port]))

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

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=port,
            socket_timeout=2,
            socket_connect_timeout=2,
            decode_responses=True,
        )

    def _ping(self, port: int) -> bool:
        try:
            with self._client(port) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _args(self, port: int) -> list[str]:
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

    def _launch(self, port: int) -> None:
        folder = self.node_dir(port)
        folder.mkdir(parents=True, exist_ok=True)
        self._procs[port] = subprocess.Popen(
            self._args(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.detach,
        )

    def _pid(self, port: int) -> int | None:
        """The node's live process: our child if we started it, else the one its pidfile
        names (checked to be the redis-server of that port). Never found by name."""
        proc = self._procs.get(port)
        if proc is not None:
            if proc.poll() is None:
                return proc.pid
            del self._procs[port]
            return None
        try:
            pid = int((self.node_dir(port) / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_node_process(pid, port) else None

    @staticmethod
    def _signal(pids: Collection[int], signum: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _gone(self, port: int, pid: int) -> bool:
        """Whether the process has exited (reaped if it is our child; a zombie left to init
        counts as gone)."""
        proc = self._procs.get(port)
        if proc is not None and proc.pid == pid:
            if proc.poll() is None:
                return False
            del self._procs[port]
            return True
        return process_state(pid) in (None, "Z")

    def _wait_gone(self, port: int, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._gone(port, pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _wait_ping(self, ports: Sequence[int]) -> list[int]:
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
                elif self._ping(port):
                    pending.remove(port)
            if pending and time.monotonic() > deadline:
                return failed + pending
            if pending:
                time.sleep(0.02)
        return failed

    def _log(self, port: int) -> str:
        try:
            return (self.node_dir(port) / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def _failed_message(self, ports: Sequence[int]) -> str:
        tails = "\n".join(
            f"--- {self.node_dir(p) / 'redis.log'} ---\n{self._log(p)[-2000:]}" for p in ports
        )
        return f"redis-server did not start on port(s) {list(ports)}:\n{tails}"

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
