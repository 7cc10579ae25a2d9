"""Initial schema: channels and messages.

Revision ID: 0001
Revises:
Create Date: 2025-11-22

Written by hand to match storage/models.py (tests/storage checks that autogenerate finds no
difference on SQLite and PostgreSQL). Names are wrapped in op.f() because Alembic applies the
models' naming convention to op.create_table; op.f() marks them as final.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint("platform", "external_id", name=op.f("uq_channels_platform_external_id")),
    )
    op.create_table(
        "messages",
        # BIGSERIAL on PostgreSQL; INTEGER PRIMARY KEY AUTOINCREMENT (the rowid) on SQLite.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("author_id", sa.String(), nullable=True),
        sa.Column("author_name", sa.String(), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("platform_message_id", sa.String(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["channels.id"],
            name=op.f("fk_messages_channel_id_channels"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "channel_id", "platform_message_id", name=op.f("uq_messages_channel_id_platform_message_id")
        ),
        sa.CheckConstraint("role IN ('user', 'assistant')", name=op.f("ck_messages_role")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_messages_channel_id_id"), "messages", ["channel_id", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_messages_channel_id_id"), table_name="messages")
    op.drop_table("messages")
    op.drop_table("channels")
