"""Member conversations, channel persona/context/listen, token usage, retention.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08

Matches `storage/models.py` (`Message.member_id` and its indexes, `Message.created_at`'s index,
`Channel.persona`/`context`/`listen`) and `storage/usage.py` (`Usage`). Names wrapped in op.f()
as in 0001.

No batch mode (it would copy `messages` without its AUTOINCREMENT, see 0003): every change is a
plain ADD COLUMN, CREATE INDEX or CREATE TABLE. The CHECKs of `context` and `listen` are column
constraints of their ADD COLUMN, which SQLite accepts (a table constraint would need the table
copy; `channels` has no AUTOINCREMENT, but the copy is avoided all the same). The new columns are
NULL in existing rows, which every CHECK admits.

`member_id` is filled in for the existing history: a user message's is its author; an assistant
message's is the author of the channel's nearest earlier user message, the asker it answered (a
correlated subquery, one step back in the (channel_id, id) index per assistant message). The
indexes are built after the fill, so it does not update them row by row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("member_id", sa.String(), nullable=True))
    op.add_column("channels", sa.Column("persona", sa.String(), nullable=True))
    op.add_column(
        "channels",
        sa.Column(
            "context",
            sa.String(),
            sa.CheckConstraint("context IN ('shared', 'member')", name=op.f("ck_channels_context")),
            nullable=True,
        ),
    )
    op.add_column(
        "channels",
        sa.Column(
            "listen",
            sa.String(),
            sa.CheckConstraint("listen IN ('all', 'mention')", name=op.f("ck_channels_listen")),
            nullable=True,
        ),
    )

    op.execute("UPDATE messages SET member_id = author_id WHERE role = 'user'")
    op.execute(
        "UPDATE messages SET member_id = ("
        " SELECT asked.author_id FROM messages AS asked"
        " WHERE asked.channel_id = messages.channel_id AND asked.id < messages.id"
        " AND asked.role = 'user'"
        " ORDER BY asked.id DESC LIMIT 1"
        ") WHERE role = 'assistant'"
    )

    op.create_index(
        op.f("ix_messages_channel_id_member_id_id"), "messages", ["channel_id", "member_id", "id"]
    )
    op.create_index(op.f("ix_messages_member_id"), "messages", ["member_id"])
    op.create_index(op.f("ix_messages_created_at"), "messages", ["created_at"])

    op.create_table(
        "usage",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_key", sa.String(), nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("user_name", sa.String(), nullable=True),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "user_key", "channel_id", name=op.f("pk_usage")),
        sa.ForeignKeyConstraint(
            ["channel_id"], ["channels.id"], name=op.f("fk_usage_channel_id_channels"), ondelete="CASCADE"
        ),
    )
    op.create_index(op.f("ix_usage_channel_id_day"), "usage", ["channel_id", "day"])


def downgrade() -> None:
    # Plain DROP COLUMN, as in 0003. SQLite drops a column whose own CHECK names only itself.
    op.drop_index(op.f("ix_usage_channel_id_day"), table_name="usage")
    op.drop_table("usage")
    op.drop_index(op.f("ix_messages_created_at"), table_name="messages")
    op.drop_index(op.f("ix_messages_member_id"), table_name="messages")
    op.drop_index(op.f("ix_messages_channel_id_member_id_id"), table_name="messages")
    op.drop_column("channels", "listen")
    op.drop_column("channels", "context")
    op.drop_column("channels", "persona")
    op.drop_column("messages", "member_id")
