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


def count_expired(client: Any, expired: int) -> Any:
    """Add to the count of reservations the sweep has expired."""
    return client.incrby(keys.SWEEP_EXPIRED, expired)
