"""Settings, read from the environment in this one place.

Durations are given in seconds in the environment and kept in milliseconds inside,
because the scripts count in Redis milliseconds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _number(raw: str, name: str, kind: type[int] | type[float], what: str) -> float:
    """`raw` as a number, or the ValueError that names the variable (not Python's own)."""
    try:
        return kind(raw.strip())
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {raw!r}") from None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    what = "a finite number of seconds >= 0"
    value = default if raw is None or raw == "" else _number(raw, name, float, what)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {raw!r}")
    return value


def _seconds_ms(env: Mapping[str, str], name: str, default: float) -> int:
    return round(_seconds(env, name, default) * 1000)


def _rate(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    what = "a finite number per second >= 0"
    value = default if raw is None or raw == "" else _number(raw, name, float, what)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be {what}, got {raw!r}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool | None) -> bool | None:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {env.get(name)!r}")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    what = f"a whole number >= {minimum}"
    value = default if raw is None or raw == "" else int(_number(raw, name, int, what))
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the engine can be told. Build with `Settings.from_env()` or directly."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Max open connections per process; callers beyond it wait up to the pool timeout.
    redis_max_connections: int = 64
    redis_pool_timeout_s: float = 5.0
    # Whether REDIS_URL names a Redis Cluster node; None: ask it (engine/connection.py).
    redis_cluster: bool | None = None
    # After each write, wait (WAIT) until this many replicas have it before answering; a write
    # no replica confirmed within the timeout is answered 503 `not_replicated`. 0: don't wait.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 1_000
    # Where the RQ queue lives (RQ cannot run on a cluster). Empty: REDIS_URL, which must then
    # be a single server.
    queue_redis_url: str = ""
    # Hash-tag partitions; 1 on a single Redis server, so any cart is one atomic script. On a
    # cluster, engine.connection.CLUSTER_PARTITIONS unless PARTITIONS is set.
    partitions: int = 1
    # Whether PARTITIONS was set (from_env), so that a cluster's default doesn't override it.
    partitions_given: bool = False
    # Coalesced calls (engine/coalesce.py): concurrent reserve and place-order calls of one
    # process for one partition, made while such calls are already waiting on Redis, go as
    # one function call of at most `coalesce_max_batch`, each answered as if alone.
    coalesce: bool = True
    coalesce_max_batch: int = 16
    reservation_ttl_ms: int = 600_000
    reservation_ttl_min_ms: int = 10_000
    reservation_ttl_max_ms: int = 3_600_000
    # extend can't push expires_at past created_at + this
    reservation_max_lifetime_ms: int = 3_600_000
    # How long an ended reservation's record stays readable in Redis.
    reservation_retention_ms: int = 86_400_000
    # How long a delivered or cancelled order stays in Redis (Postgres keeps it for good).
    order_retention_ms: int = 7 * 86_400_000
    idempotency_ttl_ms: int = 86_400_000
    # A cart across partitions (engine/carts.py): each part is first held this long, and its
    # other parts follow each step of its home within it (else the sweep makes them).
    cart_hold_ms: int = 30_000
    # While a cart's order is made, its other parts may not expire for this long.
    cart_pin_ms: int = 86_400_000
    # A direct order still pending this long after it was placed is cancelled by the sweep
    # (reason 'timeout'), its units back; 0: never.
    order_pending_ttl_ms: int = 1_800_000
    # A customer may hold at most this many live reservations (a cart counts once); 0: no cap.
    max_live_reservations_per_customer: int = 20
    # Live stock over Server-Sent Events (web/live_stock.py): streams one API process serves
    # at most (one more is 503), and the heartbeat's interval.
    # A waitlist entry not served this long after it joined leaves the waitlist.
    waitlist_ttl_ms: int = 3_600_000
    stream_max_listeners: int = 1000
    stream_max_per_client: int = 20  # of them, one client's (a user, else an address); 0: any
    stream_heartbeat_ms: int = 15_000
    # Due reservations released by each reserve call before it checks stock.
    expire_batch: int = 100
    # Due reservations released by one sweep call.
    sweep_batch: int = 1000
    # The durable record (persistence/). Empty: SQLite in data_dir, the embedded default.
    database_url: str = ""
    # Outbox events applied per database transaction by the worker.
    drain_batch: int = 1000
    # How long a drainer holds a partition before it must renew its lease.
    drain_lease_ms: int = 30_000
    # HTTP: the largest request body accepted, and the outbox backlog above which /readyz fails.
    max_body_bytes: int = 65_536
    outbox_backlog_limit: int = 100_000
    # JWT: HS256 keys by id ("kid:secret,kid2:secret2"; the first signs). Empty: a dev key,
    # allowed only on the embedded stack (SQLite) and, by `inventory serve`, only on a
    # loopback address (scripts/cli/serve.py), with a warning.
    jwt_keys: str = ""
    jwt_access_ttl_ms: int = 15 * 60_000
    jwt_refresh_ttl_ms: int = 7 * 86_400_000
    # How long a process trusts what it last read of an account (active, staff, token
    # version) before reading it again: an account change ends the account's access tokens
    # within this window. With the database unreadable, what was read goes on serving, and a
    # token of an account not read yet counts on its own claims (web/accounts.py).
    account_cache_ttl_ms: int = 5_000
    # Failed logins for one username (from any address) slow its next answers down, never lock
    # it: the n-th attempt after n failures waits min(base * 2**(n-1), max).
    login_delay_base_ms: int = 100
    login_delay_max_ms: int = 3_000
    # Rate limit per client: a token bucket refilled at this many requests per second, holding
    # at most `burst`. The client is the user when a valid token comes along, else the
    # address: a shop's checkout behind one IP sends its customers' tokens, so each customer
    # has a bucket. Either at 0 (RATE_LIMIT_PER_SECOND or RATE_LIMIT_BURST) = off.
    rate_limit_per_second: float = 100.0
    rate_limit_burst: int = 200
    # `inventory serve`'s workers, once started: Python's garbage collector runs its youngest
    # generation after this many more container objects are made than freed (Python's default
    # is 700), and what start-up made is frozen out of its scans (web/app.py tune_gc). 0 =
    # Python's own settings.
    gc_threshold: int = 10_000
    # GET /metrics without a token. None: open on the embedded stack, closed otherwise (then
    # a staff token or METRICS_TOKEN, a static bearer secret for the scraper, opens it).
    metrics_public: bool | None = None
    metrics_token: str = ""
    default_warehouse: str = "main"
    default_currency: str = "USD"
    data_dir: Path = PROJECT_ROOT / "data"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        d = cls()
        rate = _rate(e, "RATE_LIMIT_PER_SECOND", d.rate_limit_per_second)
        burst = _int(e, "RATE_LIMIT_BURST", d.rate_limit_burst, minimum=0)
        return cls(
            redis_url=e.get("REDIS_URL") or d.redis_url,
            redis_max_connections=_int(e, "REDIS_MAX_CONNECTIONS", d.redis_max_connections),
            redis_pool_timeout_s=_seconds(e, "REDIS_POOL_TIMEOUT", d.redis_pool_timeout_s),
            redis_cluster=_flag(e, "REDIS_CLUSTER", d.redis_cluster),
            redis_wait_replicas=_int(e, "REDIS_WAIT_REPLICAS", d.redis_wait_replicas, minimum=0),
            redis_wait_timeout_ms=_seconds_ms(
                e, "REDIS_WAIT_TIMEOUT", d.redis_wait_timeout_ms / 1000
            ),
            queue_redis_url=e.get("QUEUE_REDIS_URL") or d.queue_redis_url,
            partitions=_int(e, "PARTITIONS", d.partitions),
            partitions_given=bool(e.get("PARTITIONS")),
            coalesce=_flag(e, "COALESCE", d.coalesce) is not False,
            coalesce_max_batch=_int(e, "COALESCE_MAX_BATCH", d.coalesce_max_batch),
            reservation_ttl_ms=_seconds_ms(e, "RESERVATION_TTL", d.reservation_ttl_ms / 1000),
            reservation_ttl_min_ms=_seconds_ms(
                e, "RESERVATION_TTL_MIN", d.reservation_ttl_min_ms / 1000
            ),
            reservation_ttl_max_ms=_seconds_ms(
                e, "RESERVATION_TTL_MAX", d.reservation_ttl_max_ms / 1000
            ),
            reservation_max_lifetime_ms=_seconds_ms(
                e, "RESERVATION_MAX_LIFETIME", d.reservation_max_lifetime_ms / 1000
            ),
            reservation_retention_ms=_seconds_ms(
                e, "RESERVATION_RETENTION", d.reservation_retention_ms / 1000
            ),
            order_retention_ms=_seconds_ms(e, "ORDER_RETENTION", d.order_retention_ms / 1000),
            idempotency_ttl_ms=_seconds_ms(e, "IDEMPOTENCY_TTL", d.idempotency_ttl_ms / 1000),
            cart_hold_ms=_seconds_ms(e, "CART_HOLD_TTL", d.cart_hold_ms / 1000),
            order_pending_ttl_ms=_seconds_ms(e, "ORDER_PENDING_TTL", d.order_pending_ttl_ms / 1000),
            max_live_reservations_per_customer=_int(
                e, "MAX_LIVE_RESERVATIONS_PER_CUSTOMER", d.max_live_reservations_per_customer, 0
            ),
            waitlist_ttl_ms=_seconds_ms(e, "WAITLIST_TTL", d.waitlist_ttl_ms / 1000),
            stream_max_listeners=_int(e, "STREAM_MAX_LISTENERS", d.stream_max_listeners),
            stream_max_per_client=_int(
                e, "STREAM_MAX_PER_CLIENT", d.stream_max_per_client, minimum=0
            ),
            stream_heartbeat_ms=_seconds_ms(e, "STREAM_HEARTBEAT", d.stream_heartbeat_ms / 1000),
            expire_batch=_int(e, "EXPIRE_BATCH", d.expire_batch),
            sweep_batch=_int(e, "SWEEP_BATCH", d.sweep_batch),
            database_url=e.get("DATABASE_URL") or d.database_url,
            drain_batch=_int(e, "DRAIN_BATCH", d.drain_batch),
            drain_lease_ms=_seconds_ms(e, "DRAIN_LEASE", d.drain_lease_ms / 1000),
            max_body_bytes=_int(e, "MAX_BODY_BYTES", d.max_body_bytes),
            outbox_backlog_limit=_int(e, "OUTBOX_BACKLOG_LIMIT", d.outbox_backlog_limit),
            jwt_keys=e.get("JWT_KEYS") or d.jwt_keys,
            jwt_access_ttl_ms=_seconds_ms(e, "JWT_ACCESS_TTL", d.jwt_access_ttl_ms / 1000),
            jwt_refresh_ttl_ms=_seconds_ms(e, "JWT_REFRESH_TTL", d.jwt_refresh_ttl_ms / 1000),
            account_cache_ttl_ms=_seconds_ms(e, "ACCOUNT_CACHE_TTL", d.account_cache_ttl_ms / 1000),
            login_delay_base_ms=_seconds_ms(e, "LOGIN_DELAY_BASE", d.login_delay_base_ms / 1000),
            login_delay_max_ms=_seconds_ms(e, "LOGIN_DELAY_MAX", d.login_delay_max_ms / 1000),
            # either at 0 turns the limit off (a bucket of none would admit nobody)
            rate_limit_per_second=0 if burst == 0 else rate,
            rate_limit_burst=burst,
            gc_threshold=_int(e, "GC_THRESHOLD", d.gc_threshold, 0),
            metrics_public=_flag(e, "METRICS_PUBLIC", d.metrics_public),
            metrics_token=e.get("METRICS_TOKEN") or d.metrics_token,
            default_warehouse=e.get("DEFAULT_WAREHOUSE") or d.default_warehouse,
            default_currency=e.get("DEFAULT_CURRENCY") or d.default_currency,
            data_dir=Path(e.get("DATA_DIR") or d.data_dir),
        ).validated()

    def validated(self) -> Settings:
        if not 0 < self.reservation_ttl_min_ms <= self.reservation_ttl_max_ms:
            raise ValueError("RESERVATION_TTL_MIN must be > 0 and <= RESERVATION_TTL_MAX")
        if (
            not self.reservation_ttl_min_ms
            <= self.reservation_ttl_ms
            <= self.reservation_ttl_max_ms
        ):
            raise ValueError("RESERVATION_TTL must lie within RESERVATION_TTL_MIN..MAX")
        if self.reservation_max_lifetime_ms < self.reservation_ttl_max_ms:
            raise ValueError("RESERVATION_MAX_LIFETIME must be >= RESERVATION_TTL_MAX")
        rate = self.rate_limit_per_second
        if rate != 0 and not 0.001 <= rate <= 1_000_000:
            raise ValueError("RATE_LIMIT_PER_SECOND must be 0 (no limit) or 0.001 to 1000000")
        if self.rate_limit_per_second and not 1 <= self.rate_limit_burst <= 1_000_000:
            raise ValueError("RATE_LIMIT_BURST must be between 1 and 1000000")
        if not 0 <= self.gc_threshold <= 10_000_000:
            raise ValueError("GC_THRESHOLD must be 0 (Python's own) to 10000000")
        if self.redis_wait_replicas and self.redis_wait_timeout_ms < 1:
            raise ValueError("REDIS_WAIT_TIMEOUT must be at least 0.001 s when waiting")
        if self.login_delay_base_ms > self.login_delay_max_ms:
            raise ValueError("LOGIN_DELAY_BASE must be <= LOGIN_DELAY_MAX")
        if self.metrics_token and len(self.metrics_token.encode()) < 32:
            raise ValueError("METRICS_TOKEN must be at least 32 bytes")
        if self.order_pending_ttl_ms < 0:
            raise ValueError("ORDER_PENDING_TTL must be 0 (never) or more")
        if not 0 <= self.max_live_reservations_per_customer <= 1_000_000:
            raise ValueError("MAX_LIVE_RESERVATIONS_PER_CUSTOMER must be 0 (no cap) to 1000000")
        if not 1_000 <= self.cart_hold_ms <= 600_000:
            raise ValueError("CART_HOLD_TTL must be between 1 and 600 seconds")
        return self

    @property
    def database_url_or_default(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'inventory.db'}"

    @property
    def queue_url(self) -> str:
        """The Redis of the RQ queue: QUEUE_REDIS_URL, else REDIS_URL."""
        return self.queue_redis_url or self.redis_url

    @property
    def metrics_open(self) -> bool:
        """Whether GET /metrics answers without a token (METRICS_PUBLIC, else by stack)."""
        if self.metrics_public is not None:
            return self.metrics_public
        return self.database_url_or_default.startswith("sqlite")

    def describe(self) -> dict[str, str]:
        """The settings as printable strings (the Redis password hidden)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = str(getattr(self, f.name))
            if f.name == "jwt_keys" and value:
                value = ",".join(k.split(":", 1)[0] + ":***" for k in value.split(","))
            if f.name == "metrics_token" and value:
                value = "***"
            if f.name in ("redis_url", "queue_redis_url", "database_url") and "@" in value:
                scheme, _, rest = value.partition("://")
                value = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
            out[f.name] = value
        return out
