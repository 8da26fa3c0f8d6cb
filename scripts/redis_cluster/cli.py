"""`python -m scripts.redis_cluster start|stop|status DIR`: a local Redis Cluster from the
command line (scripts/redis_cluster/), its nodes found again through DIR's pidfiles."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from scripts.redis_cluster import STATE_FILE, RedisClusterServer
from scripts.redis_cluster.nodes import HOST


def _cmd_start(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if (folder / STATE_FILE).exists():
        cluster = RedisClusterServer.from_dir(folder)
        asked = {
            "primaries": args.primaries,
            "replicas": args.replicas,
            "appendfsync": args.appendfsync,
            "node_timeout_ms": args.node_timeout,
        }
        differ = [
            f"{name} {value} (recorded: {getattr(cluster, name)})"
            for name, value in asked.items()
            if value is not None and value != getattr(cluster, name)
        ]
        if differ:
            print(
                f"redis_cluster: {folder} holds another cluster: asked {', '.join(differ)}; "
                "stop it and use another DIR",
                file=sys.stderr,
            )
            return 2
    else:
        cluster = RedisClusterServer(
            folder,
            primaries=3 if args.primaries is None else args.primaries,
            replicas=0 if args.replicas is None else args.replicas,
            appendfsync=args.appendfsync or "everysec",
            node_timeout_ms=1000 if args.node_timeout is None else args.node_timeout,
            detach=True,
        )
    try:
        cluster.start()
    except (RuntimeError, ValueError) as error:
        print(f"redis_cluster: {error}", file=sys.stderr)
        return 1
    print(
        f"redis_cluster: running, primaries {cluster.primary_ports()}, "
        f"replicas {cluster.replica_ports()}, dir {cluster.data_dir}",
        file=sys.stderr,
    )
    print(cluster.url)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if not (folder / STATE_FILE).exists():
        print(f"redis_cluster: no cluster recorded in {folder}", file=sys.stderr)
        return 0
    cluster = RedisClusterServer.from_dir(folder)
    cluster.stop()
    print(f"redis_cluster: stopped (ports {cluster.ports})", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if not (folder / STATE_FILE).exists():
        print(f"not running (no cluster recorded in {folder})")
        return 3
    cluster = RedisClusterServer.from_dir(folder)
    live = [p for p in cluster.ports if cluster.running(p)]
    if not live:
        print(f"not running (ports {cluster.ports}, dir {cluster.data_dir})")
        return 3
    try:
        nodes = {n.port: n for n in cluster.nodes()}
    except RuntimeError:
        nodes = {}
    by_id = {n.id: n.port for n in nodes.values()}
    for port in cluster.ports:
        node = nodes.get(port)
        if not cluster.running(port):
            state = "not running"
        elif node is None:
            state = f"pid {cluster.processes.pid(port)}, not answering"
        elif "master" in node.flags:
            state = f"pid {cluster.processes.pid(port)}, primary, {node.slots} slots"
        else:
            state = (
                f"pid {cluster.processes.pid(port)}, replica of {by_id.get(node.master_id, '?')}"
            )
        print(f"{HOST}:{port}  {state}")
    problem = cluster.problem()
    print(f"cluster: {problem or 'ok'}  {cluster.url}")
    return 0 if problem is None and len(live) == len(cluster.ports) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.redis_cluster",
        description="A local Redis Cluster on 127.0.0.1 whose nodes live in DIR/<port>.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "start", help="start the nodes (detached) and print the URL; resumes the cluster in DIR"
    )
    start.add_argument("dir")
    start.add_argument("--primaries", type=int, help="3 by default")
    start.add_argument("--replicas", type=int, help="replicas per primary, 0 by default")
    start.add_argument("--appendfsync", choices=["always", "everysec", "no"])
    start.add_argument("--node-timeout", type=int, help="cluster-node-timeout in ms (1000)")
    start.set_defaults(run=_cmd_start)
    stop = commands.add_parser("stop", help="stop the nodes recorded in DIR")
    stop.add_argument("dir")
    stop.set_defaults(run=_cmd_stop)
    status = commands.add_parser("status", help="exit 0 if ok, 1 if unhealthy, 3 if not running")
    status.add_argument("dir")
    status.set_defaults(run=_cmd_status)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code
