"""The Lua operations as one Redis Functions library: its source, its version, and the call.

The library is assembled once per process: the constants rendered from `engine.states`, then
`lua/lib.lua`, `lua/stock.lua`, `lua/limits.lua`, `lua/holds.lua`, `lua/wait.lua` and
`lua/many.lua` (the helpers, defined once
at FUNCTION LOAD), then each `lua/<name>.lua` as the body of a local function of (KEYS, ARGV),
registered as `<name>_<version>`. The version is a
short hash of that text, and names the library too (`inventory_<version>`): function names
are global in Redis, so two versions of the app can run side by side during a deploy.

A Redis that has just started (restarted, restored from an older copy, a replica promoted)
refuses every partition's writes with the error UNVERIFIED until that partition is checked
against the database's record (lua/lib.lua `verified`): the shell reads the partition's
checkpoint (`checkpoints`, the caller's reader of the database; none: Redis is the only record
there is, as in a test), runs lua/verify.lua, which raises the behind flag if this Redis lacks
what the database holds, and retries once. Concurrent callers share one check per partition.

A call is built without I/O (`prepare`: FCALL or FCALL_RO, the function, its keys and args
from the spec in `engine.specs`) and its JSON reply parsed without I/O (`parse`); the async
engine (`Scripts`) and the sync worker (`run_sync`) are thin shells around them. Neither
sends source per call. A Redis that lost its functions (restarted empty, flushed, restored
from an older copy) answers "Function not found": the shell loads the library and retries
once, as NOSCRIPT did for EVALSHA. On a Redis Cluster the library is loaded on every
primary (a replica has it by replication; a shard added later, on its first "Function not
found").
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import orjson
import redis
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from engine import errors
from engine.connection import call_then_wait
from engine.keys import partition_keys
from engine.script_spec import ScriptSpec
from engine.specs import SPECS, VERIFY, fence
from engine.states import lua_prelude

NAMES: tuple[str, ...] = tuple(SPECS)
# The files of helpers, before the operations: lib.lua, stock.lua (a product's counters and
# settings), limits.lua (what a customer may hold), holds.lua (reservations and orders),
# wait.lua (the waitlists) and many.lua (coalesced calls).
HELPERS: tuple[str, ...] = ("lib", "stock", "limits", "holds", "wait", "many")
LIBRARY_PREFIX = "inventory"

log = logging.getLogger("inventory.redis")

# A partition's checkpoint in the database: the id of its last event applied (None: none yet).
Checkpoints = Callable[[int], Awaitable[str | None]]
SyncCheckpoints = Callable[[int], str | None]
_PARTITION_TAG = re.compile(r"\{p(\d+)\}")


def _read(name: str) -> str:
    return resources.files("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Library:
    name: str  # inventory_<version>
    version: str  # the first 12 hex digits of the SHA1 of the code after the VERSION line
    source: str  # what FUNCTION LOAD takes

    def function(self, operation: str) -> str:
        """The Redis function name of one operation in this version."""
        if operation not in SPECS:
            raise KeyError(f"no operation named {operation!r}")
        return f"{operation}_{self.version}"

    def function_many(self, operation: str) -> str:
        """The function that runs many calls of `operation` in one (lua/many.lua)."""
        if not SPECS[operation].own_keys:
            raise KeyError(f"{operation!r} is not coalesced")
        return f"{operation}_many_{self.version}"


@cache
def library() -> Library:
    """This version of the library, from lua/."""
    return assemble(_read)


def assemble(read: Callable[[str], str]) -> Library:
    """The library from the text of each file `read(name)` gives (lib.lua as 'lib', and each
    helper file of HELPERS by its name)."""
    parts = [lua_prelude()]
    for helper in HELPERS:
        parts += [f"-- {helper}.lua", read(helper)]
    for name in NAMES:
        parts.append(f"-- {name}.lua\nlocal function op_{name}(KEYS, ARGV)\n{read(name)}\nend\n")
    for name in NAMES:
        spec = SPECS[name]
        read_only = "true" if spec.read_only else "false"
        at = fence(spec)
        flag = "nil" if at is None else str(at)
        parts.append(f"register('{name}', op_{name}, {read_only}, {flag})")
        if spec.own_keys:
            own = ", ".join(str(i + 1) for i in spec.own_positions)
            batch = ", ".join(str(i + 1) for i in spec.batch_positions)
            if at is not None and at - 1 in spec.own_positions:
                raise ValueError(f"{name}: the behind flag must be a key its batch shares")
            many = (
                f"'{name}', op_{name}, {{{own}}}, {len(spec.keys)}, {len(spec.args)},"
                f" {{{batch}}}, {flag}"
            )
            parts.append(f"register_many({many})")
    code = "\n".join(parts) + "\n"
    version = hashlib.sha1(code.encode()).hexdigest()[:12]
    name = f"{LIBRARY_PREFIX}_{version}"
    return Library(name, version, f"#!lua name={name}\nlocal VERSION = '{version}'\n{code}")


@dataclass(frozen=True, slots=True)
class Call:
    """One function call: `FCALL <function> <numkeys> <keys...> <args...>` (FCALL_RO for a
    read-only operation), as a sync or an async client sends it."""

    function: str
    keys: list[str]
    args: list[str | int]
    read_only: bool = False


def prepare(spec: ScriptSpec, /, *more_keys: str, **values: str | int) -> Call:
    """The call of `spec`'s function with its parameters by name (ScriptSpec.build)."""
    return prepare_from(spec, values, more_keys)


