"""The database tables: the durable record of every movement, and the query store.

Redis decides; these tables remember. Projections (stock levels, reservations, orders) are
upserted from outbox events; the ledger, the audit log and the order history are appended
to, one row per movement or event, guarded by the event id. Alembic's migrations in
persistence/migrations are generated from this metadata and serve Postgres and SQLite alike.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# Postgres BIGSERIAL, SQLite INTEGER PRIMARY KEY (the only auto-increment SQLite has).
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _ts(name: str, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


users = Table(
    "users",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("username", String(150), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("is_staff", Boolean, nullable=False, default=False),
    Column("is_active", Boolean, nullable=False, default=True),
    _ts("created_at"),
    # Bumped whenever the account changes in a way that must end its tokens (disabled,
    # staff removed, password changed): a token carries the version it was issued under.
    Column("token_version", Integer, nullable=False, default=0, server_default="0"),
)

# Refresh tokens, one row per token issued: each use spends it and issues the next of its
# family; a spent token used again revokes the family (it was stolen, or replayed).
refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("family", String(64), nullable=False),
    Column("user_id", BigInteger, nullable=False),
    _ts("issued_at"),
    _ts("expires_at"),
    _ts("used_at", nullable=True),
    _ts("revoked_at", nullable=True),
    Index(None, "family"),
    Index(None, "user_id"),
)

warehouses = Table(
    "warehouses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    _ts("created_at"),
)

# The catalog. A product's engine id (in Redis and in every table below) is str(id).
products = Table(
    "products",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("sku", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("price", BigInteger, nullable=False),  # minor units
    Column("currency", String(3), nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
    _ts("deleted_at", nullable=True),
    Index(None, "name"),
)

# Projection of the Redis products hash (what reserve and commit read): price, currency and
# the warehouses by priority, for every product the engine knows, catalog or not.
product_settings = Table(
    "product_settings",
    metadata,
    Column("product", String(64), primary_key=True),
    Column("price", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("warehouses", JSON, nullable=False),  # [[name, priority], ...] by priority
    # {"max_per_customer", "min_quantity", "quantity_increment", "max_per_order"}: those set
    Column("limits", JSON, nullable=True),
    Column("last_event_id", String(64), nullable=False),
    _ts("updated_at"),
)

# Projection of the Redis counters.
stock_levels = Table(
    "stock_levels",
    metadata,
    Column("product", String(64), primary_key=True),
    Column("warehouse", String(64), primary_key=True),
    Column("available", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("last_event_id", String(64), nullable=False),
    _ts("updated_at"),
)

reservations = Table(
    "reservations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(150), nullable=False),
    Column("status", String(16), nullable=False),
    _ts("created_at"),
    _ts("expires_at"),
    _ts("ended_at", nullable=True),
    Column("order_id", String(32), nullable=True),
    Column("request_id", String(128), nullable=False, default=""),
    Column("partition", Integer, nullable=False, default=0),
    # the cart across partitions this reservation is a part of (its home's id; the home's own
    # row has its own id here); NULL for a reservation of one partition (engine/carts.py)
    Column("cart_id", String(32), nullable=True, index=True),
    # 'waitlist': handed over by a product's waitlist (lua/wait.lua); NULL: a customer's own
    Column("source", String(16), nullable=True),
    Index(None, "user_id", "created_at"),
    Index(None, "status", "expires_at"),
)

reservation_lines = Table(
    "reservation_lines",
    metadata,
    Column("reservation_id", ForeignKey("reservations.id"), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("product", String(64), nullable=False),
    Column("warehouse", String(64), nullable=False),
    Column("quantity", BigInteger, nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(150), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reservation_id", String(32), nullable=True),
    Column("total", BigInteger, nullable=False),  # minor units
    Column("currency", String(3), nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
    Column("request_id", String(128), nullable=False, default=""),
    Column("partition", Integer, nullable=False, default=0),
    # list filters and keyset pagination: (sort key, id) so a page boundary is exact
    Index(None, "created_at", "id"),
    Index(None, "status", "created_at", "id"),
    Index(None, "total", "id"),
    Index(None, "created_at", "status"),
    Index(None, "user_id", "created_at", "id"),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("order_id", ForeignKey("orders.id"), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("product", String(64), nullable=False),
    Column("warehouse", String(64), nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("unit_price", BigInteger, nullable=False),
)

order_status_history = Table(
    "order_status_history",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("order_id", ForeignKey("orders.id"), nullable=False),
    Column("from_status", String(16), nullable=True),
    Column("to_status", String(16), nullable=False),
    Column("actor", String(150), nullable=False),
    Column("request_id", String(128), nullable=False, default=""),
    _ts("at"),
    Column("event_id", String(64), nullable=False, unique=True),
    Index(None, "order_id", "at"),
)

# One row per movement of one product x warehouse's counters.
stock_ledger = Table(
    "stock_ledger",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("event_id", String(64), nullable=False),
    Column("seq", Integer, nullable=False),  # the movement's place in its event
    Column("product", String(64), nullable=False),
    Column("warehouse", String(64), nullable=False),
    Column("delta_available", BigInteger, nullable=False),
    Column("delta_reserved", BigInteger, nullable=False),
    Column("delta_total", BigInteger, nullable=False),
    Column("available_after", BigInteger, nullable=False),
    Column("reserved_after", BigInteger, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("reference_type", String(32), nullable=False),
    Column("reference_id", String(64), nullable=False),
    Column("actor", String(150), nullable=False),
    Column("request_id", String(128), nullable=False, default=""),
    _ts("at"),
    UniqueConstraint("event_id", "seq"),
    Index(None, "product", "warehouse", "id"),
    Index(None, "reference_type", "reference_id"),
)

# One row per event.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("actor", String(150), nullable=False),
    Column("action", String(64), nullable=False),
    Column("object_type", String(32), nullable=False),
    Column("object_id", String(64), nullable=False),
    Column("old_value", JSON, nullable=True),
    Column("new_value", JSON, nullable=True),
    _ts("at"),
    Column("request_id", String(128), nullable=False, default=""),
    Index(None, "at", "id"),
    Index(None, "action", "at"),
    Index(None, "object_type", "object_id", "at"),
    Index(None, "actor", "at"),
    Index(None, "request_id"),
)

# Where each partition's drain stands: the id of the last event applied. Moved in the
# same transaction as the batch it ends.
outbox_checkpoints = Table(
    "outbox_checkpoints",
    metadata,
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("last_event_id", String(64), nullable=False),
    Column("applied", BigInteger, nullable=False, default=0),
    _ts("updated_at"),
)

# Events the worker could not apply, with the error; they no longer block the stream.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("partition", Integer, nullable=False),
    Column("type", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("error", Text, nullable=False),
    _ts("at"),
    _ts("resolved_at", nullable=True),
    # who closed it and how: 'replayed' (applied again) or an operator's note
    Column("resolved_by", String(150), nullable=True),
    Column("resolution", Text, nullable=True),
)

# The first answer to each write made with an Idempotency-Key, written by the drain from the
# event that carried it, so that `rebuild` and `reconcile --fix` can put it back in Redis: a
# retry after a Redis loss gets the original answer, not a second effect.
idempotency_records = Table(
    "idempotency_records",
    metadata,
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("key_hash", String(64), primary_key=True),  # the digest in the Redis key
    Column("fingerprint", String(64), nullable=False),
    Column("reply", Text, nullable=False),  # the JSON reply, as the script stored it
    _ts("expires_at"),
    Column("event_id", String(64), nullable=False),
    Index(None, "expires_at"),
)
