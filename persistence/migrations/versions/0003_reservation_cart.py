"""reservations.cart_id: the cart across partitions a reservation is a part of

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 08:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("reservations", sa.Column("cart_id", sa.String(length=32), nullable=True))
    op.create_index(op.f("ix_reservations_cart_id"), "reservations", ["cart_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_reservations_cart_id"), table_name="reservations")
    with op.batch_alter_table("reservations") as batch:
        batch.drop_column("cart_id")
