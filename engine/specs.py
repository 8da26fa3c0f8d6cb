"""What each Lua operation takes: its KEYS and ARGV by name, in the order of its header.

Each lua/<name>.lua is one function of the library (engine/scripts.py). It reads its
arguments by position (`KEYS[3]`, `ARGV[7]`); its header (the comment that opens the file)
says what each position holds. A `ScriptSpec` says the same once in Python, and `build`
turns named values into the two lists, so no caller counts positions. Building is sans-I/O:
the async engine and the sync worker run the same `build` (through engine.scripts.prepare),
then call the function their own way. tests/test_units_specs.py reads every header and
checks that its spec names the same KEYS and ARGV, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.keys import PartitionKeys

# The keys a partition has once, which specs name alike (engine.keys.PartitionKeys).
PARTITION_WIDE = (
    "stock",
    "products",
    "live",
    "expiry",
    "outbox",
    "behind",
    "applied",
    "carts",
    "pending",
    "held",
    "waitlist",
    "wait_due",
    "wait_data",
)
# The waitlists' keys, which every call that may give units back names last but for the
# waitlist function's `behind` (lua/wait.lua use_waitlists).
_WAITLISTS = ("waitlist", "wait_due", "wait_data")


@dataclass(frozen=True, slots=True)
class ScriptSpec:
    """One script's parameters. `keys` and `args` name KEYS[1..] and ARGV[1..] in header
    order, each in words of its header line (e.g. 'idempotency_ttl' for "idempotency record
    ttl (ms)"). `more_keys` names the keys that follow the fixed ones, when the script takes
    a variable number (KEYS[n + i]). `read_only` registers the function with the 'no-writes'
    flag and calls it with FCALL_RO (so it may run on a replica)."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    more_keys: str = ""
    read_only: bool = False
    # the keys that are each call's own (its record, its idempotency record): an operation
    # that names them may be coalesced (engine/coalesce.py) — many calls that share the other
    # keys run as one `<name>_many` function call (lua/many.lua)
    own_keys: tuple[str, ...] = ()
    # every parameter's name, to check a call's names in one comparison
    names: frozenset[str] = field(init=False, repr=False, compare=False)
    # the 0-based positions of the own keys in KEYS
    own_positions: tuple[int, ...] = field(init=False, repr=False, compare=False)
    # a call's shared keys (KEYS but its own), as a tuple: what groups coalesced calls
    shared_of: Callable[[Sequence[str]], tuple[str, ...]] = field(
        init=False, repr=False, compare=False
    )
    # partition_keys' answers, by partition
    by_partition: dict[int, dict[str, str]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset((*self.keys, *self.args)))
        own = tuple(i for i, name in enumerate(self.keys) if name in self.own_keys)
        object.__setattr__(self, "own_positions", own)
        # (operator.itemgetter, in C: of two or more positions it gives a tuple, and every
        # operation that has own keys shares more than one)
        shared = [i for i in range(len(self.keys)) if i not in own]
        picker = itemgetter(*shared) if len(shared) > 1 else lambda keys: (keys[shared[0]],)
        object.__setattr__(self, "shared_of", picker)
        if not set(self.own_keys) <= set(self.keys) or (self.own_keys and self.more_keys):
            raise TypeError(f"{self.name}: own keys must be among its fixed keys")

    def partition_keys(self, k: PartitionKeys) -> dict[str, str]:
        """This operation's partition-wide keys of partition `k`, by name (for `build`), made
        once per partition (callers unpack it, never change it: it is on the hot path)."""
        found = self.by_partition.get(k.partition)
        if found is None:
            found = {name: getattr(k, name) for name in self.keys if name in PARTITION_WIDE}
            self.by_partition[k.partition] = found
        return found

    def build(self, /, *more: str, **values: str | int) -> tuple[list[str], list[str | int]]:
        """(KEYS, ARGV) for one call: every named parameter exactly once, keys as strings;
        `more` are the variable keys, after the fixed ones."""
        if values.keys() != self.names:
            missing = [n for n in (*self.keys, *self.args) if n not in values]
            unknown = sorted(set(values) - self.names)
            raise TypeError(f"{self.name}: missing {missing}, unknown {unknown}")
        if more and not self.more_keys:
            raise TypeError(f"{self.name} takes no keys beyond {len(self.keys)}")
        keys: list[str] = []
        for name in self.keys:
            key = values[name]
            if not isinstance(key, str):
                raise TypeError(f"{self.name}: key {name} must be a str, not {key!r}")
            keys.append(key)
        return [*keys, *more], [values[name] for name in self.args]


# Every idempotent write ends its ARGV with the same four, in this order, after its own.
_CALLER = ("actor", "request_id", "fingerprint", "idempotency_ttl")

SETUP_PRODUCT = ScriptSpec(
    "setup_product",
    keys=("stock", "products", "outbox", "idem", "behind"),
    args=(
        "product",
        "price",
        "currency",
        "warehouses",
        "opening_stock",
        *_CALLER,
        "default_warehouse",
        "create_only",
        "limits",
    ),
)
ADJUST_STOCK = ScriptSpec(
    "adjust_stock",
    keys=(
        "stock",
        "products",
        "outbox",
        "idem",
        "behind",
        "live",
        "expiry",
        "held",
        *_WAITLISTS,
    ),
    args=("product", "changes", "reason", *_CALLER),
)
RESERVE = ScriptSpec(
    "reserve",
    keys=(
        "stock",
        "products",
        "live",
        "expiry",
        "outbox",
        "idem",
        "record",
        "behind",
        "carts",
        "held",
        *_WAITLISTS,
    ),
    args=(
        "reservation_id",
        "lines",
        "ttl",
        "allow_split",
        "owner",
        *_CALLER,
        "expiry_batch",
        "retention",
        "cart",
        "parts",
        "hold",
        "max_live",
    ),
    own_keys=("idem", "record"),
)
RELEASE = ScriptSpec(
    "release",
    keys=(
        "stock",
        "live",
        "expiry",
        "outbox",
        "record",
        "idem",
        "behind",
        "carts",
        "held",
        "products",
        *_WAITLISTS,
    ),
    args=("reservation_id", "scope", *_CALLER, "retention", "hold"),
)
EXTEND = ScriptSpec(
    "extend",
    keys=(
        "stock",
        "live",
        "expiry",
        "outbox",
        "record",
        "idem",
        "behind",
        "carts",
        "held",
        "products",
        *_WAITLISTS,
    ),
    args=("reservation_id", "scope", "ttl", "max_lifetime", *_CALLER, "retention", "hold"),
)
EXPIRE = ScriptSpec(
    "expire",
    keys=(
        "stock",
        "live",
        "expiry",
        "outbox",
        "behind",
        "carts",
        "pending",
        "held",
        "products",
        *_WAITLISTS,
    ),
    args=("limit", "hold"),
)
COMMIT = ScriptSpec(
    "commit",
    keys=(
        "stock",
        "products",
        "live",
        "expiry",
        "outbox",
        "record",
        "order",
        "idem",
        "behind",
        "carts",
        "pending",
        "held",
        *_WAITLISTS,
    ),
    args=(
        "reservation_id",
        "order_id",
        "scope",
        *_CALLER,
        "retention",
        "foreign_lines",
        "deadline",
        "hold",
        "pending_ttl",
        "foreign_held",
    ),
)
PLACE_ORDER = ScriptSpec(
    "place_order",
    keys=(
        "stock",
        "products",
        "live",
        "expiry",
        "outbox",
        "order",
        "idem",
        "behind",
        "pending",
        "held",
        *_WAITLISTS,
    ),
    args=("order_id", "lines", "allow_split", "owner", *_CALLER, "expiry_batch", "pending_ttl"),
    own_keys=("order", "idem"),
)
TRANSITION = ScriptSpec(
    "transition",
    keys=(
        "stock",
        "outbox",
        "order",
        "idem",
        "behind",
        "carts",
        "pending",
        "held",
        "products",
        "live",
        "expiry",
        *_WAITLISTS,
    ),
    args=(
        "order_id",
        "status",
        "scope",
        *_CALLER,
        "retention",
        "expected",
        "hold",
        "reason",
    ),
)
CART = ScriptSpec(
    "cart",
    keys=("carts", "idem"),
    args=("action", "reservation_id", "deadline", "fingerprint", "idempotency_ttl"),
)
PART = ScriptSpec(
    "part",
    keys=(
        "stock",
        "products",
        "live",
        "expiry",
        "outbox",
        "record",
        "behind",
        "held",
        *_WAITLISTS,
    ),
    args=(
        "action",
        "reservation_id",
        "cart_id",
        "expires_at",
        "pin",
        "order_id",
        "lines",
        "owner",
        "actor",
        "request_id",
        "retention",
        "counted",
    ),
)
WAITLIST = ScriptSpec(
    "waitlist",
    keys=(
        "stock",
        "products",
        "live",
        "expiry",
        "outbox",
        "held",
        *_WAITLISTS,
        "behind",
    ),
    args=(
        "action",
        "entry_id",
        "product",
        "quantity",
        "partial",
        "owner",
        "ttl",
        "wait_ttl",
        "actor",
        "request_id",
    ),
)
REPAIR = ScriptSpec(
    "repair",
    keys=("stock", "products", "live", "expiry", "outbox", "applied", "behind"),
    args=("plan", "actor", "request_id"),
    more_keys="record",  # the record and idempotency keys the plan names by index
)
TRIM_OUTBOX = ScriptSpec(
    "trim_outbox",
    keys=("outbox", "applied"),
    args=("last_event",),
)
RATE_LIMIT = ScriptSpec(
    "rate_limit",
    keys=("bucket",),
    args=("rate", "burst"),
)
RATE_LIMIT_SETTLE = ScriptSpec(
    "rate_limit_settle",
    keys=(),
    args=("rate", "burst", "settles"),
    more_keys="bucket",
)

# Every operation, by name, in the order the library registers them.
SPECS: dict[str, ScriptSpec] = {
    s.name: s
    for s in (
        SETUP_PRODUCT,
        ADJUST_STOCK,
        RESERVE,
        RELEASE,
        EXTEND,
        EXPIRE,
        COMMIT,
        PLACE_ORDER,
        TRANSITION,
        CART,
        PART,
        WAITLIST,
        REPAIR,
        TRIM_OUTBOX,
        RATE_LIMIT,
        RATE_LIMIT_SETTLE,
    )
}