def prepare_from(
    spec: ScriptSpec, values: Mapping[str, str | int], more_keys: Sequence[str] = ()
) -> Call:
    """`prepare` of values in a mapping (ScriptSpec.build_from)."""
    keys, args = spec.build_from(values, more_keys)
    return Call(library().function(spec.name), keys, args, spec.read_only)


def parse(raw: str | bytes) -> dict[str, Any]:
    """A function's reply: one JSON object ({"ok": true, ...} or {"err": code, ...})."""
    reply: dict[str, Any] = orjson.loads(raw)
    return reply


def _missing(error: ResponseError) -> bool:
    """Whether Redis refused the call because it lacks this version of the library."""
    return str(error).startswith(("Function not found", "ERR Function not found"))


def _loaded(error: ResponseError) -> bool:
    """Whether FUNCTION LOAD refused only because the library is already there."""
    return "already exists" in str(error)


def _unverified(error: ResponseError) -> str | None:
    """The partition's behind flag (its key) when Redis refused a write because it has not
    checked that partition against the record since it started (lua/lib.lua `unverified`)."""
    text = str(error)
    return text.split(" ", 1)[1] if text.startswith("UNVERIFIED ") else None


def _retry(error: ResponseError, loaded: bool, checked: bool) -> str | None:
    """What a refused call needs before it is sent again: the library loaded (None), or the
    partition of the behind flag it returns checked; each once, else the error stands."""
    flag = _unverified(error)
    if _missing(error) and not loaded:
        return None
    if flag is not None and not checked:
        return flag
    if flag is not None:  # started again meanwhile
        raise errors.RedisUnverified() from error
    raise error


def _partition(flag: str) -> int:
    found = _PARTITION_TAG.search(flag)
    if found is None:
        raise ValueError(f"not a partition's key: {flag!r}")
    return int(found.group(1))


def _version(call: Call) -> str:
    """The library version a call is of (its function's suffix)."""
    return call.function.rsplit("_", 1)[1]


def verify_call(flag: str, checkpoint: str | None, refused: Call) -> tuple[Call, int]:
    """The call of lua/verify.lua for the partition whose behind flag is `flag`, against the
    database's `checkpoint` (None: none yet), and that partition. Of the library version that
    `refused` was a call of: each version keeps its own record of what it has checked."""
    partition = _partition(flag)
    k = partition_keys(partition)
    call = prepare(
        VERIFY,
        outbox=k.outbox,
        applied=k.applied,
        behind=k.behind,
        checkpoint=checkpoint or "0-0",
        partition=partition,
    )
    return dataclasses.replace(call, function=f"{VERIFY.name}_{_version(refused)}"), partition


def _verified(reply: dict[str, Any], partition: int) -> None:
    """Say so when the check found this Redis behind the database (the flag is raised)."""
    if reply.get("behind") and reply.get("flagged"):
        found = reply.get("found") or {}
        log.error(
            "partition %d: Redis started behind the database (checkpoint %s, outbox last id "
            "%s, applied marker %s): it decides nothing there; run `inventory reconcile` to "
            "see what Redis lost and `inventory reconcile --fix` to restore it from the "
            "database (`inventory rebuild` if it lost all its data)",
            partition,
            found.get("checkpoint"),
            found.get("last_id"),
            found.get("applied"),
        )


