"""Whether a local Redis Cluster (scripts/redis_cluster/) is healthy, judged from what each
running node answers (CLUSTER INFO, CLUSTER NODES, INFO replication): no I/O here.

Healthy: every running node answers, reports cluster_state:ok with all 16384 slots ok and
knows every node, flags no running node as failing; all of them agree on which `primaries`
running nodes serve the slots and which running node replicates which; every replica's link
to its primary is up and in sync."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from scripts.redis_cluster.nodes import ClusterNode

SLOTS = 16_384

# What one node sees: the primaries serving slots, and (replica, its primary) for each replica.
Roles = tuple[frozenset[int], frozenset[tuple[int, int]]]


def node_problem(
    port: int,
    info: Mapping[str, str],
    nodes: list[ClusterNode],
    replication: Mapping[str, Any],
    *,
    live: Collection[int],
    known: int,
    primaries: int,
) -> tuple[str | None, Roles]:
    """What is wrong as the node at `port` sees the cluster (None: nothing), and the roles it
    sees. `live`: the running nodes' ports; `known`: how many nodes the cluster has."""
    roles: Roles = (frozenset(), frozenset())
    if info.get("cluster_state") != "ok":
        return f"node {port}: cluster_state:{info.get('cluster_state')}", roles
    if info.get("cluster_slots_ok") != str(SLOTS):
        return f"node {port}: cluster_slots_ok:{info.get('cluster_slots_ok')}", roles
    if info.get("cluster_known_nodes") != str(known):
        return f"node {port}: cluster_known_nodes:{info.get('cluster_known_nodes')}", roles
    flagged = sorted(n.port for n in nodes if n.port in live and n.failed)
    if flagged:
        return f"node {port} flags the running node(s) {flagged} as failing", roles
    owners = {n.port: n.slots for n in nodes if "master" in n.flags and n.slots}
    if sum(owners.values()) != SLOTS:
        return f"node {port} sees {sum(owners.values())} slots served", roles
    stopped = sorted(set(owners) - set(live))
    if stopped:
        return f"node {port} sees slots served by the stopped node(s) {stopped}", roles
    if len(owners) != primaries:
        return f"node {port} sees {len(owners)} primaries, not {primaries}", roles
    port_of = {n.id: n.port for n in nodes}
    links = frozenset(
        (n.port, port_of.get(n.master_id, 0))
        for n in nodes
        if n.port in live and "slave" in n.flags
    )
    roles = (frozenset(owners), links)
    role = replication.get("role")
    if role == "slave":
        if replication.get("master_link_status") != "up":
            return f"node {port}: replica link {replication.get('master_link_status')}", roles
        if replication.get("master_sync_in_progress") not in (0, "0", None):
            return f"node {port}: replica still syncing", roles
    elif port not in owners:
        return f"node {port} is a {role} without slots", roles
    return None, roles


def agreement_problem(views: Mapping[int, Roles], live: Collection[int]) -> str | None:
    """What is wrong once each node is fine alone: the nodes see different roles, or a running
    node is neither a primary nor a replica."""
    if len(set(views.values())) > 1:
        seen = {p: (sorted(o), sorted(r)) for p, (o, r) in views.items()}
        return f"the nodes disagree on the roles (primaries, replica->primary): {seen}"
    primaries, links = next(iter(views.values()))
    unaccounted = sorted(set(live) - primaries - {replica for replica, _ in links})
    if unaccounted:
        return f"the node(s) {unaccounted} are neither primaries nor replicas"
    return None
