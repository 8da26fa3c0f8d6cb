"""A script's parameters, `ScriptSpec`: its KEYS and ARGV by name, in the order of its header,
and the building of one call's two lists from named values (engine/specs.py is the catalogue of
every operation's).

Each lua/<name>.lua is one function of the library (engine/scripts.py). It reads its
arguments by position (`KEYS[3]`, `ARGV[7]`); its header (the comment that opens the file)
says what each position holds. A `ScriptSpec` says the same once in Python, and `build`
turns named values into the two lists, so no caller counts positions. Building is sans-I/O:
the async engine and the sync worker run the same `build` (through engine.scripts.prepare),
then call the function their own way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.keys import PartitionKeys

# The keys a partition has once, which specs name alike (engine.keys.PartitionKeys), and the
# one such arg.
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
    "records",  # (not a key: an arg, the prefix of the partition's reservation records)
)


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
    # of the args, those that coalesced calls share when equal (the engine's settings, as the
    # retention and the live cap, not what a request chooses): the coalescer groups calls by
    # them too, and a batch sends them once (lua/many.lua)
    batch_args: tuple[str, ...] = ()
    # every parameter's name, to check a call's names in one comparison
    names: frozenset[str] = field(init=False, repr=False, compare=False)
    # the 0-based positions of the own keys in KEYS
    own_positions: tuple[int, ...] = field(init=False, repr=False, compare=False)
    # a call's shared keys (KEYS but its own), as a tuple: what groups coalesced calls
    shared_of: Callable[[Sequence[str]], tuple[str, ...]] = field(
        init=False, repr=False, compare=False
    )
    # a call's batch args, and its other args (lists of positions of ARGV: 0-based), by value
    batch_args_of: Callable[[Sequence[str | int]], tuple[str | int, ...]] = field(
        init=False, repr=False, compare=False
    )
    call_args_of: Callable[[Sequence[str | int]], tuple[str | int, ...]] = field(
        init=False, repr=False, compare=False
    )
    batch_positions: tuple[int, ...] = field(init=False, repr=False, compare=False)
    call_positions: tuple[int, ...] = field(init=False, repr=False, compare=False)
    # a call's fixed keys and its args from its values by name, as tuples
    keys_of: Callable[[Mapping[str, str | int]], tuple[str | int, ...]] = field(
        init=False, repr=False, compare=False
    )
    args_of: Callable[[Mapping[str, str | int]], tuple[str | int, ...]] = field(
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
        shared = tuple(i for i in range(len(self.keys)) if i not in own)
        object.__setattr__(self, "shared_of", _getter(shared))
        object.__setattr__(self, "keys_of", _getter(self.keys))
        object.__setattr__(self, "args_of", _getter(self.args))
        if not set(self.own_keys) <= set(self.keys) or (self.own_keys and self.more_keys):
            raise TypeError(f"{self.name}: own keys must be among its fixed keys")
        if not set(self.batch_args) <= set(self.args) or (self.batch_args and not self.own_keys):
            raise TypeError(f"{self.name}: batch args must be among the args of a coalesced call")
        batch = tuple(i for i, name in enumerate(self.args) if name in self.batch_args)
        rest = tuple(i for i in range(len(self.args)) if i not in batch)
        object.__setattr__(self, "batch_positions", batch)
        object.__setattr__(self, "call_positions", rest)
        object.__setattr__(self, "batch_args_of", _getter(batch))
        object.__setattr__(self, "call_args_of", _getter(rest))

    def partition_keys(self, k: PartitionKeys) -> dict[str, str]:
        """This operation's partition-wide keys of partition `k` (and its `records` arg), by
        name (for `build`), made once per partition (callers unpack it, never change it: it is
        on the hot path)."""
        found = self.by_partition.get(k.partition)
        if found is None:
            found = {
                name: getattr(k, name)
                for name in (*self.keys, *self.args)
                if name in PARTITION_WIDE
            }
            self.by_partition[k.partition] = found
        return found

    def build(self, /, *more: str, **values: str | int) -> tuple[list[str], list[str | int]]:
        """(KEYS, ARGV) for one call: every named parameter exactly once, keys as strings;
        `more` are the variable keys, after the fixed ones."""
        return self.build_from(values, more)

    def build_from(
        self, values: Mapping[str, str | int], more: Sequence[str] = ()
    ) -> tuple[list[str], list[str | int]]:
        """`build` of values in a mapping: what the hot path calls with the one dict it made
        (no copy of it per layer); each list picked in one C call."""
        if values.keys() != self.names:
            missing = [n for n in (*self.keys, *self.args) if n not in values]
            unknown = sorted(set(values) - self.names)
            raise TypeError(f"{self.name}: missing {missing}, unknown {unknown}")
        if more and not self.more_keys:
            raise TypeError(f"{self.name} takes no keys beyond {len(self.keys)}")
        fixed: tuple[Any, ...] = self.keys_of(values)
        try:
            "".join(fixed)  # every key a str, checked in C
        except TypeError:
            name, key = next((n, values[n]) for n in self.keys if not isinstance(values[n], str))
            raise TypeError(f"{self.name}: key {name} must be a str, not {key!r}") from None
        return [*fixed, *more], list(self.args_of(values))


def _getter(items: tuple[Any, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The values at `items` (names of a mapping, positions of a sequence), always as a tuple
    (operator.itemgetter, in C, gives a tuple only of two or more)."""
    if len(items) > 1:
        return itemgetter(*items)
    if items:
        item = items[0]
        return lambda values: (values[item],)
    return lambda values: ()
