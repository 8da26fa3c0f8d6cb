"""Whether an access token's account still lets it count: the account's state (active, staff,
token version), read from the database at most every ACCOUNT_CACHE_TTL seconds per process.

Every request with a verified access token needs its account's state, and a query per request
is what this cache is for avoiding. A state is trusted for ACCOUNT_CACHE_TTL after it was read,
so an account change (disable, staff removed, password changed: a new token version) ends the
account's access tokens within that window. States are read in batches: every account asked
for while a read is under way joins the next query (one query for one account however many
requests ask for it at once, a few queries for a burst of many accounts), and the newest
100 000 are kept. An account in use (asked for since it was read) is read again ahead, in the
background, in its window's last second, with every other account due (one query every
REFRESH_EVERY_S), so that the accounts in use are not read one query each, on their requests'
path, as their windows end; the window only shortens. An idle account is left to go stale.

With the database unreadable, reservations and orders go on (DESIGN.md's failure model): the
last state read of an account goes on serving, however old, and a token whose account this
process has not read yet counts on what it says itself (its signature, `exp`, `staff` and `ver`
claims were verified). Meanwhile the states are read again in the background, at most once a
second, instead of making every request wait for a database that is not answering. So an
outage is the one window in which an account change may go unseen: only for accounts the
process had not read, and at most for an access token's lifetime (JWT_ACCESS_TTL); refresh
tokens need the database and are refused meanwhile.

The API's middleware (web.middleware.ApiMiddleware) does the (asynchronous) looking up with
`look_up_token` before the endpoint runs and leaves the result in the request's state;
`web.auth.authenticate` judges it when the endpoint asks who is calling. A request without a
token, or with one that fails to verify, looks up nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine as DatabaseEngine
from starlette.types import Scope

from engine.settings import Settings
from persistence import users
from persistence.db_async import SerialReader
from persistence.users import TokenState
from web.auth import AccountLookup, Keys, bearer_token
from web.errors import ApiError
from web.middleware import scope_state

log = logging.getLogger("inventory.auth")

MAX_ENTRIES = 100_000
BATCH = 500  # accounts per query
RETRY_S = 1.0  # with the database failing, how often a read is tried again
REFRESH_AHEAD_S = 1.0  # an account in use this close to its state going stale is read again
REFRESH_EVERY_S = 0.5  # ...in one query with the others due, this often


@dataclass(frozen=True, slots=True)
class _Entry:
    state: TokenState | None  # None: no such account
    read_at: float


class AccountCache:
    """The token states of the accounts this process has seen. Used from one event loop."""

    def __init__(
        self,
        db: DatabaseEngine,
        settings: Settings,
        *,
        reader: SerialReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db, self._source = db, reader
        self._ttl_s = settings.account_cache_ttl_ms / 1000
        self._clock = clock
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        # Asked for and not read yet, or being read: one future per account.
        self._pending: dict[int, asyncio.Future[TokenState | None]] = {}
        self._queued: list[int] = []
        self._reader: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self._last_error: Exception | None = None
        self._last_try = -float("inf")
        self._ahead_s = min(REFRESH_AHEAD_S, self._ttl_s / 5)
        self._in_use: set[int] = set()  # served from the cache since they were read
        self._served = False  # an account was served from the cache this refresh period
        self._refresher: asyncio.Task[None] | None = None

    @property
    def reader(self) -> SerialReader | None:
        """Where the states are read on PostgreSQL (None: in a thread, SQLite)."""
        return self._source

    async def aclose(self) -> None:
        if self._source is not None:
            await self._source.aclose()

    def remember(self, state: TokenState) -> None:
        """A state just read elsewhere (a login, a refresh): trusted like one read here."""
        self._store(state.user_id, state, self._clock())

    async def state(self, user_id: int) -> TokenState | None:
        """The account's state as of at most ACCOUNT_CACHE_TTL ago (None: no such account);
        with the database unreadable, the last one read, else the database's error."""
        if not users.valid_id(user_id):
            return None
        now = self._clock()
        entry = self._entries.get(user_id)
        if entry is not None and now - entry.read_at < self._ttl_s:
            self._in_use.add(user_id)
            self._served = True
            if self._refresher is None:
                self._refresher = asyncio.create_task(self._refresh_in_use())
            return entry.state
        usable = entry is not None
        if self._failing_since is not None:
            # The database is failing: serve what was read, try again in the background (at
            # most every RETRY_S), and let an account never read wait only for a new try.
            retry = self._ask(user_id) if now - self._last_try >= RETRY_S else None
            if usable:
                assert entry is not None
                return entry.state
            if retry is None:
                assert self._last_error is not None
                raise self._last_error
            return await asyncio.shield(retry)
        try:
            return await asyncio.shield(self._ask(user_id))
        except Exception:
            if usable:
                assert entry is not None
                return entry.state
            raise

    async def _refresh_in_use(self) -> None:
        """Every REFRESH_EVERY_S, read again (in one query) the accounts served from the cache
        since they were read whose state goes stale within REFRESH_AHEAD_S, so that an active
        account's requests never wait for a read, nor cost one each."""
        try:
            while self._served:  # stops once a period passes with no account served
                self._served = False
                await asyncio.sleep(REFRESH_EVERY_S)
                if self._failing_since is not None:
                    continue  # the requests' own reads retry, at most every RETRY_S
                soon = self._clock() - (self._ttl_s - self._ahead_s)
                for user_id in list(self._in_use):
                    entry = self._entries.get(user_id)
                    if entry is None or entry.read_at <= soon:
                        self._in_use.discard(user_id)
                        if entry is not None and user_id not in self._pending:
                            self._ask(user_id)
        finally:
            self._refresher = None

    def _ask(self, user_id: int) -> asyncio.Future[TokenState | None]:
        future = self._pending.get(user_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            # A waiter may be gone (its client hung up): nobody else reads the outcome.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._pending[user_id] = future
            self._queued.append(user_id)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        return future

    async def _read(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued[:BATCH], self._queued[BATCH:]
                self._last_try = self._clock()
                try:
                    found = await users.read_token_states(self._db, self._source, batch)
                except Exception as exc:
                    self._last_error = exc
                    if self._failing_since is None:
                        self._failing_since = self._clock()
                        log.warning("accounts can't be read (cached states serve): %s", exc)
                    # The database is failing: everyone waiting hears it now, not one by one.
                    waiting, self._queued = batch + self._queued, []
                    for user_id in waiting:
                        future = self._pending.pop(user_id)
                        if not future.done():
                            future.set_exception(exc)
                    return
                if self._failing_since is not None:
                    log.warning("accounts can be read again")
                    self._failing_since = None
                read_at = self._last_try  # a change committed during the query may be missed
                for user_id in batch:
                    state = found.get(user_id)
                    self._store(user_id, state, read_at)
                    future = self._pending.pop(user_id)
                    if not future.done():
                        future.set_result(state)
        finally:
            self._reader = None

    def _store(self, user_id: int, state: TokenState | None, read_at: float) -> None:
        self._entries[user_id] = _Entry(state, read_at)
        self._entries.move_to_end(user_id)
        if len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)


def user_id_of(claims: dict[str, object]) -> int:
    """The account id a token's `sub` names (0, which no account has, for anything else)."""
    sub = claims["sub"]
    if isinstance(sub, str) and sub.isascii() and sub.isdigit() and len(sub) <= 19:
        return int(sub)
    return 0


async def look_up(scope: Scope, keys: Keys) -> None:
    """Look up the account of the request's access token, if it has a verified one, and leave
    the finding in the request's state for `web.auth.authenticate` (web.middleware.ApiMiddleware
    does it with `look_up_token`; an endpoint mounted outside the middleware calls this)."""
    token = bearer_token(_authorization(scope))
    if token is not None:
        await look_up_token(scope, keys, token)


async def look_up_token(scope: Scope, keys: Keys, token: str) -> None:
    try:
        claims = keys.verify(token, "access")  # remembered for the endpoint
    except ApiError:
        return  # refused again, and answered, if the endpoint asks who is calling
    accounts: AccountCache = scope["app"].state.accounts
    user_id = user_id_of(claims)
    try:
        lookup = AccountLookup(token, await accounts.state(user_id))
    except Exception as exc:
        if not users.valid_id(user_id) or not isinstance(claims.get("ver"), int):
            lookup = AccountLookup(token, None, exc)
        else:  # the database is down and this account was never read: the token says
            claimed = TokenState(user_id, True, bool(claims["staff"]), int(claims["ver"]))
            lookup = AccountLookup(token, claimed)
    scope_state(scope)["account"] = lookup


def _authorization(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            return str(value.decode("latin-1"))
    return None
