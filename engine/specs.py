"""What each Lua operation takes: its KEYS and ARGV by name, in the order of its header (a
`ScriptSpec` each, engine/script_spec.py), and `SPECS`, every operation by name.
tests/test_units_specs.py reads every header and checks that its spec names the same KEYS and
ARGV, in the same order.
"""

from __future__ import annotations

from engine.script_spec import ScriptSpec

# The waitlists' keys, which every call that may give units back names last but for the
# waitlist function's `behind` (lua/wait.lua use_waitlists).
_WAITLISTS = ("waitlist", "wait_due", "wait_data")


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
# A reservation's last args: the engine's settings (and a cart's, '' alone), the same for every
# call of a batch, which sends them once (ScriptSpec.batch_args).
_RESERVE_SETTINGS = ("expiry_batch", "retention", "cart", "parts", "hold", "max_live", "records")

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
        *_RESERVE_SETTINGS,
    ),
    own_keys=("idem", "record"),
    batch_args=("idempotency_ttl", *_RESERVE_SETTINGS),
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
    args=("limit", "hold", "retention", "records"),
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
    own_keys=("record", "order", "idem"),
    batch_args=("idempotency_ttl", "retention", "hold", "pending_ttl"),
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
    args=(
        "order_id",
        "lines",
        "allow_split",
        "owner",
        *_CALLER,
        "expiry_batch",
        "pending_ttl",
        "retention",
        "records",
    ),
    own_keys=("order", "idem"),
    batch_args=("idempotency_ttl", "expiry_batch", "pending_ttl", "retention", "records"),
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
    keys=("stock", "products", "live", "expiry", "outbox", "applied", "behind", "held"),
    args=("plan", "actor", "request_id"),
    more_keys="record",  # the record and idempotency keys the plan names by index
)
VERIFY = ScriptSpec(
    "verify",
    keys=("outbox", "applied", "behind"),
    args=("checkpoint", "partition"),
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
        VERIFY,
        TRIM_OUTBOX,
        RATE_LIMIT,
        RATE_LIMIT_SETTLE,
    )
}

# Called whatever this Redis is: the repair that restores a partition from the record, and
# the check of it against the record (lua/verify.lua).
UNFENCED = frozenset({REPAIR.name, VERIFY.name})


def fence(spec: ScriptSpec) -> int | None:
    """The position (1-based) of the partition's behind flag among `spec`'s KEYS when its
    function must wait until this Redis is checked against the record (lib.lua `verified`):
    every write that names the flag but those of UNFENCED. None: called whatever Redis is."""
    if spec.read_only or spec.name in UNFENCED or "behind" not in spec.keys:
        return None
    return spec.keys.index("behind") + 1
