"""What every group of the engine's operations shares: the client, the settings, the
scripts, and the routing of a call to its partition's keys.

`Engine` (engine/engine.py) is made of the groups — stock (engine/stock.py), reservations
(engine/reservations.py), orders (engine/orders.py) — each a subclass of `EngineBase`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from engine import errors
from engine import validation as v
from engine.coalesce import Coalescer
from engine.keys import PartitionKeys, idempotency_claim, new_id, partition_keys, partition_of
from engine.models import CallContext
from engine.script_spec import ScriptSpec
from engine.scripts import Checkpoints, Scripts, parse, prepare_from
from engine.settings import Settings


class EngineBase:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        ids: Callable[[int, int], str] = new_id,
        checkpoints: Checkpoints | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        # `checkpoints`: the database's, against which a Redis that has started is checked
        # before its first write to each partition (engine/scripts.py); None: no record, Redis
        # is taken as it is (a test, a bench)
        self.scripts = Scripts(
            redis,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
            checkpoints=checkpoints,
        )
        # reserve and place-order calls, alone or coalesced (engine/coalesce.py; COALESCE)
        self.coalescer = (
            Coalescer(self.scripts, max_batch=settings.coalesce_max_batch)
            if settings.coalesce
            else None
        )
        # where new reservation and order ids come from: (partition, partitions) -> id
        self._new_id = ids

    async def _run_coalesced(
        self, spec: ScriptSpec, values: Mapping[str, str | int]
    ) -> dict[str, Any]:
        """`Scripts.run` for an operation that may be coalesced with concurrent calls of it,
        its parameters in one mapping (made once, on the hot path)."""
        call = prepare_from(spec, values)
        if self.coalescer is None:
            return parse(await self.scripts.raw(call))
        return parse(await self.coalescer.run(spec, call))

    def keys(self, partition: int) -> PartitionKeys:
        return partition_keys(partition)

    def partition_of_product(self, product: str) -> int:
        return partition_of(product, self.settings.partitions)

    def _keys_for_product(self, product: str) -> PartitionKeys:
        return partition_keys(partition_of(product, self.settings.partitions))

    def _keys_for_record(
        self, record_id: str, not_found: type[errors.ReservationNotFound | errors.OrderNotFound]
    ) -> PartitionKeys:
        if not isinstance(record_id, str) or not v.RECORD_ID.fullmatch(record_id):
            raise not_found(str(record_id))
        return partition_keys(partition_of(record_id, self.settings.partitions))

    def _caller(
        self, k: PartitionKeys, ctx: CallContext, operation: str, payload: Sequence[str | int]
    ) -> dict[str, str | int]:
        """The parameters every idempotent write takes alike (engine.specs): who calls under
        which request, and the idempotency record with the request's fingerprint. The
        fingerprint hashes the operation and `payload`, the call's own arguments."""
        idem, fp = self._idempotency(k, ctx, operation, payload)
        return {
            "idem": idem,
            "actor": ctx.actor,
            "request_id": ctx.request_id,
            "fingerprint": fp,
            "idempotency_ttl": self.settings.idempotency_ttl_ms,
        }

    async def _claimed(
        self, k: PartitionKeys, ctx: CallContext, operation: str, payload: Sequence[str | int]
    ) -> dict[str, str | int]:
        """`_caller`, for a call that may go to any partition: with PARTITIONS > 1 and an
        idempotency key, the key is first claimed for this request (`_claim`)."""
        caller = self._caller(k, ctx, operation, payload)
        if ctx.idempotency_key is not None and self.settings.partitions > 1:
            await self._claim(ctx, operation, str(caller["fingerprint"]))
        return caller

    async def _claim(self, ctx: CallContext, operation: str, fp: str) -> None:
        """Raise IdempotencyMismatch if the key was sent before with another request. The
        partition's record answers a repeat, and a request that differs in its partition's
        record; but a request that differs in where it goes (another product, another
        reservation or order in the path) finds no record in its partition. So with more
        than one partition each key's first fingerprint is kept apart (keys.idempotency_claim,
        for IDEMPOTENCY_TTL), set before the call: a call that then fails leaves the key
        claimed for that request, which a retry of it may still make."""
        assert ctx.idempotency_key is not None
        claim = idempotency_claim(ctx.actor, operation, ctx.idempotency_key)
        first = await self.redis.set(
            claim, fp, nx=True, get=True, px=self.settings.idempotency_ttl_ms
        )
        if first is not None and first != fp:
            raise errors.IdempotencyMismatch()

    def _idempotency(
        self, k: PartitionKeys, ctx: CallContext, operation: str, payload: Sequence[str | int]
    ) -> tuple[str, str]:
        """The idempotency record's key and the request's fingerprint ('' = none)."""
        if ctx.idempotency_key is None:
            return k.unused_idempotency, ""
        key = ctx.idempotency_key
        if not 1 <= len(key) <= 255:
            raise errors.InvalidInput("idempotency_key", "must be 1 to 255 characters")
        text = v.fingerprint_text([operation, list(payload)])
        fp = hashlib.sha256(text.encode()).hexdigest()[:32]
        return k.idempotency(ctx.actor, operation, key), fp
