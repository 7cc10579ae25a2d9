"""Durable inbox of platform updates (the Telegram adapter commits updates here before confirming).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Matches `storage/inbox.py` (`InboundUpdate`). Names wrapped in op.f() as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbound_updates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("update_id", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_updates")),
        sa.UniqueConstraint("platform", "update_id", name=op.f("uq_inbound_updates_platform_update_id")),
    )
    op.create_index(
        op.f("ix_inbound_updates_platform_state_update_id"),
        "inbound_updates",
        ["platform", "state", "update_id"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_inbound_updates_platform_state_update_id"), table_name="inbound_updates")
    op.drop_table("inbound_updates")
