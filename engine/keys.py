"""Every Redis key name, built here and nowhere else.

Each key carries the hash tag of its partition, `inv:{p<N>}:…`, so that all the keys one
script touches sit in one Redis Cluster slot. A product belongs to partition
`crc32(product) mod PARTITIONS`; a reservation or order id is drawn so that the same hash
of the id lands in the partition of its products, which lets any id be routed alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

PREFIX = "inv"


def partition_of(entity: str, partitions: int) -> int:
    if partitions == 1:
        return 0
    return zlib.crc32(entity.encode()) % partitions


class _Hexes:
    """`uuid.uuid4().hex` values, from os.urandom read BATCH at a time (one system call for
    many ids, not one each); safe from any thread, and a forked child draws its own."""

    BATCH = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[str] = []
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._ids = []

    def next(self) -> str:
        with self._lock:
            if not self._ids:
                self._ids = self._draw()
            return self._ids.pop()

    def _draw(self) -> list[str]:
        raw = bytearray(os.urandom(16 * self.BATCH))
        for i in range(0, 16 * self.BATCH, 16):
            raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40  # version 4
            raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80  # RFC 4122 variant
        text = raw.hex()
        return [text[i : i + 32] for i in range(0, 32 * self.BATCH, 32)]


_hexes = _Hexes()


def uuid4_hex() -> str:
    """`uuid.uuid4().hex`, without building a UUID object or a system call per id (it runs
    twice per reservation request)."""
    return _hexes.next()


def uuid4_str() -> str:
    """`str(uuid.uuid4())`, the same way."""
    h = uuid4_hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# The last hex digits of an id, which new_id turns until the id's hash falls in its partition.
_TAIL = 3
_TAILS = [f"{v:03x}".encode() for v in range(16**_TAIL)]


def _turned(drawn: str, partition: int, partitions: int, skip: int = 0) -> str | None:
    """`drawn` (hex) with its last three hex digits turned, from theirs on (the first `skip`
    turns left out), until its hash falls in `partition`: the CRC of the rest is computed once
    and continued over the three digits (zlib.crc32's running value), so each try is one small
    C call. None if no turn lands there."""
    head = drawn[:-_TAIL].encode()
    crc = zlib.crc32(head)
    start = int(drawn[-_TAIL:], 16)
    for i in range(skip, len(_TAILS)):
        tail = _TAILS[(start + i) % len(_TAILS)]
        if zlib.crc32(tail, crc) % partitions == partition:
            return (head + tail).decode()
    return None


def new_id(partition: int, partitions: int) -> str:
    """A random UUID (hex) whose hash falls in `partition`.

    Drawing whole ids until one falls there costs PARTITIONS draws on average (64 on a
    cluster: a quarter of a reservation's client CPU). Instead one id is drawn and its last
    three hex digits (free bits of a version 4 UUID) are turned until it does (`_turned`).
    116 random bits remain."""
    if partitions == 1:
        return uuid4_hex()
    while True:
        found = _turned(uuid4_hex(), partition, partitions)
        if found is not None:
            return found


def part_id(cart: str, partition: int, partitions: int) -> str:
    """The id of a cart's part in `partition` (engine/carts.py): the cart's id turned
    (`_turned`, its own digits left out) until its hash falls in `partition` — so every part's
    id follows from the cart's, and a part is found without being recorded."""
    found = _turned(cart, partition, partitions, skip=1)
    if found is None:
        raise ValueError(f"no id of cart {cart!r} falls in partition {partition}")
    return found


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """The keys of one partition. Per-record keys are built by its methods."""

    partition: int
    stock: str
    products: str
    live: str
    expiry: str
    outbox: str
    dead_letters: str
    # What every reservation record's key of the partition starts with: the record of `id` is
    # this + id (`reservation`). Passed to the scripts that end reservations they are not named
    # (lua/holds.lua expire_due: an expired one's record gets its TTL).
    records: str
    # the hash tag that puts the partition's keys in one slot: `inv:{p<N>}`
    _tag: str = field(repr=False)

    def reservation(self, reservation_id: str) -> str:
        return self.records + reservation_id

    def order(self, order_id: str) -> str:
        return f"{self._tag}:order:{order_id}"

    def return_mark(self, order_id: str) -> str:
        """Set once a cancelled cart order's units of this partition are back (lua/part.lua)."""
        return f"{self._tag}:order-returned:{order_id}"

    def idempotency(self, actor: str, operation: str, key: str) -> str:
        return self.idempotency_by_hash(idempotency_digest(actor, operation, key))

    def idempotency_by_hash(self, digest: str) -> str:
        """The idempotency record named by its digest (as the database keeps it)."""
        return f"{self._tag}:idem:{digest}"

    @property
    def applied(self) -> str:
        """The id of the last event the database has applied, as far as this Redis knows:
        moved up with each trim. A Redis restored from an older copy holds an older value."""
        return f"{self._tag}:outbox:applied"

    @property
    def behind(self) -> str:
        """Set (JSON) by the drain when this Redis is behind the database's checkpoint; the
        drain of the partition stays paused until `inventory reconcile --fix` restores it."""
        return f"{self._tag}:outbox:behind"

    @property
    def drain_lock(self) -> str:
        """Held by the one worker draining this partition's outbox (a lease)."""
        return f"{self._tag}:outbox:drain-lock"

    @property
    def drain_requested(self) -> str:
        """Set while a drain job for this partition is queued, so writes enqueue one at most."""
        return f"{self._tag}:outbox:drain-requested"

    @property
    def carts(self) -> str:
        """The carts across partitions whose home is here and whose other parts have a step to
        follow: a sorted set, cart (or order) id -> the step's deadline (lua/cart.lua)."""
        return f"{self._tag}:carts:pending"

    @property
    def pending(self) -> str:
        """The direct orders still pending, by when they time out: a sorted set, order id ->
        ms (ORDER_PENDING_TTL; lua/holds.lua pending_until)."""
        return f"{self._tag}:orders:pending"

    @property
    def held(self) -> str:
        """What each customer holds, counted for their limits: a hash, 'u|<product>|<owner>' ->
        units of a product with a max_per_customer, 'n|<owner>' -> live reservations
        (lua/limits.lua)."""
        return f"{self._tag}:held"

    @property
    def waitlist(self) -> str:
        """Every product's waitlist of the partition, in order of joining: a sorted set of
        '<product>|<joined µs>|<entry id>' (lua/wait.lua)."""
        return f"{self._tag}:waitlist"

    @property
    def wait_due(self) -> str:
        """The waitlist entries by when they leave unserved: entry id -> ms (lua/wait.lua)."""
        return f"{self._tag}:waitlist:due"

    @property
    def wait_data(self) -> str:
        """The waitlist entries, each customer's entry per product, and the records of handed-
        off reservations not used yet: a hash (lua/wait.lua)."""
        return f"{self._tag}:waitlist:data"

    @property
    def unused_idempotency(self) -> str:
        """Placeholder passed in KEYS when a call carries no idempotency key."""
        return f"{self._tag}:idem:-"

    @property
    def any_order(self) -> str:
        """A SCAN pattern matching every order record of the partition (see `record_id`)."""
        return self.order("*")


def stock_fields(product: str, warehouse: str) -> tuple[str, str]:
    """The fields of one product x warehouse in a partition's stock hash: available, reserved
    (lua/lib.lua's `counts` and `move` write the same names)."""
    return f"a|{product}|{warehouse}", f"r|{product}|{warehouse}"


def stock_counters(fields: Mapping[str, str | int]) -> dict[tuple[str, str], tuple[int, int]]:
    """A stock hash read whole: (product, warehouse) -> (available, reserved). A field that
    is no counter (`malformed_stock_fields`: only a hand could write it) is left out."""
    out: dict[tuple[str, str], list[int]] = {}
    for name, value in fields.items():
        counter = _counter(name, value)
        if counter is not None:
            kind, product, warehouse, n = counter
            out.setdefault((product, warehouse), [0, 0])[kind == "r"] = n
    return {pw: (a, r) for pw, (a, r) in out.items()}


def malformed_stock_fields(fields: Mapping[str, str | int]) -> list[str]:
    """The fields of a stock hash that are no counter ('a|' or 'r|' product '|' warehouse, a
    whole number): what `inventory check` reports as broken."""
    return sorted(name for name, value in fields.items() if _counter(name, value) is None)


def _counter(name: str, value: str | int) -> tuple[str, str, str, int] | None:
    kind, product, warehouse = [*name.split("|", 2), "", ""][:3]
    if kind not in ("a", "r") or not product or not warehouse:
        return None
    try:
        return kind, product, warehouse, int(value)
    except ValueError:
        return None


def record_id(key: str) -> str:
    """The id of a reservation or order record from its key."""
    return key.rsplit(":", 1)[1]


def event_id(partition: int, stream_id: str) -> str:
    """An outbox event's global id: its partition and its stream id (`p<N>-<ms>-<seq>`),
    unique across partitions. The consistency token a write hands out is one."""
    return f"p{partition}-{stream_id}"


_EVENT_ID = re.compile(r"p(\d{1,6})-(\d{1,20})-(\d{1,20})")


def parse_event_id(text: str) -> tuple[int, str]:
    """The partition and stream id of an `event_id`; ValueError for any other text."""
    m = _EVENT_ID.fullmatch(text)
    if m is None:
        raise ValueError(f"not an event id: {text[:64]!r}")
    return int(m[1]), f"{m[2]}-{m[3]}"


def idempotency_hash(key: str) -> str:
    """The digest an idempotency record's key ends with (see PartitionKeys.idempotency)."""
    prefix, _, digest = key.rpartition(":idem:")
    if not prefix or not digest or digest == "-":
        raise ValueError(f"not an idempotency key: {key!r}")
    return digest


@lru_cache(maxsize=1024)
def partition_keys(partition: int) -> PartitionKeys:
    tag = f"{PREFIX}:{{p{partition}}}"
    return PartitionKeys(
        partition=partition,
        _tag=tag,
        stock=f"{tag}:stock",
        products=f"{tag}:products",
        live=f"{tag}:reservations:live",
        expiry=f"{tag}:reservations:expiry",
        outbox=f"{tag}:outbox",
        dead_letters=f"{tag}:outbox:dead",
        records=f"{tag}:reservation:",
    )


# Outside the partitions, written by the worker and the scheduler (persistence/jobs.py):
# the last reconcile's report (JSON, with a day's TTL), the last drain of each partition that
# applied anything (a hash: partition -> JSON), and how many reservations the periodic sweep
# has expired (a counter).
LAST_RECONCILE = f"{PREFIX}:reconcile:last"
# The partition count the data is laid out in (engine/layout.py), JSON {"partitions": N}.
LAYOUT = f"{PREFIX}:layout"
LAST_RECONCILE_TTL_S = 86_400  # what is left of it tells when it was written
LAST_DRAIN = f"{PREFIX}:drain:last"
SWEEP_EXPIRED = f"{PREFIX}:sweep:expired"
# The operations page's trends (engine/bookkeeping.py): per SERIES_BUCKET_S seconds, a hash of
# the events the drains applied and each partition's drain lag (p99, ms), kept SERIES_KEEP_S.
SERIES_BUCKET_S = 10
SERIES_KEEP_S = 16 * 60
# The refusals of a product's purchase limits, per minute (a hash: product -> count), kept
# REFUSALS_KEEP_S.
REFUSALS_KEEP_S = 180


def series_bucket(at_ms: int) -> str:
    """The trend bucket holding the moment `at_ms`."""
    start = at_ms // 1000 // SERIES_BUCKET_S * SERIES_BUCKET_S
    return f"{PREFIX}:ops:series:{start}"


def refusals_minute(at_ms: int) -> str:
    """The refusal counts of the minute holding `at_ms`."""
    return f"{PREFIX}:ops:refused:{at_ms // 60_000}"


# The catalog's version: a random token that every catalog write through the API replaces
# (web/services/products.py), read in the same round trip as the stock
# (StockOps.catalog_stocks) by the API processes, whose cached catalog rows belong to the
# version they were read under. Random rather than a counter: a Redis that lost it and counted
# again could not hand back a version some process still holds.
CATALOG_VERSION = f"{PREFIX}:catalog:version"


def login_attempts(kind: str, *values: str) -> str:
    """The failed-login counter of one username, client address, or username from one address
    (`kind`: "user", "ip" or "user-ip" with the username and the address).

    Outside the partitions: no script touches it. Every counter shares one hash tag, so that a
    success clears a username's counters in one MULTI on a Redis Cluster too. The values are
    hashed, so any text is safe.
    """
    digest = hashlib.sha256("\x00".join(values).encode()).hexdigest()[:32]
    return f"{PREFIX}:{{auth}}:login-attempts:{kind}:{digest}"


def idempotency_digest(actor: str, operation: str, key: str) -> str:
    """The digest an idempotency key is kept by. The client's key is hashed: any text is
    safe, and one user's key can't collide with another's or with another operation's."""
    return hashlib.sha256(f"{actor}\x00{operation}\x00{key}".encode()).hexdigest()[:40]


def idempotency_claim(actor: str, operation: str, key: str) -> str:
    """Outside the partitions: the fingerprint of the first request an idempotency key was
    sent with, with PARTITIONS > 1 (engine/base.py `_claim`). A key's record is kept in the
    partition its request goes to; another request under the key may go to another one,
    where no record says the key was used. On a cluster this key sits in a slot of its own."""
    return f"{PREFIX}:idem-claim:{{{idempotency_digest(actor, operation, key)}}}"


def rate_limit_bucket(kind: str, value: str) -> str:
    """The request token bucket of one client (`kind`: "user" or "ip").

    Outside the partitions. Each bucket carries the hash tag of one of RATE_LIMIT_GROUPS groups
    (by its digest), so that the settle of many buckets (web/ratelimit.py) is one call per group
    on a Redis Cluster: the buckets spread over the nodes, and a group's sit in one slot. The
    value is hashed, so any text is safe.
    """
    digest = hashlib.sha256(value.encode()).hexdigest()[:32]
    group = int(digest[:8], 16) % RATE_LIMIT_GROUPS
    return f"{PREFIX}:{{rl{group}}}:ratelimit:{kind}:{digest}"


RATE_LIMIT_GROUPS = 16


def hash_tag(key: str) -> str:
    """The part of `key` Redis Cluster hashes: between the first '{' and the next '}' (the
    whole key when there is no such tag)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key
