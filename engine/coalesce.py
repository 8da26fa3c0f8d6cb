"""Coalesced calls: many concurrent reservations (direct orders, commits) in one Redis function
call, each answered as if alone.

A flash sale is many buyers asking for the same few products in the same milliseconds. Called
one by one, each pays a round trip and a function call of its own: the request's read and
write system calls in Redis, the client's encoding and the event loop's wake-ups. Databases
solved this with group commit; this is the same for the hot path.

The rule, per group (one operation's function, the keys its calls share — one partition's:
calls for different partitions never share a call — and the values of its batch args, the
engine's settings a batch sends once: ScriptSpec.batch_args):
- **Nothing waiting on Redis**: the call goes straight through, alone (no added latency at
  low load).
- **Calls already waiting**: the call joins the group's open batch. The batch is sent when the
  event loop ends its current pass (every call that arrived in it joins), when it holds
  `max_batch` calls, or when a call arrives 200 µs or more after the batch opened — whichever
  comes first — unless `max_inflight` of the group's batches (2: one running in Redis while
  the next forms) are on the wire: then it keeps gathering until one of them is answered (or
  it is full), and is sent at once. A call sent earlier would only queue in Redis behind them
  — Redis runs one call at a time and a batch whole — so the wait adds no latency of its own,
  while the batches grow with the load (group commit): with 64 callers a batch carries ~15
  calls (`max_batch` 16, COALESCE_MAX_BATCH) instead of 3-4, and each call's share of the
  round trip, its system calls and its encoding in both processes falls with it. A batch of
  one is sent as the plain call.
- A batch runs as `<operation>_many` (lua/many.lua): each call in arrival order, with its own
  keys, arguments, idempotency record, event and reply — exactly what the calls would have
  done one after another. A call that raises in Redis gets its own error; the others their
  replies. A call whose caller gave up before its batch was sent is left out (as if never
  made); once sent, it runs (as a lone call would).
- A failure of the batch's round trip (a connection error) is each of its calls' error, as it
  would have been for each alone: the engine's callers see the same exceptions either way.

`Coalescer.sizes` counts the batches sent by size (1 = a call sent alone), for the bench;
`on_send` is told of each, for the API's metrics (`inventory_coalesced_calls`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from engine.script_spec import ScriptSpec
from engine.scripts import Call, Scripts, library

WINDOW_S = 0.0002  # a batch stays open at most this long once another call arrives


class _Group:
    """One function's calls for one set of shared keys and batch args."""

    __slots__ = ("flush_scheduled", "inflight", "opened", "pending")

    def __init__(self) -> None:
        self.inflight = 0  # calls and batches sent and not answered yet
        self.pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self.opened = 0.0  # when the open batch got its first call (monotonic s)
        self.flush_scheduled = False


class Coalescer:
    """Sends an operation's calls alone or in batches, by the rule above."""

    def __init__(self, scripts: Scripts, *, max_batch: int = 16, max_inflight: int = 2) -> None:
        self._scripts = scripts
        self._max_batch = max(1, max_batch)
        self._max_inflight = max(1, max_inflight)
        self._groups: dict[tuple[str, tuple[str, ...], tuple[str | int, ...]], _Group] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self.sizes: Counter[int] = Counter()
        # told of every Redis call sent: (operation, calls it carries) — the API's metrics
        self.on_send: Callable[[str, int], None] | None = None

    def _sent(self, spec: ScriptSpec, size: int) -> None:
        self.sizes[size] += 1
        if self.on_send is not None:
            self.on_send(spec.name, size)

    async def run(self, spec: ScriptSpec, call: Call) -> Any:
        """The undecoded reply of `call` (an operation of `spec`, which has own keys)."""
        key = (call.function, spec.shared_of(call.keys), spec.batch_args_of(call.args))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
        if not group.inflight and not group.pending:
            group.inflight += 1
            self._sent(spec, 1)
            try:
                return await self._scripts.raw(call)
            finally:
                self._answered(spec, group)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        group.pending.append((call, future))
        now = time.monotonic()
        if len(group.pending) == 1:
            group.opened = now
            if not group.flush_scheduled:
                group.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_soon, spec, group)
        elif len(group.pending) >= self._max_batch or (
            now - group.opened >= WINDOW_S and group.inflight < self._max_inflight
        ):
            self._flush(spec, group)
        return await future

    def _flush_soon(self, spec: ScriptSpec, group: _Group) -> None:
        group.flush_scheduled = False
        if group.inflight < self._max_inflight:
            self._flush(spec, group)
        # else: sent when one of the group's batches is answered (_send)

    def _answered(self, spec: ScriptSpec, group: _Group) -> None:
        """One of the group's calls or batches is answered: a batch that waited for its slot
        on the wire goes now."""
        group.inflight -= 1
        if group.pending and not group.flush_scheduled:
            self._flush(spec, group)

    def _flush(self, spec: ScriptSpec, group: _Group) -> None:
        batch = [(c, f) for c, f in group.pending if not f.done()]
        group.pending = []
        if not batch:
            return
        group.inflight += 1
        self._sent(spec, len(batch))
        task = asyncio.get_running_loop().create_task(self._send(spec, group, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(
        self, spec: ScriptSpec, group: _Group, batch: list[tuple[Call, asyncio.Future[Any]]]
    ) -> None:
        try:
            if len(batch) == 1:
                call, future = batch[0]
                replies: list[Any] = [await self._scripts.raw(call)]
            else:
                batched = many(spec, [c for c, _ in batch], grouped=True)  # (run grouped them)
                replies = await self._scripts.raw(batched)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # each call's own error, as it would be alone
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._answered(spec, group)
        if not isinstance(replies, list) or len(replies) != len(batch):  # never: but no hang
            wrong = ResponseError(f"{spec.name}_many answered {len(batch)} calls with {replies!r}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(wrong)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if len(batch) > 1 and _failed(reply):
                future.set_exception(ResponseError(_text(reply)[1:]))
            else:
                future.set_result(reply)


def many(spec: ScriptSpec, calls: list[Call], *, grouped: bool = False) -> Call:
    """One call of `<operation>_many` running `calls` (which share every key but their own, and
    the values of the spec's batch args) in order: KEYS the shared keys then each call's own,
    ARGV the count, the batch args' values, then each call's other args. `grouped`: the caller
    grouped the calls by function, shared keys and batch args (Coalescer.run), so they need no
    check here."""
    own = spec.own_positions
    first = calls[0]
    shared = spec.shared_of(first.keys)
    settings = spec.batch_args_of(first.args)
    if not grouped:
        for call in calls:
            if (
                call.function != first.function
                or spec.shared_of(call.keys) != shared
                or spec.batch_args_of(call.args) != settings
            ):
                raise ValueError(
                    "only calls of one function on the same keys and batch args share a call"
                )
    keys = list(shared)
    args: list[str | int] = [len(calls), *settings]
    rest = spec.call_args_of
    for call in calls:
        keys += [call.keys[i] for i in own]
        args += rest(call.args)
    return Call(library().function_many(spec.name), keys, args)


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _failed(reply: Any) -> bool:
    """A reply of `_many` that is a call's error: '!' then the error (every reply of an
    operation is a JSON object, so it starts with '{')."""
    return _text(reply)[:1] == "!"
