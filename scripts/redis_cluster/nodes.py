"""The nodes of a local Redis Cluster (scripts/redis_cluster/) as processes and ports: free
port pairs for a node and its cluster bus, a node process found by its pid, and CLUSTER NODES
and INFO parsed."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

BUS_OFFSET = 10_000  # a node's cluster bus port is its client port + 10000
HOST = "127.0.0.1"


# --- ports -------------------------------------------------------------------------------------


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def free_cluster_ports(count: int, *, avoid: Collection[int] = ()) -> list[int]:
    """`count` distinct ports P with both P and P + 10000 free on 127.0.0.1 (and neither one
    a port, or the bus port, of `avoid`). Like free_port() it only proves that a bind works
    now; all the candidates are held bound until every one is found, so they are distinct."""
    low, _ = _ephemeral_range()
    # Below the ephemeral range (no outgoing connection picks a port there) and above the
    # well-known services (6379, 5432, 8080...), when the range leaves room; else anywhere.
    first, last = 10_000, low - BUS_OFFSET
    if last - first < 1_000:  # a custom ephemeral range leaves no room below it
        first, last = 1_024, 65_536 - BUS_OFFSET
    taken = {p for a in avoid for p in (a, a + BUS_OFFSET)}
    rng = random.Random()  # own generator: a test seeding `random` must not make runs collide
    held: list[socket.socket] = []
    found: list[int] = []
    try:
        for _ in range(2_000):
            if len(found) == count:
                return found
            port = rng.randrange(first, last)
            if {port, port + BUS_OFFSET} & taken:
                continue
            pair: list[socket.socket] = []
            try:
                for candidate in (port, port + BUS_OFFSET):
                    s = socket.socket()
                    pair.append(s)
                    s.bind((HOST, candidate))
            except OSError:
                for s in pair:
                    s.close()
                continue
            held.extend(pair)
            found.append(port)
            taken.update((port, port + BUS_OFFSET))
        if len(found) == count:
            return found
        raise RuntimeError(f"found only {len(found)} of {count} free port pairs (P, P+10000)")
    finally:
        for s in held:
            s.close()


# --- processes ---------------------------------------------------------------------------------


def process_state(pid: int) -> str | None:
    """None: no such process; "Z": a zombie; else its state letter ("?" without /proc)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return "?"
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else "?"


def is_node_process(pid: int, port: int) -> bool:
    """Whether `pid` is alive (not a zombie) and is the redis-server of `port`: its name, and
    its command line ("redis-server 127.0.0.1:P [cluster]", or the raw `--port P`)."""
    if process_state(pid) in (None, "Z"):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    words = cmdline.replace("\0", " ").split()
    return comm.startswith("redis-server") and any(
        w == str(port) or w.endswith(f":{port}") for w in words
    )


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a primary
    slots: int  # how many slots it serves

    @property
    def failed(self) -> bool:
        return bool({"fail", "noaddr", "handshake"} & self.flags)


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    nodes: list[ClusterNode] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]  # ip:port@cport[,hostname]
        slots = 0
        for item in fields[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            start, _, end = item.partition("-")
            slots += int(end or start) - int(start) + 1
        nodes.append(
            ClusterNode(
                id=fields[0],
                port=int(address.rpartition(":")[2]),
                flags=frozenset(fields[2].split(",")),
                master_id=fields[3],
                slots=slots,
            )
        )
    return nodes


def parse_info(text: str) -> dict[str, str]:
    pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, _, value in pairs}
