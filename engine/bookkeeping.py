"""What the worker and the scheduler keep in Redis for operators: the last drain of each
partition, the last reconcile's report, the count of reservations the sweep expired.

The keys sit outside the partitions (engine/keys.py names them; engine/reads.py reads them
back for the dashboard and /metrics). Each helper takes a sync or an async client and
returns what the client's method returns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from engine import keys


def keep_last_drain(client: Any, partition: int, record: Mapping[str, Any]) -> Any:
    """The partition's last drain that applied anything (at_ms, applied, lag percentiles)."""
    return client.hset(keys.LAST_DRAIN, str(partition), json.dumps(record))


def keep_last_reconcile(client: Any, report: str) -> Any:
    """The last reconcile's report (JSON text), kept LAST_RECONCILE_TTL_S: what is left of
    its TTL tells when it was written."""
    return client.set(keys.LAST_RECONCILE, report, ex=keys.LAST_RECONCILE_TTL_S)


def keep_series(client: Any, partition: int, at_ms: int, applied: int, lag_p99_ms: int) -> None:
    """One drain in the operations page's trends: its events, and its partition's lag (the
    bucket keeps the highest). `client`: a sync client (the worker)."""
    key = keys.series_bucket(at_ms)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(key, "events", applied)
    pipe.hget(key, f"lag|{partition}")
    pipe.expire(key, keys.SERIES_KEEP_S)
    _, lag, _ = pipe.execute()
    if lag is None or int(lag) < lag_p99_ms:
        client.hset(key, f"lag|{partition}", lag_p99_ms)


def count_refusal(client: Any, product: str, at_ms: int) -> None:
    """A request refused by a product's purchase limits, in the minute's counts (a sync
    client or an async pipeline: what it queues is executed by the caller)."""
    key = keys.refusals_minute(at_ms)
    client.hincrby(key, product, 1)
    client.expire(key, keys.REFUSALS_KEEP_S)


def count_expired(client: Any, expired: int) -> Any:
    """Add to the count of reservations the sweep has expired."""
    return client.incrby(keys.SWEEP_EXPIRED, expired)