class Scripts:
    """The library on one async client: `run` calls one operation and decodes its reply."""

    def __init__(
        self,
        client: Redis,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 0,
        checkpoints: Checkpoints | None = None,
    ) -> None:
        self._client = client
        # the database's checkpoints, against which a Redis that has started is checked before
        # its first write (None: no record; Redis is taken as it is)
        self.checkpoints = checkpoints
        self._checking: dict[str, asyncio.Future[None]] = {}
        # REDIS_WAIT_REPLICAS: each write waits for this many replicas (WAIT) before it counts
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        # a Redis Cluster: a call's keys must share one slot
        self.cluster = isinstance(client, redis.asyncio.cluster.RedisCluster)
        self._loading = asyncio.Lock()

    async def run(
        self, spec: ScriptSpec, /, *more_keys: str, **values: str | int
    ) -> dict[str, Any]:
        """Run `spec`'s function with its parameters by name (ScriptSpec.build)."""
        return parse(await self.raw(prepare(spec, *more_keys, **values)))

    async def raw(self, call: Call) -> Any:
        """The undecoded reply of one call; loads the library and retries once if Redis
        lacks it, and checks the partition and retries once if Redis has not checked it."""
        loaded = checked = False
        while True:
            try:
                return await self._send(call)
            except ResponseError as e:
                flag = _retry(e, loaded, checked)
                if flag is None:
                    await self._load_once()
                    loaded = True
                else:
                    await self._check_once(flag, call)
                    checked = True

    async def _check_once(self, flag: str, refused: Call) -> None:
        """`_check`, once for all who found the partition unchecked at once (in one version
        of the library)."""
        which = f"{flag} {_version(refused)}"
        running = self._checking.get(which)
        if running is None:
            running = asyncio.ensure_future(self._check(flag, refused))
            self._checking[which] = running
            running.add_done_callback(lambda _: self._checking.pop(which, None))
        await asyncio.shield(running)

    async def _check(self, flag: str, refused: Call) -> None:
        """Check the partition of `flag` against the database's checkpoint (lua/verify.lua)."""
        partition, checkpoint = _partition(flag), None
        if self.checkpoints is not None:
            try:
                checkpoint = await self.checkpoints(partition)
            except Exception as exc:
                log.warning(
                    "partition %d: Redis has started and its writes wait for a check against "
                    "the database, which could not be read: %s",
                    partition,
                    exc,
                )
                raise errors.RedisUnverified() from exc
        call, _ = verify_call(flag, checkpoint, refused)
        # (not through REDIS_WAIT_REPLICAS: a check writes nothing but, if Redis is behind,
        # the flag, which the drain would raise again on any Redis that lost it)
        reply = await self._client.fcall(call.function, len(call.keys), *call.keys, *call.args)
        _verified(parse(reply), partition)

    async def _send(self, call: Call) -> Any:
        if self._wait_replicas and not call.read_only:
            args = ("FCALL", call.function, len(call.keys), *call.keys, *call.args)
            reply, confirmed = await call_then_wait(
                self._client, args, call.keys[0], self._wait_replicas, self._wait_timeout_ms
            )
            if confirmed < self._wait_replicas:
                raise errors.NotReplicated(confirmed, self._wait_replicas)
            return reply
        send = self._client.fcall_ro if call.read_only else self._client.fcall
        return await send(call.function, len(call.keys), *call.keys, *call.args)

    async def _load_once(self) -> None:
        """`load`, by one caller at a time: the calls that found the library missing at once
        wait for the first one's load, and the others find it there."""
        async with self._loading:
            await self.load()

    async def load(self) -> str:
        """Load this version of the library unless Redis has it (e.g. at start-up), on every
        primary of a cluster; returns its name."""
        lib = library()
        client: Any = self._client
        targets: list[Any] = [None]
        if isinstance(client, redis.asyncio.cluster.RedisCluster):
            await client.initialize()
            targets = list(client.get_primaries())
        for node in targets:
            extra = {} if node is None else {"target_nodes": node}
            try:
                await client.execute_command("FUNCTION LOAD", lib.source, **extra)
            except ResponseError as e:
                if not _loaded(e):
                    raise
        return lib.name


def run_sync(
    client: redis.Redis, spec: ScriptSpec, /, *more_keys: str, **values: str | int
) -> dict[str, Any]:
    """`Scripts.run` for a synchronous client (the worker), taking Redis as it is (no record
    to check a Redis that has started against: call_sync's `checkpoints`)."""
    return parse(call_sync(client, prepare(spec, *more_keys, **values)))


def call_sync(client: redis.Redis, call: Call, checkpoints: SyncCheckpoints | None = None) -> Any:
    """`Scripts.raw` for a synchronous client, `checkpoints` as `Scripts.checkpoints`."""
    send = client.fcall_ro if call.read_only else client.fcall
    loaded = checked = False
    while True:
        try:
            return send(call.function, len(call.keys), *call.keys, *call.args)
        except ResponseError as e:
            flag = _retry(e, loaded, checked)
            if flag is None:
                load_sync(client)
                loaded = True
                continue
            try:
                checkpoint = checkpoints(_partition(flag)) if checkpoints is not None else None
            except Exception as exc:
                raise errors.RedisUnverified() from exc
            check, partition = verify_call(flag, checkpoint, call)
            _verified(parse(client.fcall(check.function, 3, *check.keys, *check.args)), partition)
            checked = True


def load_sync(client: redis.Redis) -> str:
    """`Scripts.load` for a synchronous client."""
    lib = library()
    any_client: Any = client
    targets: list[Any] = [None]
    if isinstance(client, redis.cluster.RedisCluster):
        targets = list(any_client.get_primaries())
    for node in targets:
        extra = {} if node is None else {"target_nodes": node}
        try:
            any_client.execute_command("FUNCTION LOAD", lib.source, **extra)
        except ResponseError as e:
            if not _loaded(e):
                raise
    return lib.name
